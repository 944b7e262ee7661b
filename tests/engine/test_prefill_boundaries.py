"""Prefill boundaries: the first chunk splits at ``LEAD_CHUNK`` positions, so prompts that share
only a chat template's preamble reuse it from the prefix cache (as llama-server reuses a
slot's common prefix), and a prompt reusing just that preamble copies it into a free slot,
leaving the longer cached prompt whole for the request that repeats or continues it. Greedy
output from the reused preamble equals a fresh prefill's or departs at a near-tie."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support import assert_equal_or_near_tie

from tightwad.engine.contract import Message
from tightwad.engine.engine_config import EngineConfig
from tightwad.engine.llama_engine import Engine
from tightwad.engine.session import Session
from tightwad.engine.session_rules import LEAD_CHUNK, chunk_end, chunk_floor
from tightwad.spec.sampling import SamplingConfig

N = 10


@pytest.mark.parametrize(
    ("n", "chunk", "floor"),
    [
        (0, 64, 0),
        (15, 64, 0),
        (16, 64, 16),  # the lead boundary: a 16-token preamble is reusable
        (63, 64, 16),
        (64, 64, 64),
        (130, 64, 128),
        (20, 32, 16),
        (40, 32, 32),
        (70, 32, 64),
        (15, 16, 0),  # a chunk of 16 or less has no lead boundary of its own
        (40, 16, 32),
        (40, 24, 24),  # nor one that 16 does not divide
        (10, 8, 8),
    ],
)
def test_chunk_floor_is_the_last_boundary(n: int, chunk: int, floor: int) -> None:
    assert chunk_floor(n, chunk) == floor


@pytest.mark.parametrize(
    ("pos", "chunk", "end"),
    [
        (0, 64, 16),
        (15, 64, 16),
        (16, 64, 64),  # then the chunk's own multiples
        (64, 64, 128),
        (0, 16, 16),
        (0, 24, 24),
        (30, 8, 32),
    ],
)
def test_chunk_end_is_the_next_boundary(pos: int, chunk: int, end: int) -> None:
    assert chunk_end(pos, chunk) == end


def test_boundaries_agree() -> None:
    # Every chunk a prefill decodes ends on a boundary that chunk_floor gives back.
    for chunk in (8, 16, 24, 32, 64, 128):
        pos = 0
        while pos < 300:
            end = chunk_end(pos, chunk)
            assert end > pos and chunk_floor(end, chunk) == end
            assert chunk_floor(end - 1, chunk) == chunk_floor(pos, chunk)
            pos = end


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


@pytest.mark.engine
@pytest.mark.parametrize("batch", [True, False])
async def test_prompts_sharing_a_preamble_reuse_it_and_keep_the_longer_prefix(
    smollm_path: Path, batch: bool
) -> None:
    cfg = EngineConfig("m", smollm_path, ctx_size=512, max_sessions=2, gpu_layers=0)
    assert cfg.prefill_chunk == 64
    engine = await Engine.load(cfg, batch_steps=batch)
    fresh = await Engine.load(cfg, batch_steps=batch)
    try:
        _t, first = await engine.render_chat(
            [Message("user", "Name three rivers of Europe, briefly.")], add_generation_prompt=True
        )
        _t, other = await engine.render_chat(
            [Message("user", "What is the capital of Peru?")], add_generation_prompt=True
        )
        common = next(i for i, (a, b) in enumerate(zip(first, other, strict=False)) if a != b)
        assert LEAD_CHUNK <= common < cfg.prefill_chunk, common  # a preamble, then they differ
        a, cached_a, _ms = await engine.open_session(first, SamplingConfig(), top_logprobs=2)
        assert cached_a == 0
        await _greedy(a)
        b, cached_b, _ms = await engine.open_session(other, SamplingConfig(), top_logprobs=2)
        assert cached_b == LEAD_CHUNK  # the preamble, from the first prompt's cache
        got_b, _ = await _greedy(b)
        ref, ref_gaps = await _greedy(
            (await fresh.open_session(other, SamplingConfig(), top_logprobs=2))[0]
        )
        assert_equal_or_near_tie(ref, got_b, ref_gaps, what="reused preamble")
        # The first prompt's whole prefill is still cached: the preamble went to a free slot.
        again, cached_again, _ms = await engine.open_session(first, SamplingConfig())
        again.release()
        await asyncio.sleep(0.05)  # the release runs on the compute thread
        assert cached_again == len(first) - 1
        for seq_id, recorded, in_cache in await engine.kv_report():
            assert recorded == in_cache, f"sequence {seq_id}"
    finally:
        await fresh.close()
        await engine.close()
