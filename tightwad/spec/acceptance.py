"""Acceptance rules of speculative decoding: which draft tokens the target keeps.

Terms (as in Leviathan et al. 2023, "Fast Inference from Transformers via Speculative
Decoding", and Chen et al. 2023, "Accelerating Large Language Model Decoding with Speculative
Sampling"):

- *draft*: k tokens ``d_0..d_{k-1}`` proposed by a drafter (a small model, n-gram lookup or a
  predicted output).
- *row i* (0 <= i <= k): the target's processed distribution ``p_i`` after the committed
  sequence plus ``d_0..d_{i-1}``; row k follows the whole draft. Rows are computed lazily by
  the caller (``dist_at(i)`` / ``argmax_at(i)``), since with penalties row i depends on the
  history including the draft before it, and rows after a rejection are never needed.
- *accepted*: the length n of the draft prefix the target keeps (0 <= n <= k).
- *recovered / correction token*: the token the target emits at row n after rejecting
  ``d_n``: its argmax (greedy), its own sample (sample-and-match) or a sample of the residual
  ``norm(max(0, p_n - q_n))`` (rejection sampling).
- *bonus token*: the token sampled from row k when all k draft tokens are accepted.

Every round emits ``accepted + 1`` tokens. Guarantee: the emitted tokens are distributed
exactly as if the target had sampled them one at a time (greedy: they are its argmaxes), given
truthful q. Randomness comes only from the injected generator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from tightwad.spec.sampling import SparseDist, sample

__all__ = [
    "ArgmaxAt",
    "DistAt",
    "Outcome",
    "verify",
    "verify_greedy",
    "verify_rejection",
    "verify_sample_match",
]

DistAt = Callable[[int], SparseDist]
ArgmaxAt = Callable[[int], int]

# Residual mass below this is float noise of p == q: sample from p instead.
_RESIDUAL_EPS = 1e-12


@dataclass(frozen=True, slots=True)
class Outcome:
    """Result of verifying one draft.

    ``accepted``: draft tokens kept; ``next_token``: the correction (``accepted < k``) or bonus
    (``accepted == k``) token; ``rows_used``: target rows evaluated (always ``accepted + 1``).
    """

    accepted: int
    next_token: int
    rows_used: int

    @property
    def emitted(self) -> int:
        """Tokens this round adds to the output (accepted + the next token)."""
        return self.accepted + 1


def verify_greedy(draft: Sequence[int], argmax_at: ArgmaxAt) -> Outcome:
    """Accept while the target's argmax at row i equals ``draft[i]``; no randomness."""
    for i, token in enumerate(draft):
        best = argmax_at(i)
        if best != token:
            return Outcome(accepted=i, next_token=best, rows_used=i + 1)
    k = len(draft)
    return Outcome(accepted=k, next_token=argmax_at(k), rows_used=k + 1)


def verify_sample_match(draft: Sequence[int], dist_at: DistAt, rng: np.random.Generator) -> Outcome:
    """Sample-and-match for one-hot drafts: y_i ~ p_i, accept while y_i == draft[i].

    The first mismatching y is the next token; the bonus is sampled from row k. Each emitted
    token is the target's own sample, so the output follows p exactly, and it draws exactly one
    uniform per row, like plain decoding: with the same generator state, the output equals
    plain sampling's.
    """
    for i, token in enumerate(draft):
        y = sample(dist_at(i), rng)
        if y != token:
            return Outcome(accepted=i, next_token=y, rows_used=i + 1)
    k = len(draft)
    return Outcome(accepted=k, next_token=sample(dist_at(k), rng), rows_used=k + 1)


def verify_rejection(
    draft: Sequence[int],
    q: Sequence[SparseDist],
    dist_at: DistAt,
    rng: np.random.Generator,
) -> Outcome:
    """Rejection sampling for sampled drafts: accept ``d_i`` with prob ``min(1, p_i(d)/q_i(d))``.

    On rejection the next token is sampled from ``norm(max(0, p_i - q_i))`` (``q_i`` is 0
    outside its support), or from ``p_i`` when that residual is all zero. The bonus is sampled
    from row k. A draft token outside its own q (a drafter that misreports) is treated as a
    one-hot draft at that row, which is still exact.
    """
    if len(q) != len(draft):
        raise ValueError(f"q: {len(q)} distributions for {len(draft)} draft tokens")
    for i, token in enumerate(draft):
        p = dist_at(i)
        q_i = q[i] if q[i].prob_of(token) > 0.0 else SparseDist.one_hot(token)
        p_d, q_d = p.prob_of(token), q_i.prob_of(token)
        if rng.random() * q_d < p_d:
            continue
        return Outcome(accepted=i, next_token=_recover(p, q_i, rng), rows_used=i + 1)
    k = len(draft)
    return Outcome(accepted=k, next_token=sample(dist_at(k), rng), rows_used=k + 1)


def _recover(p: SparseDist, q: SparseDist, rng: np.random.Generator) -> int:
    """Sample from ``norm(max(0, p - q))`` over p's support; from p if that is all zero."""
    residual = np.maximum(p.probs - q.probs_of(p.token_ids), 0.0)
    total = float(residual.sum())
    if total <= _RESIDUAL_EPS:
        return sample(p, rng)
    return sample(SparseDist(p.token_ids, residual / total), rng)


def verify(
    draft: Sequence[int],
    q: Sequence[SparseDist] | None,
    dist_at: DistAt,
    argmax_at: ArgmaxAt | None,
    cfg_greedy: bool,
    rng: np.random.Generator,
) -> Outcome:
    """The one entry point: greedy target -> :func:`verify_greedy`; sampled target with one-hot
    drafts (``q`` None or empty) -> :func:`verify_sample_match`; otherwise
    :func:`verify_rejection`.

    A greedy target needs no q (rejection sampling against a one-hot p reduces to argmax
    matching). ``argmax_at`` None derives the argmax from ``dist_at``.
    """
    if cfg_greedy:
        return verify_greedy(draft, argmax_at or (lambda i: dist_at(i).argmax()))
    if not q:
        return verify_sample_match(draft, dist_at, rng)
    return verify_rejection(draft, q, dist_at, rng)
