"""Helpers of the hardening tier: a live gateway on loopback, RSS, free ports."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from tightwad.gateway.api import GatewaySettings, create_app
from tightwad.gateway.types import Backend


@dataclass
class LiveGateway:
    url: str
    port: int
    runner: web.AppRunner
    session: aiohttp.ClientSession

    async def close(self) -> None:
        await self.session.close()
        await self.runner.cleanup()


async def start_gateway(
    routes: Mapping[str, Backend], settings: GatewaySettings, **runner_kwargs: object
) -> LiveGateway:
    """The gateway app served as production serves it (handler cancellation on)."""
    app = create_app(routes, settings)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, **runner_kwargs)  # type: ignore[arg-type]
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
    return LiveGateway(f"http://127.0.0.1:{port}", port, runner, session)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of a process (this one by default), from /proc."""
    status = Path(f"/proc/{pid or 'self'}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc status")


@dataclass
class UpProcess:
    """``tightwad up`` (agent + gateway on SmolLM2, n-gram drafting) in its own process."""

    proc: asyncio.subprocess.Process
    url: str
    port: int
    model: str
    output: list[str] = field(default_factory=list)
    drain: asyncio.Task[None] | None = None

    async def stop(self) -> str:
        """SIGTERM, wait for the exit; everything the process printed."""
        if self.proc.returncode is None:
            self.proc.terminate()
        await asyncio.wait_for(self.proc.wait(), 60)
        if self.drain is not None:
            await asyncio.wait_for(self.drain, 10)
        return "".join(self.output)


async def start_up(
    tmp: Path,
    *,
    api_key: str,
    ctx_size: int = 512,
    max_sessions: int = 8,
    max_concurrency: int = 8,
    queue_size: int = 32,
    threads: int = 2,
) -> UpProcess:
    """Start ``tightwad up`` with the key in the environment (never on the command line)."""
    port = free_port()
    config = tmp / "up.yaml"
    config.write_text(
        "gateway:\n"
        "  api_key: ${TIGHTWAD_API_KEY}\n"
        f"  max_concurrency: {max_concurrency}\n"
        f"  queue_size: {queue_size}\n"
        "  max_tokens_cap: 2048\n"
    )
    env = {**os.environ, "TIGHTWAD_API_KEY": api_key}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tightwad.cli.umbrella",
        "up",
        "-c",
        str(config),
        "--port",
        str(port),
        "--ctx-size",
        str(ctx_size),
        "--max-sessions",
        str(max_sessions),
        "--threads",
        str(threads),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    seen: list[str] = []
    async with asyncio.timeout(180):
        while True:
            line = (await proc.stdout.readline()).decode(errors="replace")
            if not line:
                raise RuntimeError("tightwad up exited:\n" + "".join(seen[-40:]))
            seen.append(line)
            if line.startswith("Tightwad is serving"):
                break
    up = UpProcess(proc, f"http://127.0.0.1:{port}", port, line.split("'")[1], seen)

    async def drain() -> None:  # keep reading, so a full pipe never blocks the server
        assert proc.stdout is not None
        async for chunk in proc.stdout:
            up.output.append(chunk.decode(errors="replace"))

    up.drain = asyncio.get_running_loop().create_task(drain())
    return up
