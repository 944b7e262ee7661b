"""The loop's controllers and counters, and what a route's calibration seeds: pure, no engine."""

from __future__ import annotations

import pytest

from tightwad.gateway.loop.calibration import Calibration, seed_model_control
from tightwad.gateway.loop.control import Counters, FixedK, RequestControl, request_control
from tightwad.spec.draft_control import DraftControlConfig, DraftLengthController
from tightwad.spec.verify_cost import VerifyCosts


def test_counters_count_rounds_plain_steps_and_forced_tokens() -> None:
    c = Counters()
    c.record_round(0, 0)  # a plain step
    c.record_round(4, 2)  # a drafted round
    c.record_round(3, 3, forced=2)  # two forced tokens lead a 3-token draft
    c.record_round(2, 1, forced=2)  # the second forced token was not reached
    assert (c.plain_steps, c.rounds, c.drafted, c.accepted) == (1, 3, 9, 6)
    assert c.by_position == [3, 2, 1, 0]
    assert (c.forced_drafted, c.forced_accepted) == (4, 3)
    assert c.round_no == 4


def _shared(rounds: int) -> DraftLengthController:
    ctl = DraftLengthController(DraftControlConfig())
    ctl.seed(0.05, 0.002)
    for _ in range(rounds):
        ctl.record(4, 4, 0, 0.06, 0.004)  # nothing accepted
    return ctl


@pytest.mark.parametrize(
    ("proposer", "rounds", "carries"),
    [
        ("model", 6, True),  # a draft model's acceptance is the route's
        ("hybrid", 6, True),
        ("model", 0, False),  # nothing learned yet: the prior
        ("ngram", 6, False),  # n-gram matches are the request's own
        ("prediction", 6, False),
    ],
)
def test_request_control_carries_acceptance_only_for_draft_models(
    proposer: str, rounds: int, carries: bool
) -> None:
    shared = _shared(rounds)
    ctl = request_control(
        DraftControlConfig(), proposer=proposer, shared=shared, costs=VerifyCosts()
    )
    own = ctl.own
    assert isinstance(own, DraftLengthController)
    assert own.plain_step_seconds == shared.plain_step_seconds  # costs always carry
    fresh = DraftLengthController(DraftControlConfig()).acceptance
    assert (own.acceptance < fresh) is carries


def test_request_control_teaches_the_route() -> None:
    shared = _shared(0)
    ctl = request_control(
        DraftControlConfig(), proposer="ngram", shared=shared, costs=VerifyCosts()
    )
    ctl.record(4, 4, 4, 0.06, 0.0)
    ctl.record_plain(0.04)
    assert shared.rounds_seen == 1
    assert shared.plain_step_seconds is not None and shared.plain_step_seconds < 0.05


def test_fixed_k_always_drafts_the_route_maximum() -> None:
    ctl = RequestControl(FixedK(24), None)
    ctl.record(24, 24, 0, 1.0, 0.5)
    ctl.record_plain(1.0)
    assert (ctl.next_k(), ctl.plain_step_seconds(), ctl.plain_steps_ahead()) == (24, None, 0)


def _costs(per_extra_token_ms: float) -> VerifyCosts:
    return VerifyCosts({w: (20.0 + per_extra_token_ms * (w - 1)) / 1000.0 for w in (1, 9)})


def test_seed_model_control_turns_drafting_off_where_it_cannot_pay() -> None:
    # A wide verify costing nearly a plain step per token: even perfect drafts lose.
    cpu = DraftLengthController(DraftControlConfig())
    seeded = seed_model_control(
        cpu,
        Calibration(_costs(18.0), 0.020, 0.010),
        max_draft_tokens=64,
        k_max=16,
        pipeline=False,
    )
    assert seeded is not None
    assert seeded.verify_extra_s_per_token == pytest.approx(0.018)
    assert cpu.hopeless() and cpu.next_k() == 0
    # A nearly flat curve and a fast drafter: drafting may pay.
    gpu = DraftLengthController(DraftControlConfig())
    seed_model_control(
        gpu, Calibration(_costs(0.2), 0.020, 0.001), max_draft_tokens=64, k_max=16, pipeline=True
    )
    assert not gpu.hopeless() and gpu.next_k() > 0


def test_seed_model_control_needs_a_measured_draft_step() -> None:
    ctl = DraftLengthController(DraftControlConfig())
    got = seed_model_control(
        ctl, Calibration(_costs(1.0), 0.02), max_draft_tokens=64, k_max=16, pipeline=False
    )
    assert got is None and ctl.plain_step_seconds is None
