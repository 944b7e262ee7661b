"""``run_until_signal``: the first SIGTERM drains (``stop()`` runs to its end), a second one
while it drains stops at once."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from tightwad.cli._foreground import run_until_signal


async def _signal_soon(*delays: float) -> None:
    for delay in delays:
        await asyncio.sleep(delay)
        os.kill(os.getpid(), signal.SIGTERM)


async def test_first_signal_drains(capsys: pytest.CaptureFixture[str]) -> None:
    drained = asyncio.Event()

    async def stop() -> None:
        await asyncio.sleep(0.2)
        drained.set()

    sender = asyncio.create_task(_signal_soon(0.05))
    assert await asyncio.wait_for(run_until_signal(stop, "svc"), 10) == 0
    await sender
    assert drained.is_set()
    assert "svc: stopping" in capsys.readouterr().out


async def test_second_signal_stops_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    async def stop() -> None:
        await asyncio.sleep(3600)  # a drain that would never end

    sender = asyncio.create_task(_signal_soon(0.05, 0.2))
    assert await asyncio.wait_for(run_until_signal(stop, "svc"), 10) == 0
    await sender
    assert "svc: stopped without draining" in capsys.readouterr().out
