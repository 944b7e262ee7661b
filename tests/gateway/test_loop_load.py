"""Speculation under load as decision tables: the draft-length control prices a round's verify
at the batch's total width (live runs x their width) where the target batches, alone where it
does not. Pure: no engine, no clock."""

from __future__ import annotations

import pytest

from tightwad.gateway.loop.control import Counters, RequestControl, request_control
from tightwad.gateway.loop.policy import batch_prices, priced_load
from tightwad.spec.draft_control import DraftControlConfig, DraftLengthController
from tightwad.spec.verify_cost import VerifyCosts

# A GPU-like target: a forward pass costs the same up to 16 tokens (memory-bound), then
# grows linearly with the batch's width (compute-bound).
FLAT_THEN_LINEAR = VerifyCosts({1: 0.02, 2: 0.02, 4: 0.02, 8: 0.02, 16: 0.02, 32: 0.04, 64: 0.08})


@pytest.mark.parametrize(
    ("live", "width", "priced_at"),
    [
        (0, 5, 5),  # no run counted yet: the run alone
        (1, 5, 5),  # one run: its own width
        (4, 1, 4),  # four plain steps in one batch
        (4, 5, 20),  # four runs verifying 5 wide each
        (16, 3, 48),
    ],
)
def test_batch_prices_a_round_at_the_total_batch_width(
    live: int, width: int, priced_at: int
) -> None:
    priced = batch_prices(FLAT_THEN_LINEAR.seconds, live)
    assert priced(width) == pytest.approx(FLAT_THEN_LINEAR.seconds(priced_at))


def test_batch_prices_of_one_run_are_the_table_itself() -> None:
    seconds = FLAT_THEN_LINEAR.seconds
    assert batch_prices(seconds, 1) is seconds  # exactly today's prices


def _control(costs: VerifyCosts = FLAT_THEN_LINEAR) -> RequestControl:
    cfg = DraftControlConfig()
    ctl = request_control(cfg, proposer="ngram", shared=DraftLengthController(cfg), costs=costs)
    ctl.record_plain(0.02)  # the plain step measured
    for _ in range(4):  # drafts accepted whole
        ctl.record(4, 4, 4, 0.021, 0.0)
    return ctl


def _unloaded() -> RequestControl:
    """The same history without any load observed: today's controller."""
    return _control()


@pytest.mark.parametrize(
    ("loads", "drafting"),
    [
        ((1,), True),  # one run: today's decision
        ((16,), False),  # 16 runs fill the flat part: every drafted token costs a plain step
        ((32,), False),
        ((2,), True),  # two runs of up to 8 wide still fit the flat part
        ((16, 1), True),  # load falls: drafting comes back
        ((16, 2), True),
        ((1, 16, 16), False),  # the same load again: nothing changes
        ((16, 1, 32), False),  # load rises again: off again
    ],
)
def test_drafting_follows_the_load(loads: tuple[int, ...], drafting: bool) -> None:
    ctl = _control()
    for live in loads:
        ctl.observe_load(live)
    assert (ctl.next_k() > 0) is drafting
    assert ctl.load == loads[-1]


def test_load_of_one_keeps_todays_decisions() -> None:
    loaded, plain = _control(), _unloaded()
    assert loaded.observe_load(1) is False  # nothing to reprice
    for ctl in (loaded, plain):
        ctl.record(4, 4, 2, 0.021, 0.0)
        ctl.record_plain(0.02)
    assert loaded.next_k() == plain.next_k() > 0
    assert loaded.plain_steps_ahead() == plain.plain_steps_ahead()


def test_load_falling_brings_drafting_back_within_the_growth_limit() -> None:
    ctl = _control()
    k_alone = ctl.next_k()
    assert ctl.observe_load(16) is True and ctl.next_k() == 0
    # Plain batch steps under load cost what a 16-wide pass costs (flat here).
    for _ in range(5):
        ctl.record_plain(0.02)
    assert ctl.next_k() == 0
    assert ctl.observe_load(1) is True
    k_back = ctl.next_k()
    assert 0 < k_back <= DraftControlConfig().max_growth <= k_alone


def test_a_compute_bound_cpu_table_turns_off_earlier() -> None:
    # A CPU-like target: a fixed cost plus a real cost per token from the first one.
    cpu = VerifyCosts({w: 0.02 + 0.004 * w for w in (1, 2, 4, 8, 16, 32, 64)})
    ctl = _control(cpu)
    assert ctl.next_k() > 0
    ctl.observe_load(8)
    assert ctl.next_k() == 0


def test_without_measured_costs_the_load_changes_nothing() -> None:
    ctl = _control(VerifyCosts())
    k = ctl.next_k()
    assert ctl.observe_load(16) is False
    assert ctl.next_k() == k and ctl.load == 16


def test_counters_sum_the_load_of_each_step() -> None:
    c = Counters()
    c.record_round(0, 0, load=3)
    c.record_round(4, 2, load=1)
    assert c.load_steps == 4 and c.round_no == 2


@pytest.mark.parametrize(
    ("live", "batches", "load"),
    [
        (0, True, 1),  # no run counted yet: the run alone
        (1, True, 1),
        (4, True, 4),  # four runs share one forward pass
        (16, True, 16),
        (0, False, 1),
        (1, False, 1),
        (4, False, 1),  # four runs take turns: each round costs its own width
        (16, False, 1),
    ],
)
def test_the_load_is_priced_only_where_the_target_batches(
    live: int, batches: bool, load: int
) -> None:
    assert priced_load(live, batches) == load


@pytest.mark.parametrize(
    ("live", "batches", "drafting"),
    [
        (1, True, True),
        (16, True, False),  # a full batch: drafted tokens cost plain steps, so no drafting
        (32, True, False),
        (1, False, True),
        (16, False, True),  # 16 runs in turn: each round alone in the flat part, drafts pay
        (32, False, True),
    ],
)
def test_drafting_under_load_follows_whether_the_target_batches(
    live: int, batches: bool, drafting: bool
) -> None:
    ctl = _control()
    ctl.observe_load(priced_load(live, batches))
    assert (ctl.next_k() > 0) is drafting
