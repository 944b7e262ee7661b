"""Running a service in the foreground until Ctrl-C (SIGINT) or SIGTERM.

The first signal starts a graceful stop (``stop()``: in-flight requests drain up to their
deadline); a second one while it drains stops at once (the drain is cancelled).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

__all__ = ["run_until_signal"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def run_until_signal(stop: Callable[[], Awaitable[None]], name: str) -> int:
    """Wait for SIGINT or SIGTERM, then run ``stop()``; returns exit status 0."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in _SIGNALS:
        loop.add_signal_handler(sig, event.set)
    try:
        await event.wait()
    finally:
        print(f"{name}: stopping (in-flight requests drain; signal again to stop now)", flush=True)
        stopping = asyncio.ensure_future(stop())
        for sig in _SIGNALS:
            loop.add_signal_handler(sig, stopping.cancel)
        try:
            await stopping
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not stopping.cancelled() or (task is not None and task.cancelling()):
                raise  # our own cancellation, not the second signal's
            print(f"{name}: stopped without draining", flush=True)
        finally:
            for sig in _SIGNALS:
                loop.remove_signal_handler(sig)
    return 0
