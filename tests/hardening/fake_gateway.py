"""A live gateway over the fake Backend, in its own process (``python fake_gateway.py``).

Prints ``PORT <n>`` once it serves, then runs until SIGTERM. Used by the fuzzers so that the
server's RSS can be measured alone, and a crash shows as a dead process.
Routes: ``fake`` (a short scripted answer) and ``slow`` (the same, with a small delay).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for gateway.fakes

from gateway.fakes import FakeBackend, script

from tightwad.gateway.api import GatewaySettings, create_app

API_KEY = "sk-fuzz"


async def main() -> None:
    routes = {
        "fake": FakeBackend(events=script(["Hel", "lo", " wor", "ld"])),
        "slow": FakeBackend(delay=0.001),
    }
    settings = GatewaySettings(
        api_key=API_KEY, max_body_bytes=2 * 1024 * 1024, max_concurrency=16, max_queue=64
    )
    runner = web.AppRunner(create_app(routes, settings), handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print(f"PORT {runner.addresses[0][1]}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
