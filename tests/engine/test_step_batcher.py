"""Step batching: concurrent sessions' steps share one forward pass and keep their output."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support import assert_equal_or_near_tie

from tightwad.engine.engine_config import EngineConfig
from tightwad.engine.grammar import json_schema_spec
from tightwad.engine.llama_engine import Engine
from tightwad.spec.sampling import SamplingConfig

pytestmark = pytest.mark.engine

PROMPTS = [
    "def fibonacci(n):\n",
    "The capital of France is",
    "List three fruits and their colors:\n",
    "Once upon a time, in a small village,",
]
N = 24
STORY = json_schema_spec(
    {
        "type": "object",
        "properties": {"story": {"type": "string", "minLength": 60}},
        "required": ["story"],
    }
)


async def _run(
    engine: Engine, text: str, *, grammar: bool = False, verify_every: int = 0, n: int = N
) -> tuple[list[int], list[float]]:
    """Greedy tokens and the top-2 logprob gap at each (a near-tie shows as a small gap)."""
    prompt = await engine.tokenize(text, add_special=True, parse_special=False)
    s, _, _ = await engine.open_session(
        prompt, SamplingConfig(), top_logprobs=2, grammar=STORY if grammar else None
    )
    out: list[int] = []
    gaps: list[float] = []
    try:
        async for tok, lp, _why in s.generate(n, ignore_eos=True):
            out.append(tok)
            assert lp is not None and len(lp.top) == 2
            gaps.append(lp.top[0][1] - lp.top[1][1])
            if verify_every and len(out) % verify_every == 0:
                break
        while verify_every and len(out) < n:
            # Verify a draft of the model's own last tokens repeated (mostly rejected).
            res = await s.verify(out[-3:])
            out += [*out[-3:][: res.accepted], res.next_token]
            gaps += [lp.top[0][1] - lp.top[1][1] for lp in res.logprobs]
        return out[:n], gaps[:n]
    finally:
        s.release()


@pytest.mark.parametrize("mixed", [False, True])
async def test_four_concurrent_sessions_decode_as_each_alone(
    smollm_path: Path, mixed: bool
) -> None:
    cfg = EngineConfig("m", smollm_path, ctx_size=512, max_sessions=4, gpu_layers=0)
    # Mixed: session 1 is constrained (a JSON object), session 2 verifies drafts.
    kinds = [
        {"grammar": mixed and i == 1, "verify_every": 4 * (mixed and i == 2)} for i in range(4)
    ]
    solo_engine = await Engine.load(cfg, batch_steps=False)
    try:
        solo = [await _run(solo_engine, t, **k) for t, k in zip(PROMPTS, kinds, strict=True)]
    finally:
        await solo_engine.close()
    engine = await Engine.load(cfg, batch_steps=True)
    try:
        together = await asyncio.gather(
            *(_run(engine, t, **k) for t, k in zip(PROMPTS, kinds, strict=True))
        )
        stats = engine.batch_stats
    finally:
        await engine.close()
    for (ref, gaps), (got, _) in zip(solo, together, strict=True):
        assert len(got) == len(ref)
        assert_equal_or_near_tie(ref, got, gaps, what="batched session")
    # The steps really shared forward passes.
    assert stats is not None and stats.steps >= sum(len(r) for r, _ in solo) * 0.8
    assert stats.decodes < stats.steps * 0.6
    assert engine.live_sessions == 0


async def test_eight_concurrent_greedy_sessions_equal_solo_or_near_tie(
    qwen_draft_path: Path,
) -> None:
    """Eight sessions at once on Qwen2.5-Coder-0.5B (whose batched passes differ from one-token
    ones in the last bits from 4 rows on), two of them choices of one prompt: each greedy
    output equals its solo run or first departs from it at a near-tie; the batches were full."""
    cfg = EngineConfig("m", qwen_draft_path, ctx_size=256, max_sessions=8, gpu_layers=0)
    texts = [*PROMPTS, "import numpy as np\n", "SELECT name FROM", "# Sorting\n", PROMPTS[0]]
    solo_engine = await Engine.load(cfg, batch_steps=False)
    try:
        solo = [await _run(solo_engine, t, n=12) for t in texts[:-1]]
    finally:
        await solo_engine.close()
    engine = await Engine.load(cfg, batch_steps=True)
    try:
        together = await asyncio.gather(*(_run(engine, t, n=12) for t in texts))
        stats = engine.batch_stats
        await asyncio.sleep(0.1)
        assert engine.live_sessions == 0
        for seq_id, recorded, in_cache in await engine.kv_report():
            assert recorded == in_cache, f"sequence {seq_id}"
    finally:
        await engine.close()
    for i, (got, _) in enumerate(together):
        ref, gaps = solo[i % len(solo)]
        assert len(got) == len(ref)
        assert_equal_or_near_tie(ref, got, gaps, what=f"session {i} of 8")
    assert stats is not None and stats.max_jobs >= 6
    assert stats.decodes < stats.steps * 0.4


async def test_batching_on_and_a_failing_session_leaves_its_batch_mates(
    smollm_path: Path,
) -> None:
    """Mid-batch, one session's caller is cancelled and another is released while its step
    waits: the others still decode as alone, nothing leaks, and a session opened afterwards
    on the same engine decodes as alone too."""
    cfg = EngineConfig(
        "m", smollm_path, ctx_size=512, max_sessions=4, gpu_layers=0, batch_steps=True
    )
    solo_engine = await Engine.load(cfg, batch_steps=False)
    try:
        solo = [await _run(solo_engine, t) for t in PROMPTS[:2]]
        after_ref = await _run(solo_engine, PROMPTS[2])
    finally:
        await solo_engine.close()
    engine = await Engine.load(cfg, batch_steps=True)
    try:
        assert engine.batch_stats is not None
        running = asyncio.Event()

        async def doomed() -> None:
            steps = 0
            prompt = await engine.tokenize(PROMPTS[3], add_special=True, parse_special=False)
            s, _, _ = await engine.open_session(prompt, SamplingConfig())
            try:
                async for _tok in s.generate(10_000, ignore_eos=True):
                    steps += 1
                    if steps == 5:
                        running.set()
            finally:
                s.release()

        async def released() -> str:
            prompt = await engine.tokenize(PROMPTS[2], add_special=True, parse_special=False)
            s, _, _ = await engine.open_session(prompt, SamplingConfig())
            for _ in range(3):
                await s.verify([])
            pending = asyncio.ensure_future(s.verify([]))
            await asyncio.sleep(0)  # the step is queued in the batcher
            s.release()
            try:
                await pending
            except Exception as exc:  # refused: the session was closed
                return type(exc).__name__
            return "ran"

        victim = asyncio.ensure_future(doomed())
        together = asyncio.gather(*(_run(engine, t) for t in PROMPTS[:2]), released())
        await running.wait()
        victim.cancel()
        *outs, fate = await together
        with pytest.raises(asyncio.CancelledError):
            await victim
        assert fate in ("ran", "InvalidRequestError")
        for (ref, gaps), (got, _) in zip(solo, outs, strict=True):
            assert_equal_or_near_tie(ref, got, gaps, what="batch mate of a failed session")
        await asyncio.sleep(0.1)  # releases finish on the compute thread
        assert engine.live_sessions == 0
        after, _ = await _run(engine, PROMPTS[2])
        assert after == after_ref[0]
        assert engine.batch_stats.decodes < engine.batch_stats.steps
    finally:
        await engine.close()
