"""n sessions of one prompt share one prefill: the second copies the whole prompt's KV from
the first (all but the pending token, even the unaligned last chunk), so their first-token
logits come from identical cache contents; a prompt that only shares a prefix still reuses
whole aligned chunks only."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support import assert_equal_or_near_tie

from tightwad.engine.engine_config import EngineConfig
from tightwad.engine.llama_engine import Engine
from tightwad.engine.session import Session
from tightwad.spec.sampling import SamplingConfig

pytestmark = pytest.mark.engine

# Longer than one prefill chunk (64) and not a multiple of it.
TEXT = "A short history of lighthouses, told line by line for children. " * 8 + "\nStory:"
N = 12


async def _greedy(s: Session) -> tuple[list[int], list[float]]:
    out: list[int] = []
    gaps: list[float] = []
    try:
        async for tok, lp, _why in s.generate(N, ignore_eos=True):
            assert lp is not None
            out.append(tok)
            gaps.append(lp.top[0][1] - lp.top[1][1])
        return out, gaps
    finally:
        s.release()


@pytest.mark.parametrize("batch", [True, False])
async def test_choices_of_one_prompt_share_the_whole_prefill(
    smollm_path: Path, batch: bool
) -> None:
    cfg = EngineConfig("m", smollm_path, ctx_size=512, max_sessions=4, gpu_layers=0)
    engine = await Engine.load(cfg, batch_steps=batch)
    try:
        prompt = await engine.tokenize(TEXT, add_special=True, parse_special=False)
        limit = len(prompt) - 1
        assert limit % cfg.prefill_chunk and limit > cfg.prefill_chunk

        async def open_() -> tuple[Session, int]:
            s, cached, _ms = await engine.open_session(prompt, SamplingConfig(), top_logprobs=2)
            return s, cached

        (a, ca), (b, cb) = await asyncio.gather(open_(), open_())
        # One prefilled the prompt, the other took all of it (not only the aligned chunks).
        assert sorted([ca, cb]) == [0, limit]
        assert a.n_kv == b.n_kv == limit
        (ra, ga), (rb, _gb) = await asyncio.gather(_greedy(a), _greedy(b))
        assert_equal_or_near_tie(ra, rb, ga, what="second choice")
        await asyncio.sleep(0.05)
        # The finished prompt is a cached prefix: the same prompt again reuses all of it...
        c, cc = await open_()
        assert cc == limit
        rc, _ = await _greedy(c)
        assert_equal_or_near_tie(ra, rc, ga, what="cached prompt")
        # ...a longer prompt sharing it only as a prefix reuses whole aligned chunks only.
        longer = [*prompt, *prompt[1:9]]
        d, cd, _ = await engine.open_session(longer, SamplingConfig())
        d.release()
        assert cd == limit // cfg.prefill_chunk * cfg.prefill_chunk
        await asyncio.sleep(0.05)
        assert engine.live_sessions == 0
        for seq_id, recorded, in_cache in await engine.kv_report():
            assert recorded == in_cache, f"sequence {seq_id}"
    finally:
        await engine.close()
