"""The loop's round policy as decision tables: pure functions, no engine, no gRPC, no clock."""

from __future__ import annotations

import pytest

from tightwad.gateway.loop.policy import (
    COPY_PAUSE,
    CopyState,
    Draft,
    Knobs,
    Outlook,
    RoundPlan,
    RoundResult,
    after_round,
    block_origins,
    certainly_plain,
    forced_head,
    free_draft,
    lead_with,
    pipelined_draft_holds,
    plain_stretch,
    plan_round,
    queue_lookahead,
    round_k,
    shape,
)
from tightwad.gateway.loop.route import RouteSpec
from tightwad.spec.proposers import NGramProposer, PredictionProposer
from tightwad.spec.sampling import SparseDist
from tightwad.spec.verify_cost import VerifyCosts

K = Knobs()  # the route defaults: max 64, copies from 12 tokens, 64 wide


def test_route_spec_knobs_are_its_settings() -> None:
    spec = RouteSpec(name="r", target=None, max_draft_tokens=9, copy_min_match=5)  # type: ignore[arg-type]
    assert spec.knobs == Knobs(draft_mode="ngram", max_draft_tokens=9, copy_min_match=5)
    assert RouteSpec(name="r", target=None).knobs == K  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("next_k", "run_k", "measured", "left", "want"),
    [
        (4, 0, True, 100, 4),  # the controller's k
        (4, 32, True, 100, 32),  # a copy run raises it
        (4, 32, False, 100, 4),  # ... once a plain step was measured
        (0, 0, True, 100, 0),  # plain step
        (70, 0, True, 100, 64),  # the route's maximum
        (8, 0, True, 5, 4),  # the budget: 5 tokens left, the target adds one
        (8, 0, True, 1, 0),
    ],
)
def test_round_k(next_k: int, run_k: int, measured: bool, left: int, want: int) -> None:
    assert round_k(K, next_k=next_k, run_k=run_k, plain_measured=measured, left=left) == want


@pytest.mark.parametrize(
    ("forced", "k", "left", "max_draft", "head", "k_after"),
    [
        ((7, 8, 9), 4, 100, 64, (7, 8, 9), 4),  # forced tokens lead, the proposer continues
        ((7, 8, 9), 4, 100, 5, (7, 8, 9), 2),  # within the route's maximum
        ((7, 8, 9), 4, 3, 64, (7, 8), 0),  # within the budget (2 drafts + the target's)
        ((7, 8, 9), 0, 100, 64, (7, 8, 9), 0),  # a plain round still drafts them for free
        ((7,), 4, 1, 64, (), 0),  # nothing fits: a plain step
    ],
)
def test_forced_head(
    forced: tuple[int, ...], k: int, left: int, max_draft: int, head: tuple[int, ...], k_after: int
) -> None:
    knobs = Knobs(max_draft_tokens=max_draft)
    assert forced_head(knobs, forced, k=k, left=left) == (head, k_after)


def _view(**kw: object) -> Outlook:
    base: dict[str, object] = {"produced": 100, "next_k": 0, "plain_ahead": 50}
    base.update(kw)
    return Outlook(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("knobs", "state", "view", "want"),
    [
        # n-gram, k = 0: a copy needs its match to grow from 3 to 12 tokens.
        (K, CopyState(), _view(ngram_match=3), 9),
        # ... and the controller's next probe bounds it.
        (K, CopyState(), _view(ngram_match=0, plain_ahead=5), 5),
        # plain_ahead 0 (a probe is due) still allows one plain step
        (K, CopyState(), _view(ngram_match=0, plain_ahead=0), 1),
        # a match already long enough: the next round may copy
        (K, CopyState(), _view(ngram_match=12), 0),
        # k > 0: a short n-gram draft needs min_n (2) tokens of match
        (K, CopyState(), _view(next_k=4, ngram_match=0), 2),
        # ... in hybrid mode hybrid_min_match (3)
        (Knobs(draft_mode="hybrid"), CopyState(), _view(next_k=4, ngram_match=1), 2),
        # ... but a draft model (or text drafter) may serve any round
        (K, CopyState(), _view(next_k=4, ngram_match=0, model_drafting=True), 0),
        # copies paused until 110: with k = 0 only the pause's end and the probe bound it
        (K, CopyState(off_until=110), _view(ngram_match=11), 10),
        # a prediction: its run must reach copy_min_match, or prediction_min_run with k > 0
        (K, CopyState(), _view(prediction_run=4), 8),
        (K, CopyState(), _view(next_k=2, prediction_run=0), 2),
        # no lookahead: never (each plain step is a round)
        (Knobs(plain_lookahead=False), CopyState(), _view(ngram_match=0), 0),
    ],
)
def test_certainly_plain(knobs: Knobs, state: CopyState, view: Outlook, want: int) -> None:
    assert certainly_plain(knobs, state, view) == want


