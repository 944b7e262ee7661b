"""Acceptance rules: prefix properties, laziness, exactness (chi-square) and dispatch."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from tightwad.spec.acceptance import (
    Outcome,
    verify,
    verify_greedy,
    verify_rejection,
    verify_sample_match,
)
from tightwad.spec.sampling import SparseDist, sample

VOCAB = 4


def recording(fn: Callable[[int], object], calls: list[int]) -> Callable[[int], object]:
    def wrapped(i: int) -> object:
        calls.append(i)
        return fn(i)

    return wrapped


@pytest.mark.parametrize(
    ("draft", "argmaxes", "expected"),
    [
        ([5, 6, 7], [5, 6, 7, 8], Outcome(3, 8, 4)),
        ([5, 6, 7], [5, 9, 7, 8], Outcome(1, 9, 2)),
        ([5, 6, 7], [1, 6, 7, 8], Outcome(0, 1, 1)),
        ([], [4], Outcome(0, 4, 1)),
    ],
)
def test_verify_greedy_table(draft: list[int], argmaxes: list[int], expected: Outcome) -> None:
    calls: list[int] = []
    out = verify_greedy(draft, recording(argmaxes.__getitem__, calls))  # type: ignore[arg-type]
    assert out == expected
    assert calls == list(range(expected.rows_used))


@settings(max_examples=200, deadline=None)
@given(data=st.data(), k=st.integers(0, 8))
def test_greedy_prefix_properties(data: st.DataObject, k: int) -> None:
    argmaxes = data.draw(st.lists(st.integers(0, 3), min_size=k + 1, max_size=k + 1))
    draft = data.draw(st.lists(st.integers(0, 3), min_size=k, max_size=k))
    calls: list[int] = []
    out = verify_greedy(draft, recording(argmaxes.__getitem__, calls))  # type: ignore[arg-type]
    assert 0 <= out.accepted <= k
    assert draft[: out.accepted] == argmaxes[: out.accepted]
    assert out.next_token == argmaxes[out.accepted]
    if out.accepted < k:
        assert draft[out.accepted] != out.next_token
    assert calls == list(range(out.accepted + 1)) and out.rows_used == out.accepted + 1
    # sample-and-match against one-hot rows is the same rule, and so is rejection with any q
    rows = [SparseDist.one_hot(t) for t in argmaxes]
    rng = np.random.default_rng(0)
    assert verify_sample_match(draft, rows.__getitem__, rng) == out
    q = [SparseDist.of(range(VOCAB), [0.25] * VOCAB) for _ in draft]
    assert verify_rejection(draft, q, rows.__getitem__, rng) == out


# --- exactness ------------------------------------------------------------------------------


def random_dist(rng: np.random.Generator, sparse: bool) -> SparseDist:
    probs = rng.dirichlet(np.ones(VOCAB))
    if sparse:
        probs[rng.choice(VOCAB, size=2, replace=False)] = 0.0
        if probs.sum() == 0:
            probs[0] = 1.0
    return SparseDist.of(range(VOCAB), probs)


class Model:
    """Rows that depend on (position, previous token): p(t_pos | t_{pos-1})."""

    def __init__(self, rng: np.random.Generator, sparse: bool) -> None:
        self.rows = {
            (pos, prev): random_dist(rng, sparse) for pos in range(6) for prev in range(VOCAB)
        }

    def dist(self, pos: int, prev: int) -> SparseDist:
        return self.rows[(pos, prev)]

    def joint(self) -> dict[tuple[int, int], float]:
        out = {}
        for a in range(VOCAB):
            for b in range(VOCAB):
                out[(a, b)] = self.dist(0, 0).prob_of(a) * self.dist(1, a).prob_of(b)
        return out


def generate_two(
    target: Model, drafter: Model | None, rng: np.random.Generator, k: int
) -> tuple[int, int]:
    """Speculative decoding of two tokens after a start token 0."""
    out: list[int] = []
    while len(out) < 2:
        start = len(out)
        prev = out[-1] if out else 0
        draft: list[int] = []
        q: list[SparseDist] = []
        for i in range(k):
            if drafter is None:
                draft.append(int(rng.integers(VOCAB)))  # a one-hot guess
            else:
                qi = drafter.dist(start + i, (draft[-1] if draft else prev))
                q.append(qi)
                draft.append(sample(qi, rng))

        def dist_at(
            i: int, draft: list[int] = draft, start: int = start, prev: int = prev
        ) -> SparseDist:
            return target.dist(start + i, draft[i - 1] if i > 0 else prev)

        res = (
            verify_sample_match(draft, dist_at, rng)
            if drafter is None
            else verify_rejection(draft, q, dist_at, rng)
        )
        out.extend([*draft[: res.accepted], res.next_token])
    return out[0], out[1]


def assert_matches(samples: list[tuple[int, int]], joint: dict[tuple[int, int], float]) -> None:
    n = len(samples)
    counts = Counter(samples)
    first = Counter(a for a, _ in samples)
    cells = [c for c, p in joint.items() if p > 0]
    assert all(joint[c] > 0 for c in counts), "sampled a token with target probability 0"
    pvalue = chisquare([counts[c] for c in cells], [n * joint[c] for c in cells]).pvalue
    assert pvalue > 1e-4
    marg = {a: sum(joint[(a, b)] for b in range(VOCAB)) for a in range(VOCAB)}
    tokens = [a for a in range(VOCAB) if marg[a] > 0]
    assert chisquare([first[a] for a in tokens], [n * marg[a] for a in tokens]).pvalue > 1e-4


@pytest.mark.parametrize(("seed", "k", "sparse_q"), [(1, 1, False), (2, 3, True), (3, 2, True)])
def test_rejection_sampling_reproduces_the_target(seed: int, k: int, sparse_q: bool) -> None:
    rng = np.random.default_rng(seed)
    target, drafter = Model(rng, sparse=False), Model(rng, sparse=sparse_q)
    samples = [generate_two(target, drafter, rng, k) for _ in range(12000)]
    assert_matches(samples, target.joint())


@pytest.mark.parametrize(("seed", "k"), [(4, 1), (5, 3)])
def test_sample_and_match_reproduces_the_target(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    target = Model(rng, sparse=True)
    samples = [generate_two(target, None, rng, k) for _ in range(12000)]
    assert_matches(samples, target.joint())


def test_sample_and_match_equals_plain_sampling_with_the_same_seed() -> None:
    model = Model(np.random.default_rng(9), sparse=False)
    plain_rng = np.random.default_rng(42)
    plain, prev = [], 0
    for pos in range(6):
        prev = sample(model.dist(pos, prev), plain_rng)
        plain.append(prev)
    spec_rng, guess_rng = np.random.default_rng(42), np.random.default_rng(1)
    out: list[int] = []
    while len(out) < 6:
        start, prev = len(out), (out[-1] if out else 0)
        draft = [int(t) for t in guess_rng.integers(VOCAB, size=min(3, 5 - start))]

        def dist_at(
            i: int, draft: list[int] = draft, start: int = start, prev: int = prev
        ) -> SparseDist:
            return model.dist(start + i, draft[i - 1] if i > 0 else prev)

        res = verify_sample_match(draft, dist_at, spec_rng)
        out.extend([*draft[: res.accepted], res.next_token])
    assert out[:6] == plain


def test_rejection_accepts_everything_when_q_equals_p() -> None:
    rng = np.random.default_rng(0)
    p = SparseDist.of([0, 1, 2], [0.2, 0.3, 0.5])
    for _ in range(300):
        draft = [sample(p, rng) for _ in range(3)]
        assert verify_rejection(draft, [p] * 3, lambda i: p, rng).accepted == 3


def test_rejection_never_emits_a_correction_where_q_covers_p() -> None:
    # p = q on token 0, p > q on token 1: a rejection can only resample token 1
    p = SparseDist.of([0, 1], [0.5, 0.5])
    q = SparseDist.of([0, 2], [0.5, 0.5])
    rng = np.random.default_rng(1)
    for _ in range(300):
        out = verify_rejection([2], [q], lambda i: p, rng)
        assert out.accepted == 0 and out.next_token == 1


def test_rejection_treats_a_draft_outside_q_as_one_hot() -> None:
    p = SparseDist.of([0, 1], [0.3, 0.7])
    q = SparseDist.of([0], [1.0])
    rng = np.random.default_rng(2)
    n = 20000
    accepted = sum(verify_rejection([1], [q], lambda i: p, rng).accepted for _ in range(n))
    assert chisquare([accepted, n - accepted], [0.7 * n, 0.3 * n]).pvalue > 1e-4


def test_rejection_rows_are_lazy() -> None:
    p = SparseDist.of([0, 1], [1.0, 0.0])
    calls: list[int] = []
    q = [SparseDist.one_hot(1)] * 3
    out = verify_rejection([1, 1, 1], q, recording(lambda i: p, calls), np.random.default_rng(0))  # type: ignore[arg-type]
    assert out == Outcome(0, 0, 1) and calls == [0]


def test_verify_dispatches_on_greedy_and_q() -> None:
    p = SparseDist.of([3, 4], [0.5, 0.5])
    argmaxes = [3, 3, 3]
    greedy = verify([3, 4], None, lambda i: p, argmaxes.__getitem__, True, np.random.default_rng(0))
    assert greedy == Outcome(1, 3, 2)
    derived = verify([3, 3], None, lambda i: p, None, True, np.random.default_rng(0))
    assert derived == Outcome(2, 3, 3)
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    assert verify([3], [], lambda i: p, None, False, rng_a) == verify_sample_match(
        [3], lambda i: p, rng_b
    )
    rng_a, rng_b = np.random.default_rng(6), np.random.default_rng(6)
    q = [SparseDist.of([3, 4], [0.9, 0.1])]
    assert verify([3], q, lambda i: p, None, False, rng_a) == verify_rejection(
        [3], q, lambda i: p, rng_b
    )
    with pytest.raises(ValueError, match="q"):
        verify([3, 4], q, lambda i: p, None, False, rng_a)
