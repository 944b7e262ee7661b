"""Per-request draft length from measured goodput: draft while it pays, stop when it does not.

Owns :class:`DraftLengthController`. It holds no clock: the caller passes measured seconds.

Model. With a per-token acceptance rate a (estimated from rounds, decayed so recent rounds
count most, with a prior of ``prior_weight`` pseudo-tokens at ``prior_acceptance``), a round
that drafts k tokens emits on average ``E(k) = 1 + a + ... + a^k`` tokens and costs
``T(k) = t_plain + c * k`` seconds, where ``t_plain`` is the target's plain step time (from
plain steps) and ``c`` the measured extra cost per drafted token (drafting plus the wider
verify). Speculative goodput is ``E(k) / T(k)``; plain goodput is ``1 / t_plain``.

Policy. ``next_k`` returns the k in [k_min, k_max] that maximises predicted goodput, growing by
at most ``max_growth`` per round (shrinking at once). When the best k does not beat plain
decoding by ``min_gain``, it returns 0 (plain steps); after ``probe_every`` plain steps it
probes one round with ``probe_k``. A probe that does not pay doubles the probe interval (up
to ``max_probe_every``); one that pays resets it. Without a known ``t_plain``, the first step is
a plain one, to measure it. When the measured costs say drafting could not pay even at an
optimistic acceptance (``hopeless_acceptance``, e.g. a CPU where a wide verify costs nearly as
much per token as a plain step), probes wait ``max_probe_every`` plain steps: each one would
only re-confirm a loss. :meth:`plain_steps_ahead` says how many of the next rounds are
certainly plain, so a caller can decode them as one stretch. When the prices change (a
batched engine: the round's verify joins other sequences' work), :meth:`reprice` chooses k again.

Guarantee: deterministic (same inputs, same decisions); never returns k outside {0} and
[k_min, k_max].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["DraftControlConfig", "DraftLengthController"]


@dataclass(frozen=True, slots=True)
class DraftControlConfig:
    """Tuning of :class:`DraftLengthController` (defaults suit a remote drafter)."""

    k_min: int = 1
    k_max: int = 16
    start_k: int = 4
    probe_k: int = 2
    probe_every: int = 16
    max_probe_every: int = 256
    max_growth: int = 2
    min_gain: float = 0.05
    decay: float = 0.8
    acceptance_decay: float = 0.95
    prior_acceptance: float = 0.5
    prior_weight: float = 1.0
    hopeless_acceptance: float = 0.95

    def __post_init__(self) -> None:
        _require(1 <= self.k_min <= self.k_max, "k_min", "need 1 <= k_min <= k_max")
        _require(0 <= self.start_k <= self.k_max, "start_k", "need 0 <= start_k <= k_max")
        _require(self.k_min <= self.probe_k <= self.k_max, "probe_k", "within [k_min, k_max]")
        _require(1 <= self.probe_every <= self.max_probe_every, "probe_every", "1..max")
        _require(self.max_growth >= 1, "max_growth", "must be >= 1")
        _require(self.min_gain >= 0.0, "min_gain", "must be >= 0")
        _require(0.0 < self.decay < 1.0, "decay", "within (0, 1)")
        _require(0.0 < self.acceptance_decay < 1.0, "acceptance_decay", "within (0, 1)")
        _require(0.0 < self.prior_acceptance < 1.0, "prior_acceptance", "within (0, 1)")
        _require(self.prior_weight > 0.0, "prior_weight", "must be > 0")
        _require(0.0 < self.hopeless_acceptance < 1.0, "hopeless_acceptance", "within (0, 1)")


def _require(ok: bool, name: str, reason: str) -> None:
    if not ok:
        raise ValueError(f"{name}: {reason}")


def expected_emitted(acceptance: float, k: int) -> float:
    """E(k) = 1 + a + ... + a^k: mean tokens a k-token round emits (bonus/correction included)."""
    return float(sum(acceptance**i for i in range(k + 1)))


class DraftLengthController:
    """Chooses the draft length of each round of one request (see the module docstring)."""

    def __init__(
        self, config: DraftControlConfig | None = None, *, plain_step_seconds: float | None = None
    ) -> None:
        self.config = config or DraftControlConfig()
        self._t_plain = plain_step_seconds
        self._per_token_cost: float | None = None
        # With a measured verify cost per batch width (VerifyCosts.seconds), a round of k costs
        # t_plain + (verify(k + 1) - verify(1)) + draft_per_token * k instead of the linear
        # t_plain + c * k: on a CPU the curve has steps (16 tokens cost less than 15).
        self._verify_seconds: Callable[[int], float | None] | None = None
        self._draft_per_token = 0.0
        self._accepted_w = 0.0
        self._rejected_w = 0.0
        self._k = self.config.start_k
        self._plain_streak = 0
        self._probe_every = self.config.probe_every
        self._probing = False
        self._rounds = 0

    def seed(
        self,
        plain_step_seconds: float | None,
        per_token_cost: float | None,
        *,
        acceptance: float | None = None,
        weight: float = 4.0,
    ) -> None:
        """Start from what another controller measured (e.g. the route's, across requests), so
        a request need not pay to re-learn what a round costs. ``acceptance`` (with the weight
        of ``weight`` rounds) is seeded only when it carries over, as for a draft model; then
        the draft length is chosen from the seeded estimates at once."""
        if plain_step_seconds is not None:
            _require(plain_step_seconds > 0.0, "plain_step_seconds", "must be > 0")
            self._t_plain = plain_step_seconds
        if per_token_cost is not None:
            _require(per_token_cost >= 0.0, "per_token_cost", "must be >= 0")
            self._per_token_cost = per_token_cost
        if acceptance is not None:
            _require(0.0 <= acceptance <= 1.0, "acceptance", "within [0, 1]")
            _require(weight > 0.0, "weight", "must be > 0")
            self._accepted_w = acceptance * weight
            self._rejected_w = (1.0 - acceptance) * weight
            if self._round_cost(1) is not None:
                self._k = self._choose()
        if self.hopeless():
            self._k = 0

    def use_verify_costs(
        self, verify_seconds: Callable[[int], float | None], *, draft_per_token: float = 0.0
    ) -> None:
        """Predict a round's cost from measured verify seconds by width (plus
        ``draft_per_token`` seconds per drafted token, learned further from rounds)."""
        _require(draft_per_token >= 0.0, "draft_per_token", "must be >= 0")
        self._verify_seconds = verify_seconds
        self._draft_per_token = draft_per_token
        if self._t_plain is not None:
            self._k = self._choose()
        if self.hopeless():
            self._k = 0

    def reprice(self, verify_seconds: Callable[[int], float | None]) -> None:
        """The verify prices changed (e.g. the batch the round joins grew or shrank): predict
        rounds from ``verify_seconds`` from now on and choose k again at once, so drafting
        turns off where it stopped paying and comes back (within ``max_growth``) where it
        pays again. Without :meth:`use_verify_costs` first, nothing changes."""
        if self._verify_seconds is None:
            return
        self._verify_seconds = verify_seconds
        if self._t_plain is not None:
            self._k = self._choose()
        if self.hopeless():
            self._k = 0

    @property
    def draft_per_token(self) -> float:
        """Estimated drafting seconds per drafted token (with :meth:`use_verify_costs`)."""
        return self._draft_per_token

    def _round_cost(self, k: int) -> float | None:
        """Predicted seconds of a round drafting k tokens (None while unknown)."""
        t = self._t_plain
        if t is None:
            return None
        if k == 0:
            return t
        if self._verify_seconds is not None:
            wide, one = self._verify_seconds(k + 1), self._verify_seconds(1)
            if wide is not None and one is not None:
                return t + max(0.0, wide - one) + self._draft_per_token * k
        if self._per_token_cost is None:
            return None
        return t + self._per_token_cost * k

    # --- estimates -------------------------------------------------------------------------

    @property
    def acceptance(self) -> float:
        """Estimated probability that the target accepts a drafted token."""
        cfg = self.config
        prior_acc = cfg.prior_acceptance * cfg.prior_weight
        return (self._accepted_w + prior_acc) / (
            self._accepted_w + self._rejected_w + cfg.prior_weight
        )

    @property
    def rounds_seen(self) -> int:
        """Drafted rounds observed so far."""
        return self._rounds

    @property
    def plain_step_seconds(self) -> float | None:
        """Estimated seconds of one plain target step (None until measured or given)."""
        return self._t_plain

    @property
    def per_token_cost(self) -> float | None:
        """Estimated extra seconds per drafted token of a round."""
        return self._per_token_cost

    def predicted_goodput(self, k: int) -> float | None:
        """Predicted emitted tokens per second with draft length k (k = 0: plain decoding)."""
        cost = self._round_cost(k)
        return None if cost is None else expected_emitted(self.acceptance, k) / cost

    def hopeless(self) -> bool:
        """Drafting could not beat plain decoding at any k, even if the target accepted
        ``hopeless_acceptance`` of the drafted tokens (False while the costs are unknown)."""
        cfg = self.config
        t = self._t_plain
        if t is None:
            return False
        plain = (1.0 + cfg.min_gain) / t
        for k in range(cfg.k_min, cfg.k_max + 1):
            cost = self._round_cost(k)
            if cost is None:
                return False
            if expected_emitted(cfg.hopeless_acceptance, k) / cost > plain:
                return False
        return True

    def _probe_interval(self) -> int:
        return self.config.max_probe_every if self.hopeless() else self._probe_every

    # --- decisions -------------------------------------------------------------------------

    def next_k(self) -> int:
        """Draft length for the next round (0 = one plain step)."""
        if self._t_plain is None:
            return 0
        if self._k == 0 and self._plain_streak >= self._probe_interval():
            self._probing = True
            return self.config.probe_k
        return self._k

    def plain_steps_ahead(self) -> int:
        """How many of the next rounds will certainly be plain steps (0 when the next round
        may draft): the caller may decode them as one stretch, then report each with
        :meth:`record_plain`."""
        if self._t_plain is None or self._k != 0:
            return 0
        return max(0, self._probe_interval() - self._plain_streak)

    def record_plain(self, step_seconds: float) -> None:
        """A plain (k = 0) step took ``step_seconds``."""
        _require(step_seconds > 0.0, "step_seconds", "must be > 0")
        self._t_plain = self._ewma(self._t_plain, step_seconds)
        if self._k == 0:
            self._plain_streak += 1
        elif self._round_cost(1) is not None:
            self._k = self._choose()

    def record(
        self,
        k: int,
        drafted: int,
        accepted: int,
        round_seconds: float,
        draft_seconds: float | None = None,
    ) -> None:
        """A round asked for k tokens, got ``drafted``, of which the target accepted ``accepted``.

        ``round_seconds`` is the round's wall time (draft + verify; with pipelined drafting,
        the time the request waited); ``draft_seconds`` (the drafting part) is used only with
        :meth:`use_verify_costs`, which predicts the verify part from the measured widths.
        """
        _require(0 <= accepted <= drafted, "accepted", "need 0 <= accepted <= drafted")
        _require(round_seconds > 0.0, "round_seconds", "must be > 0")
        del k
        if drafted == 0:
            self.record_plain(round_seconds)
            return
        if self._verify_seconds is not None and draft_seconds is not None:
            self._draft_per_token = self._ewma(self._draft_per_token, draft_seconds / drafted)
        self._observe_round(drafted, accepted, round_seconds)
        was_probe, self._probing = self._probing, False
        self._k = self._choose()
        if was_probe:
            self._after_probe(paid=self._k > 0)
        elif self._k == 0:
            self._plain_streak = 0

    def _observe_round(self, drafted: int, accepted: int, round_seconds: float) -> None:
        self._rounds += 1
        decay = self.config.acceptance_decay
        self._accepted_w = decay * self._accepted_w + accepted
        self._rejected_w = decay * self._rejected_w + (1 if accepted < drafted else 0)
        if self._t_plain is not None:
            extra = max(0.0, round_seconds - self._t_plain) / drafted
            self._per_token_cost = self._ewma(self._per_token_cost, extra)

    def _after_probe(self, *, paid: bool) -> None:
        self._plain_streak = 0
        if paid:
            self._probe_every = self.config.probe_every
        else:
            self._probe_every = min(2 * self._probe_every, self.config.max_probe_every)

    def _choose(self) -> int:
        """Best k by predicted goodput, limited growth; 0 when plain decoding is as good."""
        cfg = self.config
        plain = self.predicted_goodput(0)
        if plain is None:  # no plain step measured yet: nothing to compare against
            return self._k
        ceiling = min(cfg.k_max, max(self._k, cfg.k_min - 1) + cfg.max_growth)
        best_k, best = 0, plain * (1.0 + cfg.min_gain)
        for k in range(cfg.k_min, ceiling + 1):
            goodput = self.predicted_goodput(k)
            if goodput is not None and goodput > best:
                best_k, best = k, goodput
        return best_k

    def _ewma(self, old: float | None, new: float) -> float:
        return new if old is None else self.config.decay * old + (1.0 - self.config.decay) * new