@pytest.mark.parametrize(
    ("knobs", "view", "pipelined", "room", "budget", "want"),
    [
        (Knobs(draft_mode="none"), _view(), False, 500, 30, 30),  # no drafting: all of it
        (Knobs(draft_mode="none"), _view(), False, 20, None, 20),  # ... within the context
        (Knobs(draft_mode="model"), _view(plain_ahead=7), False, 500, None, 7),
        (Knobs(draft_mode="model", adaptive=False), _view(plain_ahead=7), False, 500, None, 0),
        (Knobs(draft_mode="model"), _view(plain_ahead=7), True, 500, None, 0),  # in flight
        (K, _view(ngram_match=3), False, 500, None, 9),
        (K, _view(ngram_match=3), False, 500, 4, 4),
        (Knobs(plain_chunks=False), _view(ngram_match=3), False, 500, None, 0),
    ],
)
def test_plain_stretch(
    knobs: Knobs, view: Outlook, pipelined: bool, room: int, budget: int | None, want: int
) -> None:
    got = plain_stretch(knobs, CopyState(), view, pipelined=pipelined, room=room, budget=budget)
    assert got == want


def _tiles() -> VerifyCosts:
    """A CPU-like curve: full tiles of 16 cost 8 ms a token, anything else 12 ms a token."""
    return VerifyCosts({w: (8.0 if w % 16 == 0 else 12.0) * w / 1000.0 for w in (1, 2, 16, 32, 48)})


def test_shape_cuts_a_copy_to_the_cheapest_width_per_token() -> None:
    tokens = list(range(1, 61))
    assert shape(VerifyCosts(), tokens, 100, copy=True) == Draft(tuple(tokens), copy=True)
    cut = shape(_tiles(), tokens, 100, copy=True)
    assert cut == Draft(tuple(tokens[:47]), copy=True, shaped=True)  # 48 wide
    # Limited by the budget, the cheapest way to the end (here: all of it at once).
    assert shape(_tiles(), tokens[:20], 20, copy=False) == Draft(tuple(tokens[:20]))


def _ngram(tokens: list[int]) -> NGramProposer:
    ng = NGramProposer(min_n=2, max_n=12)
    ng.extend(tokens)
    return ng


COPY_PROMPT = [*range(1, 61), *range(1, 13)]  # ends with 1..12, which follows 0: a 12-match
SHORT_PROMPT = [*range(1, 61), 200, 8, 9, 10]  # only 8, 9, 10 recurs


def test_free_draft_a_long_match_is_a_copy_as_wide_as_allowed() -> None:
    got = free_draft(
        K, CopyState(), VerifyCosts(), k=0, room=100, output=[], prediction=None,
        ngram=_ngram(COPY_PROMPT),
    )  # fmt: skip
    assert got == Draft(tuple(range(13, 61)) + tuple(range(1, 17)), copy=True)
    # The budget caps it.
    got = free_draft(
        K, CopyState(), VerifyCosts(), k=0, room=10, output=[], prediction=None,
        ngram=_ngram(COPY_PROMPT),
    )  # fmt: skip
    assert got == Draft(tuple(range(13, 23)), copy=True)


def test_free_draft_during_a_copy_pause_drafts_only_k() -> None:
    paused = CopyState(off_until=50)
    got = free_draft(
        K, paused, VerifyCosts(), k=3, room=100, output=[1] * 10, prediction=None,
        ngram=_ngram(COPY_PROMPT),
    )  # fmt: skip
    assert got == Draft((13, 14, 15))


@pytest.mark.parametrize(
    ("mode", "k", "want"),
    [
        ("ngram", 4, Draft((11, 12, 13, 14))),  # a short match drafts k
        ("ngram", 0, Draft()),  # k = 0 and no copy: a plain step
        ("hybrid", 4, Draft((11, 12, 13, 14))),  # 3 tokens is hybrid_min_match
    ],
)
def test_free_draft_short_matches(mode: str, k: int, want: Draft) -> None:
    knobs = Knobs(draft_mode=mode)
    got = free_draft(
        knobs, CopyState(), VerifyCosts(), k=k, room=100, output=[], prediction=None,
        ngram=_ngram(SHORT_PROMPT),
    )  # fmt: skip
    assert got == want


