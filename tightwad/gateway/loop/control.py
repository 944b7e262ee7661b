"""A request's draft-length control and its counters.

Owns :class:`RequestControl` (the request's own controller plus the route's, which learns from
every request) built by :func:`request_control`, :class:`FixedK` (``adaptive: false``) and
:class:`Counters` (what the ``tightwad`` stats object of a response reports). No I/O: the shell
passes measured seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tightwad.gateway.loop.policy import batch_prices
from tightwad.spec.draft_control import DraftControlConfig, DraftLengthController
from tightwad.spec.verify_cost import VerifyCosts

__all__ = ["Counters", "FixedK", "RequestControl", "request_control"]


@dataclass
class Counters:
    """One request's rounds, drafted and accepted tokens, and times."""

    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    plain_steps: int = 0
    draft_ms: float = 0.0
    verify_ms: float = 0.0
    by_position: list[int] = field(default_factory=list)
    forced_drafted: int = 0
    forced_accepted: int = 0
    # The load each target step was priced at (live runs, 1 where the target does not
    # batch), summed (over round_no steps).
    load_steps: int = 0

    @property
    def round_no(self) -> int:
        """Target steps so far (the ``round`` of a :class:`~tightwad.gateway.types.TextDelta`)."""
        return self.rounds + self.plain_steps

    def record_round(self, drafted: int, accepted: int, forced: int = 0, *, load: int = 1) -> None:
        """One target step: ``drafted`` tokens verified (the first ``forced`` of them forced by
        the grammar), ``accepted`` of them accepted, priced at ``load`` (``policy.priced_load``)."""
        self.load_steps += load
        self.forced_drafted += forced
        self.forced_accepted += min(forced, accepted)
        if drafted == 0:
            self.plain_steps += 1
            return
        self.rounds += 1
        self.drafted += drafted
        self.accepted += accepted
        while len(self.by_position) < drafted:
            self.by_position.append(0)
        for i in range(accepted):
            self.by_position[i] += 1


class FixedK:
    """Always k (adaptive: false)."""

    def __init__(self, k: int) -> None:
        self.k = k

    def next_k(self) -> int:
        return self.k

    def record(self, *args: object) -> None:
        return None

    def record_plain(self, step_seconds: float) -> None:
        return None


@dataclass
class RequestControl:
    """The request's controller, and the route's one that learns from it too. ``costs``: the
    route's verify cost by total batch width, which :meth:`observe_load` prices the own
    controller's rounds at (``load``: the live runs it last priced for)."""

    own: DraftLengthController | FixedK
    shared: DraftLengthController | None
    costs: VerifyCosts | None = None
    load: int = 1

    def next_k(self) -> int:
        return self.own.next_k()

    def observe_load(self, live: int) -> bool:
        """``live`` runs share the route's batch now: where that differs from the load the
        own controller was priced for, reprice it at the batch's width
        (:func:`~.policy.batch_prices`), choosing k again. Whether it repriced."""
        live = max(1, live)
        if live == self.load:
            return False
        self.load = live
        if not self.costs or not isinstance(self.own, DraftLengthController):
            return False
        self.own.reprice(batch_prices(self.costs.seconds, live))
        return True

    def record(self, k: int, drafted: int, accepted: int, secs: float, draft: float) -> None:
        self.own.record(k, drafted, accepted, secs, draft)
        if self.shared is not None:
            self.shared.record(k, drafted, accepted, secs, draft)

    def record_plain(self, secs: float) -> None:
        self.own.record_plain(secs)
        if self.shared is not None:
            self.shared.record_plain(secs)

    def plain_step_seconds(self) -> float | None:
        own = self.own.plain_step_seconds if isinstance(self.own, DraftLengthController) else None
        if own is None and self.shared is not None:
            return self.shared.plain_step_seconds
        return own

    def plain_steps_ahead(self) -> int:
        return self.own.plain_steps_ahead() if isinstance(self.own, DraftLengthController) else 0


def request_control(
    config: DraftControlConfig,
    *,
    proposer: str,
    shared: DraftLengthController,
    costs: VerifyCosts,
) -> RequestControl:
    """An adaptive request's controller: its own acceptance (n-gram and predicted-output
    matches are the request's), seeded with the costs the route measured; for a draft model
    (``proposer`` model or hybrid) the route's acceptance carries over too, so a losing
    drafter stays off across requests (with occasional probes). Every round also teaches
    ``shared``, the route's controller of that proposer. (``adaptive: false`` routes use
    ``RequestControl(FixedK(k), None)``.)"""
    own = DraftLengthController(config)
    carry = proposer in ("model", "hybrid") and shared.rounds_seen > 0
    own.seed(
        shared.plain_step_seconds,
        shared.per_token_cost,
        acceptance=shared.acceptance if carry else None,
    )
    if costs:
        own.use_verify_costs(costs.seconds, draft_per_token=shared.draft_per_token)
    return RequestControl(own, shared, costs)
