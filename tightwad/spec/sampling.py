"""The target's sampling chain, with llama.cpp's semantics and order, as pure numpy.

Owns: :class:`SamplingConfig` (validated sampling parameters), :class:`SparseDist` (a processed
distribution over a small support), :func:`apply_penalties_and_bias`, :func:`target_distribution`
and :func:`sample`.

The chain, in llama.cpp's order:

1. logit bias: ``logit[t] += bias[t]`` (``-inf`` bans a token);
2. penalties over the last ``penalty_last_n`` tokens of the history (-1 = the whole history,
   0 = none): for a token seen ``c > 0`` times, ``logit /= repeat_penalty`` when positive,
   ``logit *= repeat_penalty`` when not, then ``logit -= c * frequency_penalty +
   presence_penalty``;
3. top-k (0 = off), top-p (nucleus over probabilities at temperature 1, keeps at least one
   token), min-p (keeps tokens with ``p >= min_p * p_max``);
4. temperature: ``softmax(logit / temperature)`` over the survivors; ``temperature <= 0`` is
   greedy: the one-hot at the argmax (ties: the lowest token id).

Guarantees: inputs are never mutated; the same (logits, history, config) always gives the same
distribution (ties broken by the lowest token id); randomness only comes from the
``numpy.random.Generator`` passed to :func:`sample`, which draws exactly one uniform per call, so
plain decoding and speculative verification that sample the same rows with the same generator
emit the same tokens.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "SORTED_SUPPORT_LIMIT",
    "FloatArray",
    "FrozenBias",
    "History",
    "IdArray",
    "SamplingConfig",
    "SparseDist",
    "apply_penalties_and_bias",
    "sample",
    "target_distribution",
]

FloatArray = NDArray[np.float64]
IdArray = NDArray[np.int64]
Logits = NDArray[np.float32]
# Tokens before the row being sampled (prompt, output, draft tokens before the row).
History = Sequence[int] | NDArray[np.integer[Any]]

# Candidate sets smaller than this fraction of the vocabulary are found by a sampled threshold
# and one comparison pass (O(n)) instead of a full partition.
_SUBSAMPLE_SIZE = 4096
_NUCLEUS_START = 64
# Supports up to this size are sorted by probability; larger ones stay in token-id order.
SORTED_SUPPORT_LIMIT = 4096


class FrozenBias(Mapping[int, float]):
    """An immutable, hashable ``{token_id: bias}`` mapping (the form ``logit_bias`` is kept in)."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[int, float] | Sequence[tuple[int, float]] = ()) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        merged: dict[int, float] = {}
        for token, bias in pairs:
            merged[int(token)] = float(bias)
        self._items: tuple[tuple[int, float], ...] = tuple(sorted(merged.items()))

    def __getitem__(self, token: int) -> float:
        for key, value in self._items:
            if key == token:
                return value
        raise KeyError(token)

    def __iter__(self) -> Iterator[int]:
        return (key for key, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self._items) == dict(other.items())
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenBias({dict(self._items)!r})"


