"""Cached prefixes of idle sequences never crowd out live sessions: a decode that finds the
unified KV cache full drops the oldest cached prefix and goes on."""

from __future__ import annotations

from pathlib import Path

import pytest

from tightwad.engine.engine_config import EngineConfig
from tightwad.engine.llama_engine import Engine
from tightwad.spec.sampling import SamplingConfig

pytestmark = pytest.mark.engine

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
]


def _doc(i: int) -> str:
    # Distinct from the first word on (no shared prefix), about 170 tokens.
    return f"{WORDS[i]} " + " ".join(WORDS[(i + j) % len(WORDS)] for j in range(160))


@pytest.mark.parametrize("batch_steps", [True, False])
async def test_a_full_cache_drops_old_prefixes_instead_of_failing(
    smollm_path: Path, batch_steps: bool
) -> None:
    # 2 live sessions of 256 positions share 512 cells with up to 4 cached prefixes.
    cfg = EngineConfig("m", smollm_path, ctx_size=256, max_sessions=2, cache_slots=4, gpu_layers=0)
    engine = await Engine.load(cfg, batch_steps=batch_steps)
    try:
        for i in range(6):
            prompt = await engine.tokenize(_doc(i), add_special=True, parse_special=False)
            assert 150 < len(prompt) < 240
            s, _, _ = await engine.open_session(prompt, SamplingConfig())
            out = [t async for t, _lp, _why in s.generate(16, ignore_eos=True)]
            assert len(out) == 16
            s.release()
            await engine.run(lambda: None)  # the release is done
        for seq_id, recorded, in_cache in await engine.kv_report():
            assert recorded == in_cache, f"sequence {seq_id}"
        cached = sum(recorded > 0 for _s, recorded, _c in await engine.kv_report())
        assert 0 < cached < 6  # some prefixes went to make room, the newest stayed
        last = await engine.tokenize(_doc(5), add_special=True, parse_special=False)
        s, reused, _ = await engine.open_session(last, SamplingConfig())
        s.release()
        assert reused > 0
    finally:
        await engine.close()
