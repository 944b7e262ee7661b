"""Continuous batching of everything: prefill chunks, plain steps, verifies, constrained steps,
draft steps and cancellations of many sessions share forward passes and keep each output."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support import assert_equal_or_near_tie

from tightwad.engine.contract import DraftStep
from tightwad.engine.engine_config import EngineConfig
from tightwad.engine.grammar import json_schema_spec
from tightwad.engine.llama_engine import Engine
from tightwad.spec.sampling import SamplingConfig

pytestmark = pytest.mark.engine

N = 20
TOPICS = ["fibonacci", "France", "fruits", "a village", "rivers", "the moon", "bread", "chess"]
STORY = json_schema_spec(
    {
        "type": "object",
        "properties": {"story": {"type": "string", "minLength": 60}},
        "required": ["story"],
    }
)
# A prompt of many prefill chunks (64 positions each).
LONG = "Notes on the history of computing, one line each. " * 40 + "\nSummary:"
KINDS = ["plain", "verify", "grammar", "draft", "plain", "verify", "grammar", "draft"]


def _text(i: int) -> str:
    return f"Write a short paragraph about {TOPICS[i % len(TOPICS)]} ({i}):\n"


async def _gaps_of(engine: Engine, text: str, n: int = N) -> tuple[list[int], list[float]]:
    """The session's greedy tokens alone and the top-2 logprob gap at each."""
    return await _run(engine, text, "plain", n=n)


async def _run(
    engine: Engine, text: str, kind: str, *, n: int = N, grammar: bool = False
) -> tuple[list[int], list[float]]:
    prompt = await engine.tokenize(text, add_special=True, parse_special=False)
    s, _, _ = await engine.open_session(
        prompt,
        SamplingConfig(),
        top_logprobs=2,
        grammar=STORY if kind == "grammar" else None,
    )
    out: list[int] = []
    gaps: list[float] = []
    try:
        if kind in ("plain", "grammar"):
            async for tok, lp, _why in s.generate(n, ignore_eos=True):
                assert lp is not None
                out.append(tok)
                gaps.append(lp.top[0][1] - lp.top[1][1])
        elif kind == "verify":
            while len(out) < n:
                # A draft of the session's own last tokens: mostly rejected, sometimes taken.
                res = await s.verify(out[-3:])
                out += [*out[-3:][: res.accepted], res.next_token]
                gaps += [lp.top[0][1] - lp.top[1][1] for lp in res.logprobs]
        else:  # a drafter: greedy drafts of 5 are the greedy continuation
            while len(out) < n:
                async for step in s.draft(5, keep=len(s.tokens), append=[]):
                    if isinstance(step, DraftStep):
                        out.append(step.token_id)
        return out[:n], gaps[:n]
    finally:
        s.release()


async def test_sixteen_sessions_of_every_kind_decode_as_alone(smollm_path: Path) -> None:
    cfg = EngineConfig(
        "m", smollm_path, ctx_size=1024, max_sessions=20, gpu_layers=0, batch_steps=True
    )
    # 16 sessions of every kind, one cancelled mid-stream, one cancelled mid-prefill, then a
    # long prompt arriving mid-stream.
    texts = [_text(i) for i in range(16)]
    kinds = [KINDS[i % len(KINDS)] for i in range(16)]
    alone = await Engine.load(cfg, batch_steps=False)
    try:
        # References: drafts and verifies follow the plain greedy run (their gaps too).
        refs = [
            await _run(alone, t, "grammar" if k == "grammar" else "plain")
            for t, k in zip(texts, kinds, strict=True)
        ]
        long_ref = await _gaps_of(alone, LONG, 8)
        n_long = len(await alone.tokenize(LONG, add_special=True, parse_special=False))
        chunks = -(-(n_long - 1) // cfg.prefill_chunk)
    finally:
        await alone.close()

    engine = await Engine.load(cfg, batch_steps=True)
    try:
        tasks = [
            asyncio.ensure_future(_run(engine, t, k)) for t, k in zip(texts, kinds, strict=True)
        ]
        doomed = asyncio.ensure_future(_run(engine, _text(99), "plain", n=10_000))
        cancelled_open = asyncio.ensure_future(_run(engine, "(b) " + LONG, "plain"))
        await asyncio.sleep(0.2)
        cancelled_open.cancel()  # mid-prefill, most likely
        before = engine.batch_stats
        assert before is not None
        long_out = await _gaps_of(engine, LONG, 8)
        after = engine.batch_stats
        doomed.cancel()
        results = await asyncio.gather(*tasks)
        for d in (doomed, cancelled_open):
            with pytest.raises(asyncio.CancelledError):
                await d
        stats = engine.batch_stats
        await asyncio.sleep(0.1)
        assert engine.live_sessions == 0
        # No KV leak: every sequence holds exactly the cached prefix its slot records.
        for seq_id, recorded, in_cache in await engine.kv_report():
            assert recorded == in_cache, f"sequence {seq_id}"
    finally:
        await engine.close()

    for i, ((ref, gaps), (got, _)) in enumerate(zip(refs, results, strict=True)):
        assert len(got) == N
        assert_equal_or_near_tie(ref, got, gaps, what=f"session {i} ({kinds[i]})")
    assert_equal_or_near_tie(long_ref[0], long_out[0], long_ref[1], what="long prompt")
    assert stats is not None and after is not None
    # Work really shared forward passes, under the capacity.
    assert stats.decodes < stats.steps * 0.5
    assert stats.max_tokens <= cfg.batch_size
    assert stats.max_jobs >= 8
    # The long prompt went in one chunk per decode (at least as many decodes as chunks).
    assert after.prefill_tokens - before.prefill_tokens >= (chunks - 1) * cfg.prefill_chunk
    assert after.decodes - before.decodes >= chunks


async def test_a_long_prompt_does_not_stall_running_streams(smollm_path: Path) -> None:
    """A stream running while a long prompt is prefilled keeps getting a token per decode:
    it advances about one token per prefill chunk (counted in steps, not time)."""
    cfg = EngineConfig(
        "m", smollm_path, ctx_size=2048, max_sessions=4, gpu_layers=0, batch_steps=True
    )
    engine = await Engine.load(cfg, batch_steps=True)
    try:
        prompt = await engine.tokenize(_text(1), add_special=True, parse_special=False)
        long = await engine.tokenize(LONG * 2, add_special=True, parse_special=False)
        chunks = -(-(len(long) - 1) // cfg.prefill_chunk)
        s, _, _ = await engine.open_session(prompt, SamplingConfig())
        got = 0
        opened = asyncio.Event()
        marks: list[int] = []

        async def open_long() -> None:
            marks.append(got)
            t, _, _ = await engine.open_session(long, SamplingConfig())
            marks.append(got)
            opened.set()
            t.release()

        opener: asyncio.Future[None] | None = None
        try:
            async for _tok, _lp, _why in s.generate(4 * chunks, ignore_eos=True):
                got += 1
                if got == 4:
                    opener = asyncio.ensure_future(open_long())
                if opened.is_set():
                    break
        finally:
            s.release()
        assert opener is not None
        await opener
    finally:
        await engine.close()
    start, end = marks
    # One step per decode alongside each chunk (the stream runs ahead by one queued step).
    assert end - start >= chunks - 2, (start, end, chunks)
