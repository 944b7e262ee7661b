"""Draft length control: grows when rounds pay, goes plain when they lose, probes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tightwad.spec.draft_control import (
    DraftControlConfig,
    DraftLengthController,
    expected_emitted,
)

T_PLAIN = 0.050


def run_round(ctl: DraftLengthController, acceptance: float, per_token: float) -> int:
    """One deterministic round: accept floor(acceptance * k) tokens."""
    k = ctl.next_k()
    if k == 0:
        ctl.record_plain(T_PLAIN)
        return 0
    accepted = int(acceptance * k)
    ctl.record(k, k, accepted, T_PLAIN + per_token * k)
    return k


def test_first_step_measures_plain_decoding_when_unknown() -> None:
    ctl = DraftLengthController(DraftControlConfig(start_k=5))
    assert ctl.next_k() == 0
    ctl.record_plain(T_PLAIN)
    assert ctl.plain_step_seconds == T_PLAIN
    assert ctl.next_k() == 5
    assert DraftLengthController(plain_step_seconds=T_PLAIN).next_k() == 4


def test_grows_to_k_max_while_rounds_pay() -> None:
    ctl = DraftLengthController(DraftControlConfig(start_k=2, k_max=12), plain_step_seconds=T_PLAIN)
    ks = [run_round(ctl, acceptance=1.0, per_token=0.002) for _ in range(12)]
    assert ks == sorted(ks)
    assert ks[-1] == 12 and ctl.next_k() == 12


def test_goes_plain_when_drafting_loses() -> None:
    ctl = DraftLengthController(DraftControlConfig(start_k=4), plain_step_seconds=T_PLAIN)
    ks = [run_round(ctl, acceptance=0.0, per_token=0.010) for _ in range(5)]
    assert ks[0] == 4 and ks[-1] == 0
    spec, plain = ctl.predicted_goodput(1), ctl.predicted_goodput(0)
    assert spec is not None and plain is not None
    assert spec < plain * (1 + ctl.config.min_gain)


def simulate(
    ctl: DraftLengthController, acceptance: float, per_token: float, rounds: int
) -> list[int]:
    """Rounds where each drafted token is accepted with prob ``acceptance`` (seeded)."""
    rng = np.random.default_rng(0)
    ks = []
    for _ in range(rounds):
        k = ctl.next_k()
        ks.append(k)
        if k == 0:
            ctl.record_plain(T_PLAIN)
            continue
        accepted = 0
        while accepted < k and rng.random() < acceptance:
            accepted += 1
        ctl.record(k, k, accepted, T_PLAIN + per_token * k)
    return ks


def test_settles_on_a_small_k_when_drafting_is_costly() -> None:
    # a = 0.6, c = 0.3 * t_plain: goodput peaks at k = 1..2 (24.6 tok/s vs 20 plain)
    ctl = DraftLengthController(DraftControlConfig(start_k=8, k_max=16), plain_step_seconds=T_PLAIN)
    ks = simulate(ctl, acceptance=0.6, per_token=0.015, rounds=200)
    tail = ks[50:]
    assert sum(1 for k in tail if k > 0) > 0.8 * len(tail)
    assert 1 <= float(np.mean([k for k in tail if k > 0])) <= 3.5


def test_grows_large_when_acceptance_is_high_and_drafts_cheap() -> None:
    ctl = DraftLengthController(DraftControlConfig(start_k=1), plain_step_seconds=T_PLAIN)
    ks = simulate(ctl, acceptance=0.95, per_token=0.001, rounds=200)
    assert np.mean(ks[100:]) > 8


def test_probes_after_plain_steps_and_backs_off() -> None:
    cfg = DraftControlConfig(start_k=2, probe_every=4, max_probe_every=16, probe_k=2)
    ctl = DraftLengthController(cfg, plain_step_seconds=T_PLAIN)
    ks = [run_round(ctl, acceptance=0.0, per_token=0.010) for _ in range(60)]
    probes = [i for i, k in enumerate(ks) if k > 0][1:]  # first is the start round
    gaps = [b - a - 1 for a, b in itertools.pairwise(probes)]
    assert all(ks[i] == 2 for i in probes)
    assert gaps[:3] == [8, 16, 16]  # interval doubles, capped at max_probe_every


def test_probe_that_pays_resumes_speculation() -> None:
    cfg = DraftControlConfig(start_k=2, probe_every=3)
    ctl = DraftLengthController(cfg, plain_step_seconds=T_PLAIN)
    while run_round(ctl, acceptance=0.0, per_token=0.010) != 0:
        pass
    ks = [run_round(ctl, acceptance=1.0, per_token=0.001) for _ in range(30)]
    assert ks[:3] == [0, 0, 2]
    assert ks[-1] > 2 and all(k > 0 for k in ks[3:])


def test_round_without_drafts_counts_as_plain_step() -> None:
    ctl = DraftLengthController(plain_step_seconds=0.1)
    ctl.record(4, 0, 0, 0.05)
    assert ctl.plain_step_seconds == pytest.approx(0.8 * 0.1 + 0.2 * 0.05)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"k_min": 0}, "k_min"),
        ({"start_k": 40}, "start_k"),
        ({"decay": 1.0}, "decay"),
        ({"probe_k": 99}, "probe_k"),
        ({"probe_every": 0}, "probe_every"),
    ],
)
def test_config_validation(kwargs: dict[str, int], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        DraftControlConfig(**kwargs)  # type: ignore[arg-type]


def test_expected_emitted() -> None:
    assert expected_emitted(1.0, 4) == 5
    assert expected_emitted(0.0, 4) == 1
    assert expected_emitted(0.5, 2) == pytest.approx(1.75)


@settings(max_examples=100, deadline=None)
@given(
    rounds=st.lists(
        st.tuples(st.integers(0, 16), st.floats(0.0, 1.0), st.floats(0.001, 0.2)), max_size=40
    )
)
def test_k_stays_in_range_and_decisions_are_deterministic(
    rounds: list[tuple[int, float, float]],
) -> None:
    def replay() -> list[int]:
        ctl = DraftLengthController()
        ks = []
        for drafted_cap, acc, seconds in rounds:
            k = ctl.next_k()
            ks.append(k)
            assert k == 0 or 1 <= k <= 16
            drafted = min(k, drafted_cap)
            if k == 0:
                ctl.record_plain(seconds)
            else:
                ctl.record(k, drafted, int(acc * drafted), seconds)
        return ks

    assert replay() == replay()


def test_a_drafted_round_before_any_plain_step_keeps_k() -> None:
    """A caller may draft before measuring a plain step (e.g. a predicted output); the
    controller must not fail, and learns the plain step later."""
    c = DraftLengthController(DraftControlConfig(start_k=4))
    c.record(8, 8, 8, 0.5)
    assert c.next_k() == 0  # still needs one plain step to compare against
    c.record_plain(0.05)
    assert c.plain_step_seconds == 0.05


# --- hopeless costs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("per_token", "hopeless"),
    [
        # Each drafted token costs 0.9 of a plain step (a CPU's wide verify plus a draft step):
        # even 95 % acceptance cannot pay.
        (0.9 * T_PLAIN, True),
        # A GPU's verify: a drafted token costs 5 % of a step; drafting can pay.
        (0.05 * T_PLAIN, False),
    ],
)
def test_hopeless_costs_are_recognised(per_token: float, hopeless: bool) -> None:
    ctl = DraftLengthController(DraftControlConfig())
    assert not ctl.hopeless()  # unknown costs are never hopeless
    ctl.seed(T_PLAIN, per_token)
    assert ctl.hopeless() is hopeless
    assert (ctl.next_k() == 0) is hopeless


def test_hopeless_route_probes_only_every_max_interval() -> None:
    cfg = DraftControlConfig(probe_every=4, max_probe_every=64)
    ctl = DraftLengthController(cfg)
    ctl.seed(T_PLAIN, 0.9 * T_PLAIN)
    assert ctl.plain_steps_ahead() == 64
    for i in range(64):
        assert ctl.next_k() == 0, i
        ctl.record_plain(T_PLAIN)
        assert ctl.plain_steps_ahead() == 63 - i
    assert ctl.next_k() == cfg.probe_k  # the rare probe still comes


def test_plain_steps_ahead_is_zero_while_drafting_or_unmeasured() -> None:
    assert DraftLengthController().plain_steps_ahead() == 0  # t_plain unknown
    drafting = DraftLengthController(plain_step_seconds=T_PLAIN)
    assert drafting.next_k() > 0 and drafting.plain_steps_ahead() == 0
    cfg = DraftControlConfig(probe_every=8)
    losing = DraftLengthController(cfg, plain_step_seconds=T_PLAIN)
    while losing.next_k() > 0:
        run_round(losing, 0.0, 0.5 * T_PLAIN)
    ahead = losing.plain_steps_ahead()
    assert 0 < ahead <= cfg.probe_every
    for _ in range(ahead):
        assert losing.next_k() == 0
        losing.record_plain(T_PLAIN)
    assert losing.next_k() > 0


@settings(max_examples=200, deadline=None)
@given(
    per_token=st.floats(0.0, 0.2),
    acceptance=st.floats(0.0, 1.0),
    steps=st.integers(1, 80),
)
def test_plain_steps_ahead_never_promises_a_drafted_round(
    per_token: float, acceptance: float, steps: int
) -> None:
    ctl = DraftLengthController(DraftControlConfig(probe_every=4, max_probe_every=32))
    ctl.record_plain(T_PLAIN)
    for _ in range(steps):
        ahead = ctl.plain_steps_ahead()
        for _ in range(ahead):
            assert ctl.next_k() == 0
            ctl.record_plain(T_PLAIN)
        run_round(ctl, acceptance, per_token)


# Verify seconds by width measured on the 2-core test machine (Qwen2.5-Coder-1.5B), and a
# GPU-like curve (a wider verify costs almost nothing more).
_CPU = {1: 0.0392, 2: 0.0675, 3: 0.0843, 4: 0.1037, 6: 0.1484, 8: 0.2329, 12: 0.3048,
        16: 0.3081}  # fmt: skip


def _costs(table: dict[int, float]):  # type: ignore[no-untyped-def]
    from tightwad.spec.verify_cost import VerifyCosts

    return VerifyCosts(table).seconds


def test_measured_verify_costs_turn_short_drafts_off_where_they_cannot_pay() -> None:
    # On the CPU a 2-wide verify costs 1.7 plain steps: at the prior acceptance (0.5) no short
    # draft pays, so the controller starts plain; the linear model alone would draft.
    ctl = DraftLengthController(DraftControlConfig(start_k=4), plain_step_seconds=0.040)
    ctl.seed(None, 0.001)
    assert ctl.next_k() == 4
    ctl.use_verify_costs(_costs(_CPU))
    assert ctl.next_k() == 0
    assert not ctl.hopeless()  # a 16-wide round at 95% acceptance would pay
    # A drafter costing 20 ms a token on top makes it hopeless.
    slow = DraftLengthController(DraftControlConfig(), plain_step_seconds=0.040)
    slow.use_verify_costs(_costs(_CPU), draft_per_token=0.020)
    assert slow.hopeless() and slow.next_k() == 0


def test_measured_verify_costs_pick_cheap_widths_when_acceptance_is_high() -> None:
    gpu = {w: 0.010 + 0.0002 * w for w in (1, 2, 4, 8, 16)}
    ctl = DraftLengthController(
        DraftControlConfig(start_k=4, k_max=15, max_growth=16), plain_step_seconds=0.010
    )
    ctl.use_verify_costs(_costs(gpu))
    for _ in range(6):
        k = ctl.next_k()
        ctl.record(k, k, k, 0.010 + 0.0002 * (k + 1), draft_seconds=0.0)
    assert ctl.next_k() == 15
    # Drafting time reported per round is learned as a per-token cost.
    ctl.record(15, 15, 15, 0.2, draft_seconds=0.15)
    assert ctl.draft_per_token > 0.0


def test_reprice_chooses_k_again_at_the_new_prices() -> None:
    flat = {w: 0.010 for w in (1, 2, 4, 8, 16)}
    linear = {w: 0.010 * w for w in (1, 2, 4, 8, 16)}  # every token costs a plain step
    ctl = DraftLengthController(DraftControlConfig(start_k=4), plain_step_seconds=0.010)
    ctl.reprice(_costs(linear))  # no measured costs in use yet: nothing to reprice
    assert ctl.next_k() == 4
    ctl.use_verify_costs(_costs(flat))
    for _ in range(3):
        ctl.record(ctl.next_k(), ctl.next_k(), ctl.next_k(), 0.010, draft_seconds=0.0)
    k = ctl.next_k()
    assert k > 0
    ctl.reprice(_costs(linear))
    assert ctl.hopeless() and ctl.next_k() == 0
    ctl.reprice(_costs(flat))
    assert 0 < ctl.next_k() <= DraftControlConfig().max_growth
