"""The speculative loop: a route's :class:`~tightwad.gateway.types.Backend` over Engine sessions.

One request = one target session (+ one draft session when a model drafts). Each round:

1. the draft-length controller picks k from this request's measured goodput (0 = plain step);
2. a proposer drafts up to k tokens: n-gram lookup, the request's predicted output, a draft
   model (greedy: one-hot; sampled: with its sparse q), or hybrid (n-gram when it has a long
   match, else the model);
3. the target verifies them in one forward pass and answers accepted n + its next token;
4. the accepted block goes through the :class:`~tightwad.spec.stops.OutputGuard` token by token
   (EOG, max_tokens, stop strings), so nothing after a stop is emitted or counted.

Every emitted token is one the target itself chose. A draft engine that fails or stalls is
dropped for the rest of the request and decoding goes on (identical output); a target failure
ends the request with :class:`~tightwad.errors.UnavailableError`.

With ``pipeline``, while the target verifies round n the drafter already drafts round n+1
assuming all of round n is accepted (its first token is its guess of the target's next token);
a rejection discards that work.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from tightwad.config import DRAFT_MODES, DraftMode
from tightwad.errors import (
    ConfigError,
    ContextLengthError,
    TightwadError,
    UnavailableError,
)
from tightwad.gateway.engine_client import (
    DraftProposal,
    EngineClient,
    Generated,
    GenerateEnd,
    RemoteEngineInfo,
    RemoteSession,
    Verified,
)
from tightwad.gateway.text_draft import TextDrafter, text_proposer
from tightwad.gateway.types import (
    Finished,
    GenerationEvent,
    GenerationRequest,
    GenerationStats,
    LogprobEntry,
    RouteInfo,
    TextDelta,
    TokenOrigin,
    Usage,
)
from tightwad.logs import get_logger
from tightwad.spec.draft_control import DraftControlConfig, DraftLengthController
from tightwad.spec.proposers import NGramProposer, PredictionProposer
from tightwad.spec.sampling import SamplingConfig, SparseDist
from tightwad.spec.stops import OutputGuard
from tightwad.spec.verify_cost import CALIBRATION_WIDTHS, VerifyCosts

__all__ = ["RouteSpec", "SpecBackend"]

log = get_logger("tightwad.gateway.loop")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """How one route (an OpenAI ``model`` name) is served."""

    name: str
    target: EngineClient
    draft_mode: DraftMode | str = DraftMode.NGRAM
    drafters: tuple[EngineClient, ...] = ()
    # Text-only drafters (Ollama): their text is tokenized by the target (text_draft.py).
    text_drafters: tuple[TextDrafter, ...] = ()
    max_draft_tokens: int = 64
    pipeline: bool = False
    hybrid_min_match: int = 3
    ngram_max_n: int = 12
    # An n-gram match at least this long is a copy (an edit, a quoted block): draft
    # copy_start_tokens at once (capped by max_draft_tokens), doubling while copies are
    # accepted whole, instead of ramping up from the controller's k (llama.cpp's ngram-simple:
    # a 12-token match drafts 48). On a CPU a wide verify costs less per token than a narrow
    # one, so a copy starts wide, cut to the width the route measured as cheapest per token
    # (VerifyCosts: on the 2-core test machine 64 tokens cost 13.8 ms each, 49 cost 15.7).
    copy_min_match: int = 12
    copy_start_tokens: int = 64
    # Predicted outputs start narrower: an edit inside the prediction is met early, and a
    # wide draft that breaks there wastes its whole verify (draft-free runs of 2026-11-26:
    # 1.55-1.60x the target alone starting at 48, 1.67-1.71x starting at 16).
    prediction_start_tokens: int = 16
    # ... and only once the output has followed the prediction for this many tokens.
    prediction_min_run: int = 2
    # Plain steps between drafts: queue the next plain step before looking at this one's
    # token, so the engine never idles for a round trip (drafting starts one token later).
    plain_lookahead: bool = True
    # Proposers that look at every token (n-gram, prediction) decode the tokens that certainly
    # cannot start a draft as one Generate stream (a copy needs its match to grow to
    # copy_min_match first, at most one token per token).
    plain_chunks: bool = True
    draft_timeout_s: float = 5.0
    draft_min_confidence: float = 0.0
    draft_top_m: int = 16
    target_timeout_s: float = 120.0
    drafter_cooldown_s: float = 30.0
    control: DraftControlConfig = field(default_factory=DraftControlConfig)
    # False: always draft max_draft_tokens (no goodput control), e.g. to test a drafter.
    adaptive: bool = True
    # Model drafting: measure at start what a plain step, a wide verify and a draft step cost,
    # so the first request already knows whether drafting can pay on this hardware.
    calibrate: bool = True


@dataclass
class _Counters:
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    plain_steps: int = 0
    draft_ms: float = 0.0
    verify_ms: float = 0.0
    draft_failures: int = 0
    by_position: list[int] = field(default_factory=list)
    forced_drafted: int = 0
    forced_accepted: int = 0

    def record_round(self, drafted: int, accepted: int, forced: int = 0) -> None:
        """One target step: ``drafted`` tokens verified (the first ``forced`` of them forced by
        the grammar), ``accepted`` of them accepted."""
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


class _FixedK:
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
class _Control:
    """The request's controller, and the route's one that learns from it too."""

    own: DraftLengthController | _FixedK
    shared: DraftLengthController | None

    def next_k(self) -> int:
        return self.own.next_k()

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


@dataclass
class _DrafterHealth:
    client: EngineClient
    failed_at: float | None = None
    draft_ms_per_token: float | None = None


class SpecBackend:
    """A route served by a target engine with an optional drafting strategy."""

    def __init__(self, spec: RouteSpec) -> None:
        if spec.draft_mode not in DRAFT_MODES:
            raise ConfigError(
                f"routes.{spec.name}.draft", f"unknown draft mode '{spec.draft_mode}'"
            )
        if spec.draft_mode in ("model", "hybrid") and not (spec.drafters or spec.text_drafters):
            raise ConfigError(
                f"routes.{spec.name}.draft", f"draft mode '{spec.draft_mode}' needs a draft model"
            )
        self.spec = spec
        self._info: RemoteEngineInfo | None = None
        self._pieces: list[bytes] = []
        self._drafters = [_DrafterHealth(c) for c in spec.drafters]
        # Draft-length controllers shared by the route's requests, per proposer: what drafting
        # costs and how often it is accepted is learned once, and the probing schedule carries
        # over, so a short request does not pay to re-discover that drafting loses.
        self._controllers: dict[str, DraftLengthController] = {}
        # What a Verify costs per batch width on the target (calibrated at start, then kept
        # current by every round); empty = not measured, drafts are sent as proposed.
        self.costs = VerifyCosts()
        self._ready = False
        self._error = ""

    # -- start-up -----------------------------------------------------------------------

    async def start(self) -> None:
        """Read the target's facts and vocabulary; refuse drafters of another vocabulary."""
        info = await self.spec.target.info()
        if not info.can_verify and self.spec.draft_mode != "none":
            raise ConfigError(
                f"routes.{self.spec.name}.target",
                f"engine {info.model} ({info.kind}) cannot verify drafts in one pass; "
                "use draft: none for it",
            )
        pieces, _special, fingerprint = await self.spec.target.vocabulary()
        for d in self._drafters:
            dinfo = await d.client.info()
            if dinfo.vocab_fingerprint != fingerprint:
                raise ConfigError(
                    f"routes.{self.spec.name}.draft_model",
                    f"draft {dinfo.model} does not share the target's vocabulary "
                    f"(fingerprint {dinfo.vocab_fingerprint[:12]} vs {fingerprint[:12]})",
                )
            if not dinfo.can_draft:
                raise ConfigError(
                    f"routes.{self.spec.name}.draft_model", f"engine {dinfo.model} cannot draft"
                )
        self._info = info
        self._pieces = pieces
        if self.spec.draft_mode != "none" and self.spec.adaptive and self.spec.calibrate:
            await self._calibrate()
        self._ready = True
        log.info(
            "route_ready",
            route=self.spec.name,
            target=info.model,
            draft_mode=self.spec.draft_mode,
            drafters=len(self._drafters),
        )

    async def _calibrate(self) -> None:
        """Measure what the target's Verify costs at a few batch widths (the route's
        :class:`VerifyCosts`: copy drafts are cut to the cheapest width per token), and for a
        draft model what a draft step costs, to seed the route's model-drafting controller.
        Where even near-perfect acceptance could not pay (e.g. a CPU, where verifying 8 tokens
        costs several plain steps), model-drafting requests then start plain and never pay for
        the drafter's prefill; the rare probe re-measures. A failure here is only logged: the
        route then drafts at the lengths it is asked to."""
        text = "def fibonacci(n):\n    if n < 2:\n        return n\n" * 4
        try:
            tokens = await self.spec.target.tokenize(text, add_special=True, parse_special=False)
        except (TightwadError, TimeoutError) as exc:
            log.warning("route_calibration_failed", route=self.spec.name, reason=str(exc))
            return
        target = self.spec.target.session(timeout_s=self.spec.target_timeout_s)
        model = self.spec.draft_mode == "model" and bool(self._drafters)
        draft = (
            self._drafters[0].client.session(timeout_s=self.spec.target_timeout_s)
            if model
            else None
        )
        per_draft: float | None = None
        costs = VerifyCosts()
        t_plain = 0.0
        try:
            await target.open(tokens, SamplingConfig())
            used = len(tokens)
            steps = []
            for _ in range(3):
                t0 = time.perf_counter()
                res = await target.verify([])
                steps.append(time.perf_counter() - t0)
                costs.observe(1, res.verify_ms / 1000.0)
                used += 1
            t_plain = sorted(steps)[1]
            room = self._info.n_ctx if self._info is not None else 0
            # A junk draft (one repeated token) is rejected at once: the session grows by one
            # token per Verify, whatever its width.
            junk = tokens[1]
            for width in CALIBRATION_WIDTHS[1:]:
                if width - 1 > self.spec.max_draft_tokens or used + width >= room:
                    break
                res = await target.verify([junk] * (width - 1))
                costs.observe(width, res.verify_ms / 1000.0)
                used += 1 + res.accepted
            if draft is not None:
                await draft.open(tokens, SamplingConfig())
                t0 = time.perf_counter()
                prop = await draft.draft(8, keep=len(tokens))
                per_draft = (time.perf_counter() - t0) / max(1, len(prop.tokens))
        except (TightwadError, TimeoutError) as exc:
            log.warning("route_calibration_failed", route=self.spec.name, reason=str(exc))
            return
        finally:
            for sess in (draft, target):
                if sess is None:
                    continue
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(sess.close(), 5.0)
        self.costs = costs
        log.info(
            "route_calibrated",
            route=self.spec.name,
            plain_ms=round(t_plain * 1000.0, 2),
            verify_ms_by_width={w: round(v * 1000.0, 1) for w, v in costs.measured().items()},
            copy_drafts=costs.copy_drafts(self.spec.max_draft_tokens),
        )
        if per_draft is None:
            return
        # The extra cost per drafted token of a model round at the controller's usual widths.
        k = max(1, min(8, self.spec.max_draft_tokens, self.spec.control.k_max))
        wide = costs.seconds(k + 1) or 0.0
        verify_extra = max(0.0, wide - (costs.seconds(1) or 0.0)) / k
        # Pipelined drafting hides the draft step behind the verify of the round before.
        per_token = verify_extra if self.spec.pipeline else verify_extra + per_draft
        shared = self.controller_for("model")
        shared.seed(t_plain, per_token)
        shared.use_verify_costs(
            costs.seconds, draft_per_token=0.0 if self.spec.pipeline else per_draft
        )
        log.info(
            "route_calibrated_model",
            route=self.spec.name,
            verify_extra_ms_per_token=round(verify_extra * 1000.0, 2),
            draft_ms_per_token=round(per_draft * 1000.0, 2),
            drafting="off: cannot pay on this hardware" if shared.hopeless() else "on",
        )

    def _drafting_state(self) -> dict[str, object]:
        """What the route's controllers have learned (for the status page)."""
        out: dict[str, object] = {}
        for name, ctl in self._controllers.items():
            t, c = ctl.plain_step_seconds, ctl.per_token_cost
            out[name] = {
                "plain_step_ms": None if t is None else round(t * 1000.0, 3),
                "extra_ms_per_drafted_token": None if c is None else round(c * 1000.0, 3),
                "acceptance": round(ctl.acceptance, 4),
                "rounds_seen": ctl.rounds_seen,
                "can_pay": not ctl.hopeless(),
            }
        return out

    def info(self) -> RouteInfo:
        i = self._info
        return RouteInfo(
            name=self.spec.name,
            target=i.model if i else self.spec.target.model,
            draft_mode=self.spec.draft_mode,
            draft=", ".join(d.client.model or d.client.address for d in self._drafters) or None,
            ready=self._ready,
            n_ctx=i.n_ctx if i else 0,
            can_verify=i.can_verify if i else False,
            details={
                "target_address": self.spec.target.address,
                "pipeline": self.spec.pipeline,
                "max_draft_tokens": self.spec.max_draft_tokens,
                "drafters": [
                    {
                        "address": d.client.address,
                        "model": d.client.model,
                        "healthy": d.failed_at is None,
                        "draft_ms_per_token": d.draft_ms_per_token,
                    }
                    for d in self._drafters
                ],
                "error": self._error,
                "drafting": self._drafting_state(),
                # What a Verify of each batch width costs on the target (calibrated, then
                # kept current), and how many tokens a copy therefore drafts at most.
                "verify_ms_by_width": {
                    str(w): round(v * 1000.0, 2) for w, v in self.costs.measured().items()
                },
                "copy_drafts": self.costs.copy_drafts(self.spec.max_draft_tokens),
            },
        )

    # -- one request --------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        if self._info is None:
            raise UnavailableError(f"route {self.spec.name} is not ready")
        run = _Run(self, request)
        try:
            async for event in run.events():
                yield event
        finally:
            await run.cleanup()

    def controller_for(self, proposer: str) -> DraftLengthController:
        if proposer not in self._controllers:
            ctl = DraftLengthController(self.spec.control)
            if self.costs:
                ctl.use_verify_costs(self.costs.seconds)
            self._controllers[proposer] = ctl
        return self._controllers[proposer]

    def _pick_drafter(self) -> _DrafterHealth | None:
        now = time.monotonic()
        healthy = [
            d
            for d in self._drafters
            if d.failed_at is None or now - d.failed_at > self.spec.drafter_cooldown_s
        ]
        if not healthy:
            return None
        return min(healthy, key=lambda d: d.draft_ms_per_token or 0.0)


