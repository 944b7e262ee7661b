"""Verify cost by batch width: copies are cut to the width that is cheapest per token."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tightwad.spec.verify_cost import VerifyCosts

# Measured on the 2-core test machine (Qwen2.5-Coder-1.5B Q4_K_M, 2 threads), ms by width.
CPU_MS = {1: 39.2, 2: 67.5, 3: 84.3, 4: 103.7, 6: 148.4, 8: 232.9, 12: 304.8, 16: 308.1,
          24: 452.9, 32: 503.2, 48: 722.2, 64: 882.6}  # fmt: skip


def cpu() -> VerifyCosts:
    return VerifyCosts({w: ms / 1000.0 for w, ms in CPU_MS.items()})


def test_nothing_measured_sends_the_draft_as_proposed() -> None:
    costs = VerifyCosts()
    assert not costs
    assert costs.seconds(10) is None
    assert costs.copy_drafts(37) == 37
    assert costs.copy_drafts(37, budget_limited=True) == 37


def test_copies_are_cut_to_the_cheapest_width_per_token() -> None:
    costs = cpu()
    # 64 tokens cost 13.8 ms each, every narrower measured width more: a 70-token copy sends
    # 63 drafts (64 with the pending token); a 50-token one the 48-wide tile, not 50.
    assert costs.copy_drafts(70) == 63
    assert costs.copy_drafts(63) == 63
    assert costs.copy_drafts(50) == 47
    assert costs.copy_drafts(20) == 15
    # 8 wide costs more than 6 per token on this CPU; 12 is no better than 6 either.
    assert costs.copy_drafts(10) == 5
    assert costs.copy_drafts(1) == 1


def test_budget_limited_copies_take_the_cheapest_way_to_the_end() -> None:
    costs = cpu()
    # 31 tokens left (30 drafts + the pending one): one round (interpolated 497 ms) beats
    # 24 + 6 + 1 wide (640 ms), although 24 alone is cheaper per token.
    assert costs.copy_drafts(30) == 23
    assert costs.copy_drafts(30, budget_limited=True) == 30
    # A curve where one tile is cheap and the next dear: 20 left go as 16 + 4 plain steps.
    spiky = VerifyCosts({1: 0.01, 16: 0.1, 32: 1.0})
    assert spiky.copy_drafts(19, budget_limited=True) == 15
    assert costs.copy_drafts(47, budget_limited=True) == 47
    # When plain steps are cheapest (a drafting-hostile curve), nothing is drafted.
    flat = VerifyCosts({1: 0.01, 2: 0.05, 4: 0.2})
    assert flat.copy_drafts(3, budget_limited=True) == 0


def test_observations_move_the_estimate_and_interpolate_between_widths() -> None:
    costs = VerifyCosts({16: 0.3}, decay=0.5)
    costs.observe(16, 0.5)
    assert costs.seconds(16) == pytest.approx(0.4)
    costs.observe(32, 0.6)
    assert costs.seconds(24) == pytest.approx(0.5)
    assert costs.seconds(8) == pytest.approx(0.2)  # below the narrowest: its per-token cost
    assert costs.seconds(64) == pytest.approx(1.2)  # beyond the widest: its per-token cost
    costs.observe(4, 0.0)  # a verify that reported no time teaches nothing
    assert costs.widths == (16, 32)
    with pytest.raises(ValueError, match="width"):
        costs.observe(0, 0.1)


def _cheapest_total(costs: VerifyCosts, tokens: int) -> float:
    """Brute force: the cheapest total over every way to split ``tokens`` into measured
    widths (plain steps allowed)."""
    widths = sorted(set(costs.widths) | {1})
    plain = costs.seconds(1) or 0.0
    best = [0.0] + [float("inf")] * tokens
    for t in range(1, tokens + 1):
        for w in widths:
            if w <= t:
                secs = plain if w == 1 else (costs.seconds(w) or 0.0)
                best[t] = min(best[t], secs + best[t - w])
    return best[tokens]


@settings(max_examples=150, deadline=None)
@given(
    curve=st.dictionaries(
        st.integers(1, 40), st.floats(0.001, 1.0, allow_nan=False), min_size=1, max_size=8
    ),
    available=st.integers(0, 60),
    limited=st.booleans(),
)
def test_copy_drafts_is_a_measured_width_and_never_more_than_available(
    curve: dict[int, float], available: int, limited: bool
) -> None:
    costs = VerifyCosts(curve)
    d = costs.copy_drafts(available, budget_limited=limited)
    assert 0 <= d <= available
    fits = [w for w in costs.widths if 2 <= w <= available + 1]
    if not fits:
        assert d == available
    elif not limited:
        assert d + 1 in fits
        per = {w: (costs.seconds(w) or 0.0) / w for w in fits}
        assert per[d + 1] == min(per.values())
    elif d == available:
        # All at once: no split into measured widths is cheaper.
        whole = costs.seconds(available + 1) or 0.0
        assert whole <= _cheapest_total(costs, available + 1) * (1 + 1e-6)
    elif d > 0:
        # The first step of an optimal split: it plus the best of the rest is optimal.
        first = costs.seconds(d + 1) or 0.0
        rest = _cheapest_total(costs, available + 1 - (d + 1))
        assert first + rest == pytest.approx(_cheapest_total(costs, available + 1))
