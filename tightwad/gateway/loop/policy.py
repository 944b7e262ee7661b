"""The round policy of the speculative loop: pure decisions, no I/O, no clock.

Owns every choice a round makes; the shell (:mod:`.run`) gathers the facts, calls these
functions and executes what they decide. Terms:

- a *round* is one target step: a Verify of ``[pending, d1..dk]`` (k = 0: a plain step);
- a *plain stretch* is a run of plain steps decoded as one Generate stream (no round trip per
  token), chosen where the next rounds certainly would not draft (:func:`plain_stretch`);
- a *copy* is a draft-free draft from a long match (an n-gram suffix match of at least
  ``copy_min_match`` tokens, or a prediction followed that long): it starts wide
  (``copy_start_tokens``), is cut to the verify width the route measured as cheapest per token
  (:func:`shape`), and doubles while accepted whole and paying (:func:`after_round`'s run k);
  one mostly rejected pauses copies for ``copy_pause`` tokens, doubling per failure;
- *forced* tokens are the ones a grammar forces next: they lead the next round's draft, for
  free (:func:`forced_head`); the route's proposer continues after them;
- a token's *origin* says what proposed it (:func:`block_origins`, the dashboard's colours);
- the *load* is how many runs are live on the route: on a batching engine their steps share
  one forward pass, so a round is priced at the batch's total width (:func:`batch_prices`);
  on one that does not batch they take turns, and a round is priced alone (:func:`priced_load`).

State between rounds is :class:`CopyState` (frozen; :func:`after_round` returns the next one).
Guarantee: deterministic, same inputs same decisions; a draft never exceeds what the request's
budget can still use (``left - 1`` tokens: one more comes from the target).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from tightwad.config import DEFAULT_MAX_DRAFT_TOKENS
from tightwad.gateway.types import TokenOrigin
from tightwad.spec.proposers import NGramProposer, PredictionProposer
from tightwad.spec.sampling import SparseDist
from tightwad.spec.verify_cost import VerifyCosts

__all__ = [
    "COPY_PAUSE",
    "CopyState",
    "Draft",
    "Knobs",
    "Outlook",
    "RoundPlan",
    "RoundResult",
    "after_round",
    "batch_prices",
    "block_origins",
    "certainly_plain",
    "forced_head",
    "free_draft",
    "lead_with",
    "pipelined_draft_holds",
    "plain_stretch",
    "plan_round",
    "queue_lookahead",
    "round_k",
    "shape",
]

#: Tokens copies pause for after the first copy that was mostly rejected (doubling per failure).
COPY_PAUSE = 16


@dataclass(frozen=True, slots=True)
class Knobs:
    """The route settings the policy reads (see :class:`~tightwad.gateway.loop.RouteSpec`)."""

    draft_mode: str = "ngram"
    max_draft_tokens: int = DEFAULT_MAX_DRAFT_TOKENS
    hybrid_min_match: int = 3
    copy_min_match: int = 12
    copy_start_tokens: int = 64
    prediction_start_tokens: int = 16
    prediction_min_run: int = 2
    plain_lookahead: bool = True
    plain_chunks: bool = True
    adaptive: bool = True


@dataclass(frozen=True, slots=True)
class CopyState:
    """What copies carry from round to round: the draft length a run of whole copies forces
    (0 = none), and the pause after a failed copy (copies are off until ``off_until`` tokens
    are out; the next failure pauses ``pause`` tokens)."""

    run_k: int = 0
    off_until: int = 0
    pause: int = COPY_PAUSE

    def copies_on(self, produced: int) -> bool:
        return produced >= self.off_until


@dataclass(frozen=True, slots=True)
class Draft:
    """A round's draft. ``q``: the drafter's sparse distributions (None: one-hot); ``copy``:
    from a long match; ``shaped``: cut to a cheaper verify width (the copy run then counts it as
    whole); ``in_drafter``: the draft session holds these tokens (a model's or a pipelined
    draft), so it stays in line with what the target accepts of them."""

    tokens: tuple[int, ...] = ()
    q: tuple[SparseDist, ...] | None = None
    copy: bool = False
    shaped: bool = False
    in_drafter: bool = False

    def __len__(self) -> int:
        return len(self.tokens)

    def cut(self, n: int) -> Draft:
        """The first ``n`` tokens (and their q)."""
        n = max(0, n)
        q = self.q[:n] if self.q else None
        return replace(self, tokens=self.tokens[:n], q=q)


@dataclass(frozen=True, slots=True)
class Outlook:
    """What the decision to decode plainly looks at, gathered by the shell before a round.

    ``next_k``: the controller's next draft length; ``plain_ahead``: how many of the next
    rounds its schedule makes plain (``plain_steps_ahead``); ``model_drafting``: a draft model
    or text drafter may serve the next round (open, opening, or wanted); ``prediction_run`` /
    ``ngram_match``: how many of the output's last tokens follow the prediction / match the
    n-gram index (None: no such proposer); ``ngram_min_n``: the shortest n-gram it matches."""

    produced: int
    next_k: int
    plain_ahead: int = 0
    model_drafting: bool = False
    prediction_run: int | None = None
    ngram_match: int | None = None
    ngram_min_n: int = 2


def round_k(knobs: Knobs, *, next_k: int, run_k: int, plain_measured: bool, left: int) -> int:
    """A drafted round's k: the controller's, raised to a copy run's (once a plain step has
    been measured: the run's goodput check needs it), within the route's maximum and the
    budget (``left`` tokens may still be emitted; the target adds one)."""
    run = run_k if plain_measured else 0
    return min(max(next_k, run), knobs.max_draft_tokens, left - 1)


def forced_head(
    knobs: Knobs, forced: Sequence[int], *, k: int, left: int
) -> tuple[tuple[int, ...], int]:
    """The grammar-forced tokens that lead this round's draft, and the k left for the route's
    proposer after them (both within the route's maximum and the budget)."""
    head = tuple(forced[: max(0, min(left - 1, knobs.max_draft_tokens))])
    lead = len(head)
    return head, max(0, min(k, knobs.max_draft_tokens - lead, left - 1 - lead))


@dataclass(frozen=True, slots=True)
class RoundPlan:
    """What a round drafts. ``k``: tokens asked of the proposers after the forced ``head``;
    ``room``: drafted tokens they may use; ``propose``: ask them (an n-gram index may copy even
    at k = 0); ``reuse``: the draft pipelined during the last round serves instead;
    ``open_drafter``: the round wants a draft, so the drafter should get ready."""

    k: int
    room: int
    head: tuple[int, ...] = ()
    propose: bool = False
    reuse: bool = False
    open_drafter: bool = False


def plan_round(
    knobs: Knobs,
    state: CopyState,
    *,
    next_k: int,
    plain_measured: bool,
    left: int,
    forced: Sequence[int] = (),
    pending: bool = False,
    ngram: bool = False,
) -> RoundPlan:
    """The round's plan (:class:`RoundPlan`): k from :func:`round_k`; forced tokens lead (a
    pipelined guess gives way to them, :func:`forced_head`) and the proposers continue after
    them; else a ``pending`` pipelined draft is reused; else the proposers are asked (at k = 0
    only an n-gram index, ``ngram``, may still propose a copy)."""
    k = round_k(knobs, next_k=next_k, run_k=state.run_k, plain_measured=plain_measured, left=left)
    wants = k > 0
    if forced:
        head, k = forced_head(knobs, forced, k=k, left=left)
        room = left - 1 - len(head)
        return RoundPlan(k, room, head, propose=k > 0 or ngram, open_drafter=wants)
    if pending:
        return RoundPlan(k, left - 1, reuse=True, open_drafter=wants)
    return RoundPlan(k, left - 1, propose=k > 0 or ngram, open_drafter=wants)


def lead_with(head: Sequence[int], rest: Draft) -> Draft:
    """Forced tokens followed by the proposers' draft (one-hot q for the forced ones)."""
    if not head:
        return rest
    q = (*(SparseDist.one_hot(t) for t in head), *rest.q) if rest.q else None
    return replace(rest, tokens=(*head, *rest.tokens), q=q)


def certainly_plain(knobs: Knobs, state: CopyState, view: Outlook) -> int:
    """How many of the next rounds are certainly plain steps for a proposer that looks at
    every token (0 = the next round may draft). A suffix match grows by at most one token per
    token, so a draft that needs a match of n tokens (a copy: ``copy_min_match``; a short
    n-gram draft while the controller wants k > 0: the n-gram's ``min_n``, or in hybrid mode
    ``hybrid_min_match``) is at least n minus the current match away; likewise a prediction's
    run. With k = 0 the controller's next probe, and the end of a copy pause, bound it too."""
    if not knobs.plain_lookahead:
        return 0
    k = view.next_k
    if k > 0 and view.model_drafting:
        return 0
    copies_on = state.copies_on(view.produced)
    limits = [] if k > 0 else [view.plain_ahead or 1]
    if k == 0 and not copies_on:
        limits.append(state.off_until - view.produced)
    if view.prediction_run is not None:
        if copies_on:
            limits.append(knobs.copy_min_match - view.prediction_run)
        if k > 0:
            limits.append(knobs.prediction_min_run - view.prediction_run)
    if view.ngram_match is not None:
        short = view.ngram_min_n if knobs.draft_mode == "ngram" else knobs.hybrid_min_match
        if copies_on:
            limits.append(knobs.copy_min_match - view.ngram_match)
        if k > 0:
            limits.append(short - view.ngram_match)
    return max(0, min(limits)) if limits else 0


def plain_stretch(
    knobs: Knobs,
    state: CopyState,
    view: Outlook,
    *,
    pipelined: bool,
    room: int,
    budget: int | None,
) -> int:
    """How many tokens to decode as one Generate stream: all of them without drafting; for a
    draft model, the plain steps the controller has already decided on; for proposers that
    look at every new token (n-gram, prediction), :func:`certainly_plain`. ``pipelined``: a
    draft for this round is in flight (no stretch); ``room``: context left; ``budget``: tokens
    max_tokens still allows (None: no limit). A stretch of 0 or 1 is a round."""
    if pipelined:
        return 0
    if view.ngram_match is not None or view.prediction_run is not None:
        ahead = certainly_plain(knobs, state, view) if knobs.plain_chunks else 0
    elif knobs.draft_mode == "none":
        ahead = room
    elif knobs.draft_mode == "model" and knobs.adaptive:
        ahead = view.plain_ahead
    else:
        return 0
    if budget is not None:
        ahead = min(ahead, budget)
    return max(0, min(ahead, room))


def shape(costs: VerifyCosts, tokens: Sequence[int], room: int, *, copy: bool) -> Draft:
    """A copy (or prediction) draft cut to the width the route measured as cheapest per
    token; where the request's budget (``room`` drafted tokens) limits the draft, to the
    cheapest way to its end."""
    n = costs.copy_drafts(len(tokens), budget_limited=len(tokens) >= room)
    return Draft(tuple(tokens[:n]), copy=copy, shaped=n != len(tokens))


def free_draft(
    knobs: Knobs,
    state: CopyState,
    costs: VerifyCosts,
    *,
    k: int,
    room: int,
    output: Sequence[int],
    prediction: PredictionProposer | None,
    ngram: NGramProposer | None,
    after_forced: bool = False,
) -> Draft | None:
    """The draft-free proposers' draft for a round of k (k = 0: only a copy may draft), or
    None when a drafter (model or text) should be asked for k tokens. ``room``: drafted tokens
    the budget can use; ``after_forced``: the draft continues forced tokens (the n-gram index
    already holds them; a prediction does not continue a forced draft).

    Order: a prediction the output has followed for ``copy_min_match`` tokens is copied as
    wide as a copy; one followed ``prediction_min_run`` tokens proposes k; then an n-gram
    match of ``copy_min_match`` is a copy; a shorter one (at least ``hybrid_min_match`` in
    hybrid mode) proposes k. Copies are off during a pause (:class:`CopyState`)."""
    copy_ok = state.copies_on(len(output))
    k_copy = min(max(k, knobs.copy_start_tokens), knobs.max_draft_tokens, room)
    if prediction is not None and not after_forced:
        run = prediction.sync(output)
        copying = copy_ok and run >= knobs.copy_min_match
        # Otherwise guess only where the output has followed it for a few tokens: a one-token
        # re-alignment (e.g. the "\n" after an opening code fence) is weak evidence.
        confirmed = run >= knobs.prediction_min_run
        got = prediction.propose(output, k_copy if copying else k)
        if got and (copying or (k > 0 and confirmed)):
            return shape(costs, got, room, copy=copying)
    if ngram is not None:
        match = ngram.lookup(None, max(k, k_copy))
        if match.match_length >= knobs.copy_min_match and copy_ok:
            return shape(costs, match.tokens, room, copy=True)
        long_enough = knobs.draft_mode == "ngram" or match.match_length >= knobs.hybrid_min_match
        if k > 0 and match.tokens and long_enough:
            return Draft(match.tokens[:k])
    if k <= 0:
        return Draft()
    return None


def queue_lookahead(knobs: Knobs, drafted: int, left: int) -> bool:
    """Whether a plain round also queues the next plain step (so the engine decodes back to
    back): only when the budget leaves room for it."""
    return drafted == 0 and knobs.plain_lookahead and left >= 3


@dataclass(frozen=True, slots=True)
class RoundResult:
    """What a verified round tells the copy logic. ``k``: the length asked of the proposer
    (its draft's length when shaped); ``drafted`` / ``accepted``: the proposer's own tokens
    (after any forced ones) and how many the target accepted; ``lead``: forced tokens that
    led the draft; ``t_plain``: the controller's plain step estimate after this round."""

    k: int
    drafted: int
    accepted: int
    elapsed: float
    t_plain: float | None
    copy: bool = False
    lead: int = 0
    in_drafter: bool = False


def after_round(knobs: Knobs, state: CopyState, r: RoundResult, produced: int) -> CopyState:
    """The copy state after a round (``produced``: output tokens before it).

    A copy mostly rejected pauses copies (doubling the pause); one accepted whole resets the
    pause. A run of copies: when a draft-free proposer's whole draft was accepted, filled the
    k asked for, and the round beat plain decoding, k doubles for the next round (copied text
    is accepted in long exact runs, then breaks, and a long batch can cost less per token than
    a short one). A round of forced tokens only leaves the run as it was."""
    off_until, pause = state.off_until, state.pause
    if r.copy and r.accepted < r.drafted // 2:
        off_until, pause = produced + pause, pause * 2
    elif r.copy and r.accepted == r.drafted:
        pause = COPY_PAUSE
    run_k = state.run_k
    if r.drafted or not r.lead:
        k = max(r.k, r.drafted)
        full = r.drafted > 0 and r.accepted == r.drafted == k and not r.in_drafter
        paid = r.t_plain is not None and (r.accepted + 1) * r.t_plain > r.elapsed
        run_k = min(2 * k, knobs.max_draft_tokens) if full and paid else 0
    return CopyState(run_k=run_k, off_until=off_until, pause=pause)


def block_origins(
    block: Sequence[int], *, lead: int, accepted: int, drafted: bool
) -> list[tuple[TokenOrigin, list[int]]]:
    """A verified block split by origin: forced tokens accepted, draft tokens accepted, then
    the target's own token ("target" after a draft, "plain" for a plain step). Empty parts
    are kept; the caller skips them."""
    cut = min(lead, accepted)
    return [
        ("forced", list(block[:cut])),
        ("draft", list(block[cut:accepted])),
        ("target" if drafted else "plain", list(block[accepted:])),
    ]


def pipelined_draft_holds(
    drafted: int, accepted: int, next_token: int, proposed: Sequence[int]
) -> bool:
    """A draft made while the round verified assumed the whole round accepted; it serves the
    next round when that held and its first token (its guess of the target's token) did too."""
    return accepted == drafted and len(proposed) > 1 and proposed[0] == next_token


def batch_prices(
    verify_seconds: Callable[[int], float | None], live: int
) -> Callable[[int], float | None]:
    """The verify cost a draft-length controller should see for a round of width w when
    ``live`` runs share the engine's batch: the cost of the whole batch at total width
    ``live * w`` (every live run is assumed to draft as this one does: they run the same
    controller on the same costs). ``verify_seconds`` is the route's cost by total batch
    width (:class:`~tightwad.spec.verify_cost.VerifyCosts`). Drafting k then costs
    ``verify(live * (k + 1)) - verify(live)`` over a plain batch step: next to nothing
    where the batch is memory-bound (a GPU below its occupancy), about k plain steps where
    it is compute-bound, so the controller turns drafting off under load and back on when
    the load falls. One live run (or none): ``verify_seconds`` itself, the prices of today."""
    if live <= 1:
        return verify_seconds
    return lambda width: verify_seconds(live * width)


def priced_load(live: int, batches: bool) -> int:
    """The load a round's verify is priced at (:func:`batch_prices`): the ``live`` runs of the
    route where the target decodes their steps in one forward pass (its ``batch.enabled``),
    else 1: an engine that does not batch runs their steps in turn, so a round costs its own
    width and the other runs' drafts never widen it (nor does drafting widen theirs)."""
    return max(1, live) if batches else 1
