"""Running a service in the foreground until Ctrl-C (SIGINT) or SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

__all__ = ["run_until_signal"]


async def run_until_signal(stop: Callable[[], Awaitable[None]], name: str) -> int:
    """Wait for SIGINT or SIGTERM, then run ``stop()``; returns exit status 0."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, event.set)
    try:
        await event.wait()
    finally:
        print(f"{name}: stopping", flush=True)
        await stop()
    return 0