class _Run:
    """The state of one request's loop."""

    def __init__(self, backend: SpecBackend, request: GenerationRequest) -> None:
        self.b = backend
        self.spec = backend.spec
        self.req = request
        assert backend._info is not None
        self.info = backend._info
        self.target: RemoteSession | None = None
        self.draft: RemoteSession | None = None
        self.drafter: _DrafterHealth | None = None
        self.c = _Counters()
        self.prompt: list[int] = []
        self.output: list[int] = []
        self.mode: str = self.spec.draft_mode
        self.ngram: NGramProposer | None = None
        self.prediction: PredictionProposer | None = None
        self.pre: asyncio.Task[DraftProposal] | None = None
        self.opening: asyncio.Task[None] | None = None
        # Model drafting: the drafter opens (prefills) the first time a round wants a draft.
        self.wants_drafter = False
        # Draft length forced by a run of fully accepted copy drafts (0 = none).
        self.run_k = 0
        # Copy drafts (long n-gram matches) are off until this many tokens are out, after one
        # that was mostly rejected; each further failure doubles the pause (code repeats
        # boilerplate that matches long and continues differently; edits copy for real).
        self.copy_off_until = 0
        self.copy_pause = 16
        # A plain Verify queued on the target whose result the next round takes.
        self.ahead = False
        # Leading tokens of the draft session known to equal prompt + output.
        self.draft_valid = 0
        # Whether this round's drafts are in the draft session (model or pipelined drafts).
        self.from_model = False
        # Whether _propose cut this round's draft to a cheaper verify width.
        self.shaped = False
        self.prefill_ms = 0.0
        self.cached = 0
        self.done = False

    async def _prompt_tokens(self) -> list[int]:
        r, t = self.req, self.spec.target
        if r.prompt_tokens is not None:
            return list(r.prompt_tokens)
        if r.messages is not None:
            return await t.render_chat([(m.role, m.content, m.name) for m in r.messages])
        return await t.tokenize(r.prompt or "", add_special=True, parse_special=True)

    async def events(self) -> AsyncGenerator[GenerationEvent, None]:
        r = self.req
        self.prompt = await self._target_call(self._prompt_tokens())
        n_ctx = self.info.n_ctx
        if len(self.prompt) >= n_ctx:
            raise ContextLengthError(
                f"the prompt is {len(self.prompt)} tokens; model {self.spec.name} has a context "
                f"of {n_ctx} tokens",
                param="messages" if r.messages is not None else "prompt",
            )
        budget = n_ctx - len(self.prompt)
        max_tokens = min(r.max_tokens, budget) if r.max_tokens is not None else budget
        guard = OutputGuard(
            self.b._pieces,
            stop_strings=r.stop,
            eog_token_ids=self.info.eog_token_ids,
            max_tokens=max_tokens,
        )
        # No deadline on the whole stream: a long generation on a busy host is legitimate; the
        # request deadline (gateway request_timeout_s) bounds it and each call has its own.
        self.target = self.spec.target.session(timeout_s=None)
        opened = await self._target_call(
            self.target.open(
                self.prompt,
                r.sampling,
                seed=r.seed,
                top_logprobs=r.top_logprobs,
                logprobs=r.logprobs,
                grammar=r.grammar,
            )
        )
        self.prefill_ms, self.cached = opened.prefill_ms, opened.cached_tokens
        await self._setup_drafting()
        if r.echo:
            echo = b"".join(self.b._pieces[t] for t in self.prompt).decode("utf-8", "replace")
            yield TextDelta(text=echo)
        control = self._controller()
        drafts: list[int] = []
        q: list[SparseDist] | None = None
        # Tokens the grammar forces next: the next round's draft, at no drafting cost.
        forced: tuple[int, ...] = ()
        grammar_done = False
        while not guard.finished and not grammar_done:
            room = n_ctx - len(self.prompt) - len(self.output)
            if room <= 0:
                break
            # Tokens a round may still emit: draft no more than the budget can use.
            left = room if guard.max_tokens is None else min(room, guard.max_tokens - guard.count)
            t0 = time.perf_counter()
            k, copy, t_draft, lead = 0, False, 0.0, 0
            ngram_seen = len(self.ngram.tokens) if self.ngram is not None else 0
            if self.ahead:  # the plain step queued last round
                self.ahead = False
                res = await self._target_call(self.target.read_verified())
            else:
                stretch = 0 if (drafts or forced) else self._plain_stretch(control, room, guard)
                if stretch > 1:
                    async for item in self._plain_run(stretch, guard, control):
                        if isinstance(item, GenerateEnd):
                            forced, grammar_done = item.forced, item.grammar_done
                        else:
                            yield item
                    continue
                # Copy runs apply once a plain step has been measured (the goodput check
                # needs it).
                run_k = self.run_k if control.plain_step_seconds() is not None else 0
                k = min(max(control.next_k(), run_k), self.spec.max_draft_tokens, left - 1)
                if k > 0 and self.wants_drafter and self.opening is None:
                    self.opening = asyncio.create_task(self._open_drafter())
                if forced:
                    # Forced tokens lead the draft (a pipelined guess gives way to them); the
                    # route's proposer continues after them where k leaves room.
                    head = list(forced[: max(0, min(left - 1, self.spec.max_draft_tokens))])
                    lead, forced = len(head), ()
                    self.from_model = False
                    k = max(0, min(k, self.spec.max_draft_tokens - lead, left - 1 - lead))
                    rest: list[int] = []
                    rest_q: list[SparseDist] | None = None
                    if self.ngram is not None:
                        self.ngram.extend(head)
                    if k > 0 or self.ngram is not None:
                        self.shaped = False
                        rest, rest_q, copy = await self._propose(k, left - 1 - lead, head)
                        if self.shaped:
                            k = len(rest)
                    drafts = [*head, *rest]
                    q = [*(SparseDist.one_hot(t) for t in head), *rest_q] if rest_q else None
                elif not drafts:
                    self.from_model = False
                    if k > 0 or self.ngram is not None:
                        self.shaped = False
                        drafts, q, copy = await self._propose(k, left - 1)
                        if self.shaped:
                            k = len(drafts)
                drafts, q = drafts[: max(0, left - 1)], (q[: max(0, left - 1)] if q else None)
                t_draft = time.perf_counter() - t0
                self._start_pipeline(drafts)
                res = await self._target_call(self._round(drafts, q, left))
            elapsed = time.perf_counter() - t0
            self.c.draft_ms += t_draft * 1000.0
            self.c.verify_ms += res.verify_ms
            self.c.record_round(len(drafts), res.accepted, lead)
            if self.b.costs:
                self.b.costs.observe(len(drafts) + 1, res.verify_ms / 1000.0)
            # The controller learns from the proposer's part of the draft only: forced tokens
            # cost no drafting and are always accepted.
            own, own_acc = drafts[lead:], max(0, res.accepted - lead)
            if own:
                control.record(k, len(own), own_acc, elapsed, t_draft)
            elif not lead:
                control.record_plain(elapsed)
            if copy and own_acc < len(own) // 2:
                self.copy_off_until = len(self.output) + self.copy_pause
                self.copy_pause *= 2
            elif copy and own_acc == len(own):
                self.copy_pause = 16
            if own or not lead:
                self._update_run_k(max(k, len(own)), own, own_acc, elapsed, control)
            block = [*drafts[: res.accepted], res.next_token]
            before = len(self.output)
            self.output.extend(block)
            if self.ngram is not None:
                if lead:  # the forced tokens were indexed before the lookup
                    self.ngram.sync([*self.ngram.tokens[:ngram_seen], *block])
                else:
                    self.ngram.extend(block)
            round_no = self.c.rounds + self.c.plain_steps
            cut = min(lead, res.accepted)
            parts: list[tuple[TokenOrigin, list[int]]] = [
                ("forced", block[:cut]),
                ("draft", block[cut : res.accepted]),
                ("target" if drafts else "plain", block[res.accepted :]),
            ]
            offset, kept_all = 0, 0
            for origin, toks in parts:
                if not toks:
                    continue
                out = guard.push_block(toks)
                kept_all += out.kept
                if out.text or out.kept:
                    yield TextDelta(
                        text=out.text,
                        token_ids=tuple(toks[: out.kept]),
                        logprobs=self._logprobs(res, offset, out.kept),
                        origin=origin,
                        round=round_no,
                    )
                offset += len(toks)
            if res.grammar_done and kept_all == len(block):
                grammar_done = True  # the output is complete, even at max_tokens
            if guard.finished or grammar_done:
                break
            # A plain step queued behind this one already took the first forced token.
            forced = () if self.ahead else res.forced
            drafts, q = await self._after_round(drafts, res, before)
            if forced:
                drafts, q = [], None
        tail = guard.finish()
        if tail:
            yield TextDelta(text=tail, round=self.c.rounds + self.c.plain_steps)
        self.done = True
        yield Finished(
            finish_reason="stop" if grammar_done else (guard.finish_reason or "length"),
            usage=Usage(prompt_tokens=len(self.prompt), completion_tokens=guard.count),
            stats=self._stats(),
        )

    async def _round(self, drafts: list[int], q: list[SparseDist] | None, left: int) -> Verified:
        """Send this round's Verify; a plain one also queues the next plain step (lookahead)
        when the budget leaves room for it, so the engine decodes back to back."""
        assert self.target is not None
        await self.target.send_verify(drafts, q)
        if not drafts and self.spec.plain_lookahead and left >= 3:
            await self.target.send_verify()
            self.ahead = True
        return await self.target.read_verified()

    def _certainly_plain(self, control: _Control) -> int:
        """How many of the next rounds are certainly plain steps for a proposer that looks at
        every token (0 = the next round may draft). A suffix match grows by at most one token
        per token, so a draft that needs a match of n tokens (a copy: ``copy_min_match``; a
        short n-gram draft while the controller wants k > 0: the n-gram's ``min_n``) is at
        least n minus the current match away; likewise a prediction's run. With k = 0 the
        controller's next probe, and the end of a copy pause, bound it too."""
        if not self.spec.plain_lookahead:
            return 0
        k = control.next_k()
        if k > 0 and (self.draft is not None or self.wants_drafter or self.text_draft is not None):
            return 0
        copies_on = len(self.output) >= self.copy_off_until
        limits = [] if k > 0 else [control.plain_steps_ahead() or 1]
        if k == 0 and not copies_on:
            limits.append(self.copy_off_until - len(self.output))
        if self.prediction is not None:
            run = self.prediction.sync(self.output)
            if copies_on:
                limits.append(self.spec.copy_min_match - run)
            if k > 0:
                limits.append(self.spec.prediction_min_run - run)
        if self.ngram is not None:
            match = self.ngram.lookup(None, 1).match_length
            short = self.ngram.min_n if self.mode == "ngram" else self.spec.hybrid_min_match
            if copies_on:
                limits.append(self.spec.copy_min_match - match)
            if k > 0:
                limits.append(short - match)
        return max(0, min(limits)) if limits else 0

    def _plain_stretch(self, control: _Control, room: int, guard: OutputGuard) -> int:
        """How many tokens to decode as one Generate stream (no round trip per token): all of
        them without drafting; for a draft model, the plain steps the controller has already
        decided on; for proposers that look at every new token (n-gram, prediction), the
        tokens that certainly cannot start a draft (:meth:`_certainly_plain`)."""
        if self.pre is not None:
            return 0
        if self.ngram is not None or self.prediction is not None:
            ahead = self._certainly_plain(control) if self.spec.plain_chunks else 0
        elif self.mode == "none":
            ahead = room
        elif self.mode == "model" and self.spec.adaptive:
            ahead = control.plain_steps_ahead()
        else:
            return 0
        if guard.max_tokens is not None:
            ahead = min(ahead, guard.max_tokens - guard.count)
        return max(0, min(ahead, room))

    async def _plain_run(
        self, n: int, guard: OutputGuard, control: _Control
    ) -> AsyncGenerator[TextDelta | GenerateEnd, None]:
        """Decode ``n`` plain tokens as one stream; each still counts as a plain step. Ends
        with the stream's :class:`GenerateEnd` unless the output finished first."""
        assert self.target is not None
        gen = self.target.generate(n)
        async with contextlib.aclosing(gen):
            t_prev = time.perf_counter()
            while True:
                g: Generated | GenerateEnd | None = await self._target_call(anext(gen, None))
                if g is None:
                    return
                if isinstance(g, GenerateEnd):
                    yield g
                    return
                now = time.perf_counter()
                step, t_prev = max(now - t_prev, 1e-6), now
                control.record_plain(step)
                self.c.record_round(0, 0)
                self.c.verify_ms += step * 1000.0
                res = Verified(
                    accepted=0,
                    next_token=g.token,
                    logprobs=(g.logprob,) if g.logprob is not None else (),
                    verify_ms=step * 1000.0,
                )
                self.output.append(g.token)
                if self.ngram is not None:
                    self.ngram.extend([g.token])
                out = guard.push_block([g.token])
                if out.text or out.kept:
                    yield TextDelta(
                        text=out.text,
                        token_ids=(g.token,) if out.kept else (),
                        logprobs=self._logprobs(res, 0, out.kept),
                        origin="plain",
                        round=self.c.rounds + self.c.plain_steps,
                    )
                if guard.finished:
                    return  # the session is still streaming: cleanup cancels the rest

    def _update_run_k(
        self, k: int, drafts: list[int], accepted: int, elapsed: float, control: _Control
    ) -> None:
        """Copy runs: when a draft-free proposer's whole draft was accepted, filled the k asked
        for, and the round beat plain decoding, double k for the next round. Acceptance of
        copied text is not geometric (long exact runs, then a break), and on a CPU a long
        batch costs much less per token than a short one, so edits need long drafts to pay."""
        t_plain = control.plain_step_seconds()
        full = bool(drafts) and accepted == len(drafts) == k and not self.from_model
        paid = t_plain is not None and (accepted + 1) * t_plain > elapsed
        self.run_k = min(2 * k, self.spec.max_draft_tokens) if full and paid else 0

    def _controller(self) -> _Control:
        """This request's controller: its own acceptance (n-gram and predicted-output matches
        are the request's), seeded with the costs the route measured; for a draft model the
        route's acceptance carries over too, so a losing drafter stays off across requests
        (with occasional probes). Every round also teaches the route's controller."""
        if not self.spec.adaptive:
            return _Control(_FixedK(self.spec.max_draft_tokens), None)
        proposer = "prediction" if self.prediction is not None else self.spec.draft_mode
        shared = self.b.controller_for(proposer)
        own = DraftLengthController(self.spec.control)
        carry = proposer in ("model", "hybrid") and shared.rounds_seen > 0
        own.seed(
            shared.plain_step_seconds,
            shared.per_token_cost,
            acceptance=shared.acceptance if carry else None,
        )
        if self.b.costs:
            own.use_verify_costs(self.b.costs.seconds, draft_per_token=shared.draft_per_token)
        return _Control(own, shared)

    async def _target_call(self, coro: Awaitable[T]) -> T:
        """Await a target call; any failure becomes a clear UnavailableError (or passes on a
        request error such as a context overflow)."""
        try:
            return await asyncio.wait_for(coro, self.spec.target_timeout_s)
        except TimeoutError as exc:
            raise UnavailableError(
                f"target model of route {self.spec.name} did not answer within "
                f"{self.spec.target_timeout_s:.0f} s"
            ) from exc
        except (ContextLengthError, ConfigError):
            raise
        except TightwadError as exc:
            if exc.http_status < 500 and exc.http_status != 429:
                raise
            raise UnavailableError(
                f"target model of route {self.spec.name} failed: {exc.message}"
            ) from exc

    # -- drafting -----------------------------------------------------------------------

    async def _setup_drafting(self) -> None:
        mode = self.spec.draft_mode
        if self.req.prediction and mode != "none":
            toks = await self.spec.target.tokenize(
                self.req.prediction, add_special=False, parse_special=False
            )
            self.prediction = PredictionProposer(toks)
            # The caller says the output is mostly this text: start with copy-length drafts
            # that double while accepted (a wrong guess costs one wide verify; the run logic
            # then falls back).
            self.run_k = min(self.spec.prediction_start_tokens, self.spec.max_draft_tokens)
            # Where the output has left the prediction, n-gram lookups over the prediction and
            # the prompt (which usually quotes the original) find the way back. The prediction
            # is indexed first: lookups match the end of the sequence, the committed tokens.
            self.ngram = NGramProposer(min_n=2, max_n=self.spec.ngram_max_n)
            self.ngram.extend(toks)
        if mode in ("ngram", "hybrid") and self.ngram is None:
            # A 1-token suffix match proposes mostly junk that only costs verify width.
            self.ngram = NGramProposer(min_n=2, max_n=self.spec.ngram_max_n)
        if self.ngram is not None:
            self.ngram.extend(self.prompt)
        # Text drafters serve when no Engine drafter (same vocabulary, token level) is healthy.
        self.text_draft = None
        if mode in ("model", "hybrid") and self.b._pick_drafter() is None:
            self.text_draft = text_proposer(
                self.spec.text_drafters,
                target=self.spec.target,
                pieces=self.b._pieces,
                request=self.req,
                prompt=self.prompt,
                bos_token_id=self.info.bos_token_id,
                timeout_s=self.spec.draft_timeout_s,
                cooldown_s=self.spec.drafter_cooldown_s,
                route=self.spec.name,
            )
        if mode in ("model", "hybrid") and self.text_draft is None:
            # The drafter prefills in the background once a round first wants a draft: the
            # target never waits for it, rounds use it once it is ready (its first draft catches
            # up with what was committed), and a route whose drafting cannot pay never pays
            # for the prefill (it would compete with the target on a shared host).
            self.wants_drafter = True
        self.mode = mode

    async def _open_drafter(self) -> None:
        d = self.b._pick_drafter()
        if d is None:
            self.c.draft_failures += 1
            return
        self.drafter = d
        sess = d.client.session(timeout_s=None)
        # A seeded request drafts greedily (one-hot drafts, sample-and-match): the target then
        # draws one uniform per emitted token, exactly as plain decoding does, so the output is
        # the same with or without speculation. Unseeded sampled requests draft by sampling
        # and are verified by rejection sampling (higher acceptance, same distribution).
        seeded = self.req.seed is not None
        sampling = SamplingConfig() if seeded else self.req.sampling
        try:
            await asyncio.wait_for(sess.open(self.prompt, sampling), self.spec.target_timeout_s)
        except (TightwadError, TimeoutError) as exc:
            sess.abort()
            self._drafter_failed(exc)
            return
        except BaseException:
            sess.abort()
            raise
        self.draft = sess
        self.draft_valid = len(self.prompt)

    def _drafter_failed(self, exc: BaseException) -> None:
        self.c.draft_failures += 1
        if self.drafter is not None:
            self.drafter.failed_at = time.monotonic()
            log.warning(
                "drafter_dropped",
                route=self.spec.name,
                drafter=self.drafter.client.address,
                reason=str(exc) or type(exc).__name__,
            )
        if self.draft is not None:
            self.draft.abort()
        self.draft = None
        self._cancel_pipeline()

    async def _propose(
        self, k: int, room: int, head: Sequence[int] = ()
    ) -> tuple[list[int], list[SparseDist] | None, bool]:
        """Drafts for this round (k = 0: only a copy), their q, and whether it is a copy.
        ``head``: forced tokens that lead this round's draft; the drafts continue after them
        (the n-gram index already holds them; a prediction or a text drafter does not continue
        a forced draft)."""
        copy_ok = len(self.output) >= self.copy_off_until
        k_copy = min(max(k, self.spec.copy_start_tokens), self.spec.max_draft_tokens, room)
        if self.prediction is not None and not head:
            # The output has followed the prediction for a while: copy it as wide as a copy.
            pred = self.prediction
            pred.sync(self.output)
            copying = copy_ok and pred.run >= self.spec.copy_min_match
            # Otherwise guess only where the output has followed it for a few tokens: a
            # one-token re-alignment (e.g. the "\n" after an opening code fence) is weak
            # evidence for a wide guess.
            confirmed = pred.run >= self.spec.prediction_min_run
            got = pred.propose(self.output, k_copy if copying else k)
            if got and (copying or (k > 0 and confirmed)):
                return self._shape(got, room), None, copying
        if self.ngram is not None:
            match = self.ngram.lookup(None, max(k, k_copy))
            if match.match_length >= self.spec.copy_min_match and copy_ok:
                return self._shape(list(match.tokens), room), None, True
            long_enough = self.spec.draft_mode == "ngram" or (
                match.match_length >= self.spec.hybrid_min_match
            )
            if k > 0 and match.tokens and long_enough:
                return list(match.tokens[:k]), None, False
        if k <= 0:
            return [], None, False
        if self.text_draft is not None and not head:
            drafts = await self.text_draft.propose(self.output, k)
            if self.text_draft.dropped:
                self.c.draft_failures += 1
                self.text_draft = None
            return drafts, None, False
        if self.draft is not None:
            committed = [*self.prompt, *self.output, *head]
            keep = self.draft_valid
            drafts, q = await self._model_draft(k, keep=keep, append=committed[keep:])
            self.from_model = bool(drafts)
            return drafts, q, False
        return [], None, False

    def _shape(self, drafts: list[int], room: int) -> list[int]:
        """Cut a copy (or prediction) draft to the width the route measured as cheapest per
        token; where the request's budget limits the draft, to the cheapest way to its end.
        Sets ``shaped`` so the copy run counts the cut draft as whole."""
        n = self.b.costs.copy_drafts(len(drafts), budget_limited=len(drafts) >= room)
        self.shaped = n != len(drafts)
        return drafts[:n]

    async def _model_draft(
        self, k: int, *, keep: int, append: Sequence[int] = ()
    ) -> tuple[list[int], list[SparseDist] | None]:
        assert self.draft is not None
        t0 = time.perf_counter()
        try:
            prop = await asyncio.wait_for(
                self.draft.draft(
                    k,
                    keep=keep,
                    append=append,
                    min_confidence=self.spec.draft_min_confidence,
                    top_m=self.spec.draft_top_m,
                ),
                self.spec.draft_timeout_s,
            )
        except (TightwadError, TimeoutError) as exc:
            self._drafter_failed(exc)
            return [], None
        self.draft_valid = keep + len(append)
        if prop.tokens and self.drafter is not None:
            per = (time.perf_counter() - t0) * 1000.0 / len(prop.tokens)
            prev = self.drafter.draft_ms_per_token
            self.drafter.draft_ms_per_token = per if prev is None else 0.8 * prev + 0.2 * per
        return list(prop.tokens), list(prop.q) if prop.q is not None else None

    def _start_pipeline(self, drafts: list[int]) -> None:
        """Draft round n+1 while round n verifies, assuming round n is accepted whole."""
        if not (self.spec.pipeline and self.draft is not None and drafts and self.from_model):
            return
        keep = len(self.prompt) + len(self.output) + len(drafts)
        k = max(1, min(self.spec.max_draft_tokens, len(drafts)) + 1)
        draft = self.draft
        self.pre = asyncio.create_task(
            draft.draft(
                k,
                keep=keep,
                min_confidence=self.spec.draft_min_confidence,
                top_m=self.spec.draft_top_m,
            )
        )

    def _cancel_pipeline(self) -> None:
        if self.pre is not None:
            self.pre.cancel()
            self.pre = None

    async def _after_round(
        self, drafts: list[int], res: Verified, before: int
    ) -> tuple[list[int], list[SparseDist] | None]:
        """Track what of the draft session still matches the committed sequence; return the
        pipelined drafts for the next round when its guess of the target's token held."""
        base = len(self.prompt) + before
        if self.from_model:
            self.draft_valid = base + res.accepted
        if self.pre is None:
            return [], None
        pre, self.pre = self.pre, None
        try:
            prop = await asyncio.wait_for(pre, self.spec.draft_timeout_s)
        except (TightwadError, TimeoutError) as exc:
            self._drafter_failed(exc)
            return [], None
        if (
            res.accepted == len(drafts)
            and len(prop.tokens) > 1
            and prop.tokens[0] == res.next_token
        ):
            self.draft_valid = base + len(drafts) + 1
            q = list(prop.q[1:]) if prop.q is not None else None
            self.from_model = True
            return list(prop.tokens[1:]), q
        return [], None

    # -- results ------------------------------------------------------------------------

    def _logprobs(self, res: Verified, offset: int, kept: int) -> tuple[LogprobEntry, ...]:
        """Entries for the ``kept`` tokens of ``res``'s block from ``offset`` on."""
        if not (self.req.logprobs or self.req.top_logprobs) or not res.logprobs:
            return ()
        pieces = self.b._pieces
        out = []
        for lp in res.logprobs[offset : offset + kept]:
            raw = pieces[lp.token_id]
            out.append(
                LogprobEntry(
                    token=raw.decode("utf-8", "replace"),
                    token_bytes=raw,
                    logprob=lp.logprob,
                    top=tuple(
                        (
                            pieces[t.token_id].decode("utf-8", "replace"),
                            pieces[t.token_id],
                            t.logprob,
                        )
                        for t in lp.top
                    ),
                )
            )
        return tuple(out)

    def _stats(self) -> GenerationStats:
        c = self.c
        return GenerationStats(
            mode=self.mode,
            rounds=c.rounds,
            drafted=c.drafted,
            accepted=c.accepted,
            plain_steps=c.plain_steps,
            draft_ms=c.draft_ms,
            verify_ms=c.verify_ms,
            prefill_ms=self.prefill_ms,
            cached_prompt_tokens=self.cached,
            draft_failures=c.draft_failures,
            accepted_by_position=tuple(c.by_position),
            forced_drafted=c.forced_drafted,
            forced_accepted=c.forced_accepted,
        )

    async def cleanup(self) -> None:
        self._cancel_pipeline()
        if self.opening is not None:
            if not self.opening.done():
                self.opening.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.opening  # also retrieves an exception the drafter's open raised
        for sess in (self.draft, self.target):
            if sess is None:
                continue
            if self.done:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(sess.close(), 2.0)
            else:
                sess.abort()