def test_free_draft_asks_the_drafter_when_no_match_serves() -> None:
    knobs = Knobs(draft_mode="hybrid", hybrid_min_match=4)  # the 3-token match is too short
    got = free_draft(
        knobs, CopyState(), VerifyCosts(), k=4, room=100, output=[], prediction=None,
        ngram=_ngram(SHORT_PROMPT),
    )  # fmt: skip
    assert got is None
    got = free_draft(
        Knobs(draft_mode="model"), CopyState(), VerifyCosts(), k=4, room=100, output=[],
        prediction=None, ngram=None,
    )  # fmt: skip
    assert got is None


def test_free_draft_follows_a_prediction() -> None:
    pred = list(range(100, 160))
    # Followed for 12 tokens: a copy, as wide as a copy.
    got = free_draft(
        K, CopyState(), VerifyCosts(), k=2, room=100, output=pred[:12],
        prediction=PredictionProposer(pred), ngram=None,
    )  # fmt: skip
    assert got == Draft(tuple(pred[12:60]), copy=True)
    # Followed for 3 tokens: k of it.
    got = free_draft(
        K, CopyState(), VerifyCosts(), k=2, room=100, output=pred[:3],
        prediction=PredictionProposer(pred), ngram=None,
    )  # fmt: skip
    assert got == Draft((103, 104))
    # Not confirmed yet (one token), k = 0, or after forced tokens: no prediction draft.
    for output, k, forced in ((pred[:1], 2, False), (pred[:3], 0, False), (pred[:3], 2, True)):
        got = free_draft(
            K, CopyState(), VerifyCosts(), k=k, room=100, output=output,
            prediction=PredictionProposer(pred), ngram=None, after_forced=forced,
        )  # fmt: skip
        assert got == (None if k else Draft())


def _round(**kw: object) -> RoundResult:
    base: dict[str, object] = {
        "k": 16,
        "drafted": 16,
        "accepted": 16,
        "elapsed": 0.1,
        "t_plain": 0.05,
    }
    base.update(kw)
    return RoundResult(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("state", "result", "want"),
    [
        # A whole copy that paid (17 tokens in 0.1 s vs 0.05 s each): the run doubles k.
        (CopyState(), _round(copy=True), CopyState(run_k=32)),
        (CopyState(run_k=32), _round(k=40, drafted=40, accepted=40, copy=True), CopyState(64)),
        # Not paid (slower than plain steps): no run.
        (CopyState(run_k=32), _round(elapsed=1.0, copy=True), CopyState()),
        # Plain step not measured: no run.
        (CopyState(), _round(t_plain=None), CopyState()),
        # Short of k (the proposer had fewer tokens): no run, unless shaped (k = its length).
        (CopyState(), _round(k=20), CopyState()),
        # A model's draft never starts a run.
        (CopyState(), _round(in_drafter=True), CopyState()),
        # A copy mostly rejected pauses copies from here (100 out) and doubles the pause.
        (CopyState(), _round(accepted=3, copy=True), CopyState(0, 100 + COPY_PAUSE, 32)),
        (CopyState(pause=64), _round(accepted=7, copy=True), CopyState(0, 164, 128)),
        # Half accepted: no pause, no run; a whole copy resets the pause.
        (CopyState(pause=64), _round(accepted=8, copy=True), CopyState(0, 0, 64)),
        (CopyState(pause=64, off_until=90), _round(copy=True), CopyState(32, 90, COPY_PAUSE)),
        # A round of forced tokens only leaves the run as it was.
        (CopyState(run_k=32), _round(k=0, drafted=0, accepted=0, lead=3), CopyState(run_k=32)),
        # A plain step ends a run.
        (CopyState(run_k=32), _round(k=0, drafted=0, accepted=0), CopyState()),
    ],
)
def test_after_round(state: CopyState, result: RoundResult, want: CopyState) -> None:
    assert after_round(K, state, result, produced=100) == want


def test_after_round_run_is_capped_by_the_route() -> None:
    got = after_round(Knobs(max_draft_tokens=24), CopyState(), _round(copy=True), produced=0)
    assert got.run_k == 24


