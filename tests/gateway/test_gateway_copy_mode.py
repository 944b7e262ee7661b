"""Copy mode: a long n-gram match drafts ``copy_start_tokens`` at once instead of ramping up.

Driven over the real gRPC session stream against the deterministic fake engine of the
benchmarks (it continues any sequence with t -> t % 255 + 1 and accepts drafts that agree),
so the test sees exactly which drafts the loop sent.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from benchmarks.fake_engine import registration
from tightwad.gateway.engine_client import EngineClient
from tightwad.gateway.loop import RouteSpec, SpecBackend
from tightwad.gateway.types import Finished, GenerationRequest, GenerationStats, TextDelta
from tightwad.rpc import GrpcServer


@pytest.fixture
async def fake_address() -> AsyncIterator[str]:
    server = GrpcServer([registration()], address="127.0.0.1:0")
    await server.start()
    yield server.bound_address
    await server.stop(0)


async def _run(address: str, prompt: list[int], n: int, **spec: object) -> GenerationStats:
    backend = SpecBackend(
        RouteSpec(name="r", target=EngineClient(address, "fake"), **spec)  # type: ignore[arg-type]
    )
    await backend.start()
    req = GenerationRequest(model="r", prompt_tokens=tuple(prompt), max_tokens=n)
    stats = None
    async for ev in backend.generate(req):
        if isinstance(ev, Finished):
            stats = ev.stats
    await backend.spec.target.close()
    assert stats is not None
    return stats


async def test_a_long_match_drafts_a_copy_at_once(fake_address: str) -> None:
    # The prompt already holds 1..60; it ends with 1..12, so the output continues 13, 14, ...
    # and its last 12 tokens match 12 tokens of the prompt: a copy. The first round drafts
    # copy_start_tokens (16 here); the second only what the budget of 25 can still use (7).
    prompt = [*range(1, 61), *range(1, 13)]
    stats = await _run(
        fake_address, prompt, 25, draft_mode="ngram", max_draft_tokens=24, copy_start_tokens=16
    )
    assert (stats.rounds, stats.drafted, stats.accepted, stats.plain_steps) == (2, 23, 23, 0)
    assert stats.accepted_by_position == (2,) * 7 + (1,) * 9
    # By default a copy starts as wide as max_draft_tokens allows: one round does it all.
    stats = await _run(fake_address, prompt, 25, draft_mode="ngram", max_draft_tokens=24)
    assert (stats.rounds, stats.drafted, stats.accepted, stats.plain_steps) == (1, 24, 24, 0)


async def test_short_matches_still_ramp_up(fake_address: str) -> None:
    # Only a 3-token suffix recurs: no copy, the first step is plain (measuring t_plain).
    prompt = [*range(1, 61), 200, 8, 9, 10]
    stats = await _run(fake_address, prompt, 25, draft_mode="ngram", max_draft_tokens=24)
    assert stats.plain_steps >= 1
    assert stats.drafted < 24 * stats.rounds


async def test_copy_mode_can_be_turned_off(fake_address: str) -> None:
    prompt = [*range(1, 61), *range(1, 13)]
    stats = await _run(
        fake_address, prompt, 25, draft_mode="ngram", max_draft_tokens=24, copy_min_match=64
    )
    assert stats.plain_steps >= 1 and stats.rounds != 1


def _tiled_ms(width: int) -> float:
    """A CPU-like curve: full tiles of 16 cost 8 ms a token, anything else 12 ms a token."""
    return 8.0 * width if width % 16 == 0 else 12.0 * width


async def test_copies_are_cut_to_the_cheapest_measured_width() -> None:
    server = GrpcServer([registration(verify_ms=_tiled_ms)], address="127.0.0.1:0")
    await server.start()
    try:
        prompt = [*range(1, 201), *range(1, 13)]
        backend = SpecBackend(
            RouteSpec(
                name="r",
                target=EngineClient(server.bound_address, "fake"),
                draft_mode="ngram",
                max_draft_tokens=60,
            )
        )
        await backend.start()
        # Calibration measured every width up to max_draft + 1, and the status page says so ...
        assert backend.costs.widths == (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48)
        details = backend.info().details
        assert details["verify_ms_by_width"]["48"] == 384.0
        assert details["copy_drafts"] == 47
        req = GenerationRequest(model="r", prompt_tokens=tuple(prompt), max_tokens=101)
        stats = None
        async for ev in backend.generate(req):
            if isinstance(ev, Finished):
                stats = ev.stats
        await backend.spec.target.close()
    finally:
        await server.stop(0)
    assert stats is not None
    # ... so a 60-token copy sends 47 drafts (48 wide, the cheapest tile per token); the next
    # copy is limited by the budget (53 tokens left) and goes whole: no split into measured
    # widths is cheaper (48 + 5 plain steps), and it saves round trips.
    assert (stats.rounds, stats.drafted, stats.accepted, stats.plain_steps) == (2, 99, 99, 0)
    assert stats.accepted_by_position == (2,) * 47 + (1,) * 5


async def test_plain_tokens_that_cannot_start_a_copy_stream_as_generate(tmp_path: Path) -> None:
    record = tmp_path / "verifies.jsonl"
    server = GrpcServer([registration(record=record)], address="127.0.0.1:0")
    await server.start()
    try:
        # No suffix of the output recurs for a while (the fake continues t -> t + 1 from 201;
        # the prompt holds 1..30 only), so the n-gram route has nothing to draft: it decodes
        # in Generate chunks, each as long as a draft needs to become possible at all.
        prompt = [*list(range(1, 31)), 200]
        outputs = {}
        for plain_chunks in (True, False):
            backend = SpecBackend(
                RouteSpec(
                    name="r",
                    target=EngineClient(server.bound_address, "fake"),
                    draft_mode="ngram",
                    plain_chunks=plain_chunks,
                )
            )
            await backend.start()
            req = GenerationRequest(model="r", prompt_tokens=tuple(prompt), max_tokens=40)
            tokens: list[int] = []
            stats = None
            async for ev in backend.generate(req):
                if isinstance(ev, TextDelta):
                    tokens.extend(ev.token_ids)
                elif isinstance(ev, Finished):
                    stats = ev.stats
            await backend.spec.target.close()
            assert stats is not None and stats.plain_steps == 40 and stats.rounds == 0
            outputs[plain_chunks] = tokens
    finally:
        await server.stop(0)
    assert outputs[True] == outputs[False] == [*range(201, 241)]
    sessions = [json.loads(line) for line in record.read_text().splitlines()]
    # Each backend's calibration session comes first, then its request's session: stepwise,
    # every token is a Verify; chunked, only the first plain step (it measures t_plain) and the
    # step queued behind it.
    assert len(sessions) == 4
    chunked, stepwise = len(sessions[1]), len(sessions[3])
    assert stepwise == 40 and chunked == 2
