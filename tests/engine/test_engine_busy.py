"""What a caller sees when every session of an engine is taken: its Open waits for one to free
(up to ``open_wait_s``), then gets a clear overloaded error (429 outward), never a hang."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tightwad.engine.engine_config import EngineConfig
from tightwad.engine.llama_engine import Engine
from tightwad.errors import OverloadedError, UnavailableError
from tightwad.spec.sampling import SamplingConfig

pytestmark = pytest.mark.engine


async def test_open_waits_for_a_session_then_is_refused_as_busy(smollm_path: Path) -> None:
    cfg = EngineConfig(
        "m", smollm_path, ctx_size=256, max_sessions=1, gpu_layers=0, open_wait_s=0.5
    )
    engine = await Engine.load(cfg)
    try:
        prompt = await engine.tokenize(
            "The capital of France is", add_special=True, parse_special=False
        )
        first, _, _ = await engine.open_session(prompt, SamplingConfig())
        # Waits while the only session is held, and opens once it is released.
        second = asyncio.ensure_future(engine.open_session(prompt, SamplingConfig()))
        await asyncio.sleep(0.2)
        assert not second.done()
        first.release()
        s2, _, _ = await asyncio.wait_for(second, 5)
        assert (await s2.verify([])).next_token >= 0
        # Held past open_wait_s: refused as busy, with the numbers.
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(OverloadedError, match=r"busy: 1 live sessions \(max 1\).*0\.5 s"):
            await engine.open_session(prompt, SamplingConfig())
        assert loop.time() - t0 >= 0.45
        assert OverloadedError.http_status == 429
        s2.release()
        # An engine closed while an Open waits answers unavailable, at once.
        held, _, _ = await engine.open_session(prompt, SamplingConfig())
        waiting = asyncio.ensure_future(engine.open_session(prompt, SamplingConfig()))
        await asyncio.sleep(0.05)
        await engine.close()
        with pytest.raises(UnavailableError):
            await asyncio.wait_for(waiting, 2)
        held.release()
    finally:
        await engine.close()
    assert engine.live_sessions == 0
