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
    engine: Engine, text: str, *, grammar: bool = False, verify_every: int = 0
) -> tuple[list[int], list[float]]:
    """Greedy tokens and the top-2 logprob gap at each (a near-tie shows as a small gap)."""
    prompt = await engine.tokenize(text, add_special=True, parse_special=False)
    s, _, _ = await engine.open_session(
        prompt, SamplingConfig(), top_logprobs=2, grammar=STORY if grammar else None
    )
    out: list[int] = []
    gaps: list[float] = []
    try:
        async for tok, lp, _why in s.generate(N, ignore_eos=True):
            out.append(tok)
            assert lp is not None and len(lp.top) == 2
            gaps.append(lp.top[0][1] - lp.top[1][1])
            if verify_every and len(out) % verify_every == 0:
                break
        while verify_every and len(out) < N:
            # Verify a draft of the model's own last tokens repeated (mostly rejected).
            res = await s.verify(out[-3:])
            out += [*out[-3:][: res.accepted], res.next_token]
            gaps += [lp.top[0][1] - lp.top[1][1] for lp in res.logprobs]
        return out[:N], gaps[:N]
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