@dataclass(frozen=True, slots=True)
class SamplingConfig:
    """Sampling parameters of one request. ``logit_bias`` is kept as a :class:`FrozenBias`."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    penalty_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Mapping[int, float] = field(default_factory=FrozenBias)

    def __post_init__(self) -> None:
        if not isinstance(self.logit_bias, FrozenBias):
            object.__setattr__(self, "logit_bias", FrozenBias(self.logit_bias))
        _check(math.isfinite(self.temperature), "temperature", "must be a finite number")
        _check(self.top_k >= 0, "top_k", "must be >= 0 (0 = off)")
        _check(0.0 <= self.top_p <= 1.0, "top_p", "must be within [0, 1]")
        _check(0.0 <= self.min_p <= 1.0, "min_p", "must be within [0, 1]")
        _check(
            math.isfinite(self.repeat_penalty) and self.repeat_penalty > 0.0,
            "repeat_penalty",
            "must be a finite number > 0 (1 = off)",
        )
        _check(self.penalty_last_n >= -1, "penalty_last_n", "must be >= -1 (-1 = all)")
        _check(math.isfinite(self.presence_penalty), "presence_penalty", "must be finite")
        _check(math.isfinite(self.frequency_penalty), "frequency_penalty", "must be finite")
        for token, bias in self.logit_bias.items():
            _check(token >= 0, "logit_bias", f"token id {token} is negative")
            _check(
                not math.isnan(bias) and bias != math.inf,
                "logit_bias",
                f"bias of token {token} must be finite or -inf",
            )

    @property
    def greedy(self) -> bool:
        """Whether this config decodes by argmax (``temperature <= 0``)."""
        return self.temperature <= 0.0

    @property
    def has_penalties(self) -> bool:
        """Whether any history penalty changes logits."""
        return self.penalty_last_n != 0 and (
            self.repeat_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )


def _check(ok: bool, name: str, reason: str) -> None:
    if not ok:
        raise ValueError(f"{name}: {reason}")


@dataclass(frozen=True, slots=True, eq=False)
class SparseDist:
    """A probability distribution over a support of token ids.

    ``token_ids`` (shape [m], int64, unique) and ``probs`` (shape [m], float64, sum 1) are
    read-only arrays. Distributions made by :meth:`of` and :meth:`top`, and those of
    :func:`target_distribution` with at most ``SORTED_SUPPORT_LIMIT`` tokens, are sorted by
    probability descending (ties: lower id first); larger supports (e.g. the full vocabulary
    when nothing truncates) stay in ascending token-id order, since sorting 150k entries would
    cost more than the forward pass it serves. Tokens outside the support have probability 0.
    """

    token_ids: IdArray
    probs: FloatArray

    def __post_init__(self) -> None:
        ids = np.asarray(self.token_ids, dtype=np.int64)
        probs = np.asarray(self.probs, dtype=np.float64)
        if ids.ndim != 1 or ids.shape != probs.shape or ids.size == 0:
            raise ValueError("SparseDist: token_ids and probs must be equal-length, non-empty 1-D")
        ids.flags.writeable = False
        probs.flags.writeable = False
        object.__setattr__(self, "token_ids", ids)
        object.__setattr__(self, "probs", probs)

    @classmethod
    def of(cls, token_ids: ArrayLike, probs: ArrayLike) -> SparseDist:
        """Validate, normalise and sort a distribution from outside (e.g. a drafter's q).

        Raises ValueError on duplicate or negative ids, negative or non-finite probabilities,
        or a zero total. Zero-probability entries are dropped.
        """
        ids = np.array(token_ids, dtype=np.int64).reshape(-1)
        p = np.array(probs, dtype=np.float64).reshape(-1)
        _check(ids.shape == p.shape and ids.size > 0, "probs", "needs one prob per token id")
        _check(bool(np.all(ids >= 0)), "token_ids", "ids must be >= 0")
        _check(np.unique(ids).size == ids.size, "token_ids", "ids must be unique")
        _check(bool(np.all(np.isfinite(p)) and np.all(p >= 0)), "probs", "must be finite, >= 0")
        total = float(p.sum())
        _check(total > 0.0, "probs", "must not sum to zero")
        keep = p > 0.0
        ids, p = ids[keep], p[keep] / total
        order = np.lexsort((ids, -p))
        return cls(ids[order], p[order])

    @classmethod
    def one_hot(cls, token: int) -> SparseDist:
        """The distribution that always yields ``token``."""
        return cls(np.array([token], dtype=np.int64), np.ones(1, dtype=np.float64))

    @property
    def size(self) -> int:
        """Number of tokens in the support."""
        return int(self.token_ids.size)

    def prob_of(self, token: int) -> float:
        """p(token); 0 outside the support."""
        hits = np.flatnonzero(self.token_ids == token)
        return float(self.probs[hits[0]]) if hits.size else 0.0

    def probs_of(self, tokens: IdArray) -> FloatArray:
        """p(t) for each t of ``tokens`` (shape [j]); 0 outside the support."""
        order = np.argsort(self.token_ids, kind="stable")
        sorted_ids = self.token_ids[order]
        pos = np.searchsorted(sorted_ids, tokens)
        pos = np.minimum(pos, sorted_ids.size - 1)
        found = sorted_ids[pos] == tokens
        return np.where(found, self.probs[order][pos], 0.0)

    def argmax(self) -> int:
        """The most likely token (ties: the lowest id)."""
        best = self.probs.max()
        return int(self.token_ids[self.probs == best].min())

    def top(self, m: int) -> SparseDist:
        """The m most likely tokens, renormalised (what a drafter samples from and sends as q)."""
        _check(m >= 1, "m", "must be >= 1")
        ids, p = self.token_ids, self.probs
        if ids.size > 4 * m:  # one partition instead of sorting a large support
            edge = np.partition(p, p.size - m)[p.size - m]
            upper = np.flatnonzero(p >= edge)
            ids, p = ids[upper], p[upper]
        order = np.lexsort((ids, -p))[:m]
        ids, p = ids[order], p[order]
        return SparseDist(ids, p / p.sum())

    def to_dense(self, n_vocab: int) -> FloatArray:
        """The distribution as a dense array of shape [n_vocab]."""
        _check(int(self.token_ids.max()) < n_vocab, "n_vocab", "smaller than a token id")
        dense = np.zeros(n_vocab, dtype=np.float64)
        dense[self.token_ids] = self.probs
        return dense


def apply_penalties_and_bias(logits: Logits, history: History, cfg: SamplingConfig) -> Logits:
    """Steps 1-2 of the chain on a copy of ``logits`` (shape [n_vocab]); the input is untouched.

    ``history`` is every token before the row being sampled (prompt, output and, during
    verification, the draft tokens before this row).
    """
    out = np.array(logits, dtype=np.float32, copy=True).reshape(-1)
    if cfg.logit_bias:
        ids = np.fromiter(cfg.logit_bias.keys(), dtype=np.int64, count=len(cfg.logit_bias))
        _check(int(ids.max()) < out.size, "logit_bias", "token id outside the vocabulary")
        bias = np.fromiter(cfg.logit_bias.values(), dtype=np.float32, count=ids.size)
        out[ids] += bias
    if cfg.has_penalties and len(history) > 0:
        _apply_penalties(out, history, cfg)
    return out


def _apply_penalties(out: Logits, history: History, cfg: SamplingConfig) -> None:
    window = np.asarray(history, dtype=np.int64).reshape(-1)
    if cfg.penalty_last_n > 0:
        window = window[-cfg.penalty_last_n :]
    if window.size == 0:
        return
    _check(
        int(window.min()) >= 0 and int(window.max()) < out.size,
        "history",
        "token id outside the vocabulary",
    )
    ids, counts = np.unique(window, return_counts=True)
    seen = out[ids]
    penalty = np.float32(cfg.repeat_penalty)
    # A penalty near the wire's bound (float32 max) overflows a negative logit to -inf, as
    # the engine's C float arithmetic does: that token is out (probability 0), not a warning.
    with np.errstate(over="ignore"):
        seen = np.where(seen <= 0, seen * penalty, seen / penalty)
    seen -= counts.astype(np.float32) * np.float32(cfg.frequency_penalty) + np.float32(
        cfg.presence_penalty
    )
    out[ids] = seen


def target_distribution(logits: Logits, history: History, cfg: SamplingConfig) -> SparseDist:
    """The processed distribution p of one row (``logits`` shape [n_vocab]) under ``cfg``."""
    x = _processed(logits, history, cfg)
    if cfg.greedy:
        return SparseDist.one_hot(int(np.argmax(x)))
    ids: IdArray | None = None
    if 0 < cfg.top_k < x.size:
        ids = _top_k_ids(x, cfg.top_k)
    vals = x if ids is None else x[ids]
    vmax = vals.max()
    _check(bool(np.isfinite(vmax)), "logits", "no finite logit left after bias and penalties")
    if cfg.min_p > 0.0 or cfg.top_p < 1.0:
        local = _truncate(vals, vmax, cfg)
        ids = local if ids is None else ids[local]
        vals = x[ids]
    return _finish(vals, ids, vmax, cfg.temperature)


def _processed(logits: Logits, history: History, cfg: SamplingConfig) -> Logits:
    """Logits after bias and penalties; the input itself (read-only use) when neither applies."""
    if cfg.logit_bias or (cfg.has_penalties and len(history) > 0):
        return apply_penalties_and_bias(logits, history, cfg)
    return np.asarray(logits, dtype=np.float32).reshape(-1)


def _top_k_ids(x: Logits, k: int) -> IdArray:
    """Ids of the k largest logits, ascending; ties at the cut keep the lower ids."""
    cand = _upper_set(x, k)
    if cand.size > k:
        order = np.argsort(-x[cand], kind="stable")[:k]
        cand = np.sort(cand[order])
    return cand


def _upper_set(x: Logits, m: int) -> IdArray:
    """Ascending ids of an upper set of x (all ids with x >= some t) holding at least m ids.

    The threshold is the m-th largest value of a strided subsample: a lower bound of the m-th
    largest value overall, so the set is a superset of the top m, found in one O(n) pass.
    """
    n = x.size
    stride = max(1, n // max(_SUBSAMPLE_SIZE, 4 * m))
    sub = x[::stride]
    if m >= n or sub.size <= m:
        return np.arange(n, dtype=np.int64)
    threshold = np.partition(sub, sub.size - m)[sub.size - m]
    return np.flatnonzero(x >= threshold).astype(np.int64, copy=False)


def _truncate(vals: Logits, vmax: np.float32, cfg: SamplingConfig) -> IdArray:
    """Apply min-p then top-p to ``vals``; returns the surviving positions (ascending).

    Both filters keep a top prefix of the same order (the max always survives), so applying
    min-p first gives llama.cpp's top-p-then-min-p result, as long as top-p's masses are
    normalised over the set before either filter (``total``).
    """
    local: IdArray | None = None
    if cfg.min_p > 0.0:
        floor = vmax + np.float32(math.log(cfg.min_p))
        local = np.flatnonzero(vals >= floor).astype(np.int64, copy=False)
    if cfg.top_p < 1.0:
        total = float(np.exp(vals - vmax).sum(dtype=np.float64))
        sub = vals if local is None else vals[local]
        pos = _nucleus(sub, vmax, cfg.top_p * total)
        local = pos if local is None else local[pos]
    assert local is not None
    return local


def _nucleus(x: Logits, vmax: np.float32, target: float) -> IdArray:
    """Ascending positions of the shortest top prefix of x whose mass reaches ``target``.

    Masses are ``exp(x - vmax)``. Any upper set with enough mass contains the nucleus, so grow
    an upper set until its mass suffices, then find the exact cut by sorting its values only.
    Ties at the cut keep the lower positions.
    """
    m = _NUCLEUS_START
    while True:
        cand = _upper_set(x, m) if 4 * m < x.size else np.arange(x.size, dtype=np.int64)
        mass = np.exp(x[cand] - vmax).astype(np.float64)
        if cand.size == x.size or float(mass.sum()) >= target:
            break
        m = max(4 * m, _nucleus_size_guess(x, vmax, target))
    xs = x[cand]
    desc = np.sort(xs)[::-1]
    cum = np.cumsum(np.exp(desc - vmax).astype(np.float64))
    cut = min(int(np.searchsorted(cum, target, side="left")), desc.size - 1)
    edge = desc[cut]
    keep = xs > edge
    ties = np.flatnonzero(xs == edge)[: cut + 1 - int(keep.sum())]
    keep[ties] = True
    kept: IdArray = cand[keep]
    return kept


def _nucleus_size_guess(x: Logits, vmax: np.float32, target: float) -> int:
    """A guess of the nucleus size from a strided subsample (its masses scaled by the stride)."""
    stride = max(1, x.size // _SUBSAMPLE_SIZE)
    sub = np.sort(np.exp(x[::stride] - vmax).astype(np.float64))[::-1]
    reach = int(np.searchsorted(np.cumsum(sub) * stride, target, side="left"))
    return max(_NUCLEUS_START, 2 * (reach + 1) * stride)


def _finish(vals: Logits, ids: IdArray | None, vmax: np.float32, temperature: float) -> SparseDist:
    """Temperature and softmax over the survivors; sorted by prob up to ``SORTED_SUPPORT_LIMIT``."""
    w = np.exp((vals - vmax) / np.float32(temperature)).astype(np.float64)
    w /= w.sum()
    if ids is None:
        ids = np.arange(vals.size, dtype=np.int64)
    if ids.size > SORTED_SUPPORT_LIMIT:
        return SparseDist(ids, w)
    order = np.argsort(-w, kind="stable")
    return SparseDist(ids[order], w[order])


def sample(dist: SparseDist, rng: np.random.Generator) -> int:
    """Draw one token from ``dist`` by inverse CDF with exactly one ``rng.random()``."""
    u = rng.random()
    if dist.size == 1:
        return int(dist.token_ids[0])
    cdf = np.cumsum(dist.probs)
    idx = int(np.searchsorted(cdf, u * cdf[-1], side="right"))
    idx = min(idx, dist.size - 1)
    while dist.probs[idx] <= 0.0 and idx > 0:
        idx -= 1
    return int(dist.token_ids[idx])