@pytest.mark.parametrize(
    ("block", "lead", "accepted", "drafted", "want"),
    [
        ([5], 0, 0, False, [("forced", []), ("draft", []), ("plain", [5])]),
        ([1, 2, 9], 0, 2, True, [("forced", []), ("draft", [1, 2]), ("target", [9])]),
        ([7, 8, 1, 9], 2, 3, True, [("forced", [7, 8]), ("draft", [1]), ("target", [9])]),
        # The target rejected a forced token's follower: forced part only up to accepted.
        ([7, 9], 2, 1, True, [("forced", [7]), ("draft", []), ("target", [9])]),
    ],
)
def test_block_origins(
    block: list[int], lead: int, accepted: int, drafted: bool, want: list[object]
) -> None:
    assert block_origins(block, lead=lead, accepted=accepted, drafted=drafted) == want


@pytest.mark.parametrize(
    ("drafted", "accepted", "next_token", "proposed", "want"),
    [
        (4, 4, 9, [9, 10, 11], True),
        (4, 3, 9, [9, 10, 11], False),  # the round was not accepted whole
        (4, 4, 8, [9, 10, 11], False),  # the guess of the target's token was wrong
        (4, 4, 9, [9], False),  # nothing left after the guess
    ],
)
def test_pipelined_draft_holds(
    drafted: int, accepted: int, next_token: int, proposed: list[int], want: bool
) -> None:
    assert pipelined_draft_holds(drafted, accepted, next_token, proposed) is want


@pytest.mark.parametrize(
    ("knobs", "drafted", "left", "want"),
    [
        (K, 0, 3, True),
        (K, 0, 2, False),  # no room for the queued step
        (K, 4, 100, False),  # drafted rounds do not queue
        (Knobs(plain_lookahead=False), 0, 100, False),
    ],
)
def test_queue_lookahead(knobs: Knobs, drafted: int, left: int, want: bool) -> None:
    assert queue_lookahead(knobs, drafted, left) is want


def test_draft_cut_keeps_q_in_line() -> None:
    q = tuple(SparseDist.one_hot(t) for t in (1, 2, 3))
    d = Draft((1, 2, 3), q, in_drafter=True)
    assert d.cut(2) == Draft((1, 2), q[:2], in_drafter=True)
    assert d.cut(-1) == Draft((), (), in_drafter=True)
    assert len(Draft()) == 0 and not Draft()


@pytest.mark.parametrize(
    ("kw", "want"),
    [
        # The controller's k; the proposers are asked, the drafter should get ready.
        ({"next_k": 4}, RoundPlan(4, 99, propose=True, open_drafter=True)),
        # k = 0: only an n-gram index may still propose (a copy).
        ({"next_k": 0}, RoundPlan(0, 99)),
        ({"next_k": 0, "ngram": True}, RoundPlan(0, 99, propose=True)),
        # A pipelined draft serves.
        ({"next_k": 4, "pending": True}, RoundPlan(4, 99, reuse=True, open_drafter=True)),
        # Forced tokens lead, the proposers continue after them; a pending guess gives way.
        (
            {"next_k": 4, "forced": (7, 8), "pending": True},
            RoundPlan(4, 97, (7, 8), propose=True, open_drafter=True),
        ),
        ({"next_k": 0, "forced": (7, 8)}, RoundPlan(0, 97, (7, 8))),
        # A copy run raises k once a plain step was measured.
        ({"next_k": 4, "run_k": 32}, RoundPlan(32, 99, propose=True, open_drafter=True)),
        (
            {"next_k": 4, "run_k": 32, "measured": False},
            RoundPlan(4, 99, propose=True, open_drafter=True),
        ),
    ],
)
def test_plan_round(kw: dict[str, object], want: RoundPlan) -> None:
    args: dict[str, object] = {"left": 100, "measured": True, "run_k": 0}
    args.update(kw)
    state = CopyState(run_k=args.pop("run_k"))  # type: ignore[arg-type]
    measured = args.pop("measured")
    got = plan_round(K, state, plain_measured=measured, **args)  # type: ignore[arg-type]
    assert got == want


def test_lead_with_prepends_forced_tokens() -> None:
    q = (SparseDist.of([5, 6], [0.7, 0.3]),)
    got = lead_with((7, 8), Draft((5,), q, in_drafter=True))
    assert (got.tokens, got.in_drafter, got.q is not None) == ((7, 8, 5), True, True)
    assert got.q is not None
    assert [d.token_ids.tolist() for d in got.q] == [[7], [8], [5, 6]]
    assert [d.probs.tolist() for d in got.q] == [[1.0], [1.0], [0.7, 0.3]]
    assert lead_with((7,), Draft((5,), copy=True)) == Draft((7, 5), copy=True)
    assert lead_with((), Draft((5,))) == Draft((5,))
