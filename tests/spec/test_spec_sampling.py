"""The sampling chain: hand-computed examples, a naive reference, and the sampler."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from tightwad.spec.sampling import (
    SORTED_SUPPORT_LIMIT,
    FrozenBias,
    SamplingConfig,
    SparseDist,
    apply_penalties_and_bias,
    sample,
    target_distribution,
)


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def as_dict(dist: SparseDist) -> dict[int, float]:
    return {int(t): float(p) for t, p in zip(dist.token_ids, dist.probs, strict=True)}


# --- config -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": math.nan}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": -0.1}, "top_p"),
        ({"min_p": 2.0}, "min_p"),
        ({"repeat_penalty": 0.0}, "repeat_penalty"),
        ({"penalty_last_n": -2}, "penalty_last_n"),
        ({"presence_penalty": math.inf}, "presence_penalty"),
        ({"frequency_penalty": math.nan}, "frequency_penalty"),
        ({"logit_bias": {-1: 1.0}}, "logit_bias"),
        ({"logit_bias": {3: math.inf}}, "logit_bias"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SamplingConfig(**kwargs)  # type: ignore[arg-type]


def test_config_freezes_logit_bias_and_is_hashable() -> None:
    source = {5: 1.0, 2: -math.inf}
    cfg = SamplingConfig(temperature=0.7, logit_bias=source)
    source[5] = 9.0
    assert isinstance(cfg.logit_bias, FrozenBias)
    assert dict(cfg.logit_bias) == {2: -math.inf, 5: 1.0}
    assert cfg == SamplingConfig(temperature=0.7, logit_bias={5: 1.0, 2: -math.inf})
    assert hash(cfg) == hash(SamplingConfig(temperature=0.7, logit_bias={2: -math.inf, 5: 1.0}))


@pytest.mark.parametrize(("temperature", "greedy"), [(0.0, True), (-1.0, True), (0.01, False)])
def test_greedy_property(temperature: float, greedy: bool) -> None:
    assert SamplingConfig(temperature=temperature).greedy is greedy


# --- penalties and bias -------------------------------------------------------------------


PENALTY_CASES = [
    # (logits, history, cfg kwargs, expected)
    (
        f32(2.0, -1.0, 0.5, 3.0),
        [0, 1, 0],
        {
            "repeat_penalty": 2.0,
            "frequency_penalty": 0.5,
            "presence_penalty": 0.25,
            "penalty_last_n": -1,
        },
        f32(2.0 / 2 - (2 * 0.5 + 0.25), -1.0 * 2 - (0.5 + 0.25), 0.5, 3.0),
    ),
    (
        f32(2.0, 4.0, 1.0),
        [0, 0, 1],
        {"repeat_penalty": 2.0, "penalty_last_n": 1},
        f32(2.0, 2.0, 1.0),
    ),
    (f32(2.0, 4.0, 1.0), [0, 1], {"repeat_penalty": 2.0, "penalty_last_n": 0}, f32(2.0, 4.0, 1.0)),
    (f32(0.0, 4.0), [0], {"repeat_penalty": 2.0}, f32(0.0, 4.0)),  # zero logit: *= keeps 0
    # bias runs first, so the sign test sees the biased logit: 1 - 2 = -1 -> * 2
    (f32(1.0, 0.0), [0], {"repeat_penalty": 2.0, "logit_bias": {0: -2.0}}, f32(-2.0, 0.0)),
    (f32(1.0, 1.0), [], {"logit_bias": {1: -math.inf}}, f32(1.0, -math.inf)),
]


@pytest.mark.parametrize(("logits", "history", "kwargs", "expected"), PENALTY_CASES)
def test_penalties_and_bias_hand_computed(
    logits: np.ndarray, history: list[int], kwargs: dict[str, object], expected: np.ndarray
) -> None:
    before = logits.copy()
    out = apply_penalties_and_bias(logits, history, SamplingConfig(**kwargs))  # type: ignore[arg-type]
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    np.testing.assert_array_equal(logits, before)
    assert out is not logits


def test_penalties_reject_history_outside_vocab() -> None:
    with pytest.raises(ValueError, match="history"):
        apply_penalties_and_bias(f32(1.0, 2.0), [5], SamplingConfig(repeat_penalty=1.1))


# --- truncation, temperature, greedy --------------------------------------------------------

PROBS = np.array([0.5, 0.3, 0.15, 0.05])
LOGITS = np.log(PROBS).astype(np.float32)


@pytest.mark.parametrize(
    ("kwargs", "support"),
    [
        ({"top_k": 2}, {0, 1}),
        ({"top_k": 10}, {0, 1, 2, 3}),
        ({"top_p": 0.45}, {0}),
        ({"top_p": 0.7}, {0, 1}),
        ({"top_p": 0.85}, {0, 1, 2}),
        ({"top_p": 0.0}, {0}),
        ({"min_p": 0.2}, {0, 1, 2}),
        ({"min_p": 0.5}, {0, 1}),
        ({"top_p": 0.85, "min_p": 0.5}, {0, 1}),
        ({"top_k": 3, "top_p": 0.99}, {0, 1, 2}),
    ],
)
def test_truncation_hand_computed(kwargs: dict[str, object], support: set[int]) -> None:
    dist = target_distribution(LOGITS, [], SamplingConfig(temperature=1.0, **kwargs))  # type: ignore[arg-type]
    got = as_dict(dist)
    assert set(got) == support
    kept = PROBS[sorted(support)]
    for token in support:
        assert got[token] == pytest.approx(PROBS[token] / kept.sum())


def test_top_p_is_computed_at_temperature_one_then_temperature_applies() -> None:
    dist = target_distribution(LOGITS, [], SamplingConfig(temperature=2.0, top_p=0.7))
    w = np.sqrt(PROBS[:2])
    assert as_dict(dist) == pytest.approx({0: w[0] / w.sum(), 1: w[1] / w.sum()})


def test_top_k_after_top_k_renormalises_top_p_over_the_k() -> None:
    # over the top-2 set the probabilities are 0.625 / 0.375: top_p 0.6 keeps only token 0
    dist = target_distribution(LOGITS, [], SamplingConfig(temperature=1.0, top_k=2, top_p=0.6))
    assert as_dict(dist) == {0: 1.0}


def test_top_k_ties_keep_the_lowest_ids() -> None:
    logits = f32(1.0, 3.0, 2.0, 3.0, 3.0, 0.0)
    dist = target_distribution(logits, [], SamplingConfig(temperature=1.0, top_k=2))
    assert list(dist.token_ids) == [1, 3]


def test_greedy_is_one_hot_at_argmax_with_lowest_id_on_ties_after_penalties() -> None:
    logits = f32(1.0, 5.0, 5.0, 4.0)
    assert as_dict(target_distribution(logits, [], SamplingConfig())) == {1: 1.0}
    cfg = SamplingConfig(repeat_penalty=2.0)
    assert as_dict(target_distribution(logits, [1, 2], cfg)) == {3: 1.0}


def test_sorted_by_probability_and_full_support_without_truncation() -> None:
    rng = np.random.default_rng(3)
    small = rng.standard_normal(50).astype(np.float32)
    dist = target_distribution(small, [], SamplingConfig(temperature=1.0))
    assert dist.size == 50
    assert np.all(np.diff(dist.probs) <= 0)
    big = rng.standard_normal(SORTED_SUPPORT_LIMIT + 10).astype(np.float32)
    dense = target_distribution(big, [], SamplingConfig(temperature=0.5))
    assert list(dense.token_ids) == list(range(big.size))
    assert dense.probs.sum() == pytest.approx(1.0)


def test_all_banned_raises() -> None:
    cfg = SamplingConfig(temperature=1.0, logit_bias={0: -math.inf, 1: -math.inf})
    with pytest.raises(ValueError, match="logits"):
        target_distribution(f32(1.0, 2.0), [], cfg)


# --- property: equal to a literal reference of llama.cpp's chain -------------------------


def reference(logits: np.ndarray, history: list[int], cfg: SamplingConfig) -> dict[int, float]:
    """Literal chain on sorted candidates: bias, penalties, top-k, top-p, min-p, temperature."""
    x = apply_penalties_and_bias(logits, history, cfg)
    if cfg.greedy:
        return {int(np.argmax(x)): 1.0}
    order = np.argsort(-x, kind="stable")
    if cfg.top_k > 0:
        order = order[: cfg.top_k]
    vmax = x[order[0]]
    if cfg.top_p < 1.0:
        mass = np.exp(x[order] - vmax).astype(np.float64)
        total = float(np.exp(x[order] - vmax).sum(dtype=np.float64))
        cum = np.cumsum(mass)
        cut = int(np.searchsorted(cum, cfg.top_p * total, side="left")) + 1
        order = order[: max(1, cut)]
    if cfg.min_p > 0.0:
        floor = vmax + np.float32(math.log(cfg.min_p))
        order = order[x[order] >= floor]
    w = np.exp((x[order] - vmax) / np.float32(cfg.temperature)).astype(np.float64)
    w /= w.sum()
    return {int(t): float(p) for t, p in zip(order, w, strict=True)}


configs = st.builds(
    SamplingConfig,
    temperature=st.sampled_from([0.0, 0.3, 1.0, 1.7]),
    top_k=st.sampled_from([0, 1, 3, 40]),
    top_p=st.sampled_from([1.0, 0.95, 0.6, 0.2]),
    min_p=st.sampled_from([0.0, 0.05, 0.3]),
    repeat_penalty=st.sampled_from([1.0, 1.3]),
    penalty_last_n=st.sampled_from([-1, 0, 4]),
    presence_penalty=st.sampled_from([0.0, 0.5]),
    frequency_penalty=st.sampled_from([0.0, 0.2]),
)


@settings(max_examples=150, deadline=None)
@given(
    cfg=configs,
    seed=st.integers(0, 2**32 - 1),
    n=st.sampled_from([7, 60, 9000]),
    ties=st.booleans(),
)
def test_target_distribution_equals_literal_reference(
    cfg: SamplingConfig, seed: int, n: int, ties: bool
) -> None:
    rng = np.random.default_rng(seed)
    raw = rng.standard_normal(n) * 3
    logits = (np.round(raw) if ties else raw).astype(np.float32)
    history = rng.integers(0, n, size=12).tolist()
    got = as_dict(target_distribution(logits, history, cfg))
    want = reference(logits, history, cfg)
    assert set(got) == set(want)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


# --- SparseDist and sample -----------------------------------------------------------------


def test_sparse_dist_of_validates_normalises_and_sorts() -> None:
    dist = SparseDist.of([7, 3, 9], [1.0, 3.0, 0.0])
    assert list(dist.token_ids) == [3, 7]
    assert dist.prob_of(3) == pytest.approx(0.75)
    assert dist.prob_of(9) == 0.0
    np.testing.assert_allclose(dist.to_dense(8), [0, 0, 0, 0.75, 0, 0, 0, 0.25])
    np.testing.assert_allclose(dist.probs_of(np.array([7, 1, 3])), [0.25, 0.0, 0.75])
    assert dist.argmax() == 3
    with pytest.raises(ValueError, match="unique"):
        SparseDist.of([1, 1], [0.5, 0.5])
    with pytest.raises(ValueError, match="probs"):
        SparseDist.of([1, 2], [0.5, -0.5])
    with pytest.raises(ValueError, match="probs"):
        SparseDist.of([1], [0.0])
    with pytest.raises(ValueError):
        dist.probs[0] = 1.0  # read-only


def test_top_m_renormalises_the_most_likely() -> None:
    dist = SparseDist.of([1, 2, 3, 4], [0.4, 0.3, 0.2, 0.1]).top(2)
    assert as_dict(dist) == pytest.approx({1: 4 / 7, 2: 3 / 7})


def test_top_m_of_a_large_support_breaks_ties_by_lowest_id() -> None:
    probs = np.full(1000, 1.0)
    probs[[500, 7]] = 5.0
    dist = SparseDist(np.arange(1000), probs / probs.sum()).top(4)
    assert list(dist.token_ids) == [7, 500, 0, 1]
    assert dist.probs.sum() == pytest.approx(1.0)


def test_sample_follows_the_distribution_and_uses_one_uniform() -> None:
    dist = SparseDist.of([10, 11, 12, 13], [0.1, 0.2, 0.3, 0.4])
    rng = np.random.default_rng(7)
    twin = np.random.default_rng(7)
    counts = dict.fromkeys((10, 11, 12, 13), 0)
    n = 20000
    for _ in range(n):
        counts[sample(dist, rng)] += 1
        twin.random()
    assert rng.random() == twin.random()
    observed = [counts[t] for t in (10, 11, 12, 13)]
    assert chisquare(observed, [n * p for p in (0.1, 0.2, 0.3, 0.4)]).pvalue > 1e-4


def test_sample_never_returns_zero_probability_tokens() -> None:
    dist = SparseDist(np.array([0, 1, 2]), np.array([0.0, 1.0, 0.0]))
    rng = np.random.default_rng(0)
    assert {sample(dist, rng) for _ in range(200)} == {1}
