"""The shell of one request's loop: the awaits, with every decision taken by :mod:`.policy`.

Owns :class:`RequestRun`. Per round it gathers the facts (budget, the controller's k, the
proposers' matches), asks the policy whether to decode a plain stretch or what to draft, sends
the Verify (or Generate), and pushes the accepted block through the
:class:`~tightwad.spec.stops.OutputGuard` token by token (EOG, max_tokens, stop strings), so
nothing after a stop is emitted or counted. Every emitted token is one the target chose; a
target failure ends the request with :class:`~tightwad.errors.UnavailableError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from tightwad.errors import ConfigError, ContextLengthError, TightwadError, UnavailableError
from tightwad.gateway.engine_client import Generated, GenerateEnd, RemoteSession, Verified
from tightwad.gateway.loop import policy
from tightwad.gateway.loop.control import Counters, FixedK, RequestControl, request_control
from tightwad.gateway.loop.drafting import Drafter, ModelDrafting, TextDrafting
from tightwad.gateway.loop.policy import CopyState, Draft, Outlook, RoundResult
from tightwad.gateway.text_draft import text_proposer
from tightwad.gateway.types import (
    Finished,
    GenerationEvent,
    GenerationRequest,
    GenerationStats,
    LogprobEntry,
    TextDelta,
    Usage,
)
from tightwad.spec.proposers import NGramProposer, PredictionProposer
from tightwad.spec.sampling import SamplingConfig
from tightwad.spec.stops import OutputGuard

if TYPE_CHECKING:
    from tightwad.gateway.loop.route import SpecBackend

__all__ = ["RequestRun"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Carry:
    """What a round hands the next: the drafts made for it while this one verified (pipelined
    model drafts), the tokens the grammar forces next (its draft, at no drafting cost), and
    whether a plain Verify is queued on the target whose result it takes. False when empty:
    then the next round may be a plain stretch."""

    pending: Draft = field(default_factory=Draft)
    forced: tuple[int, ...] = ()
    ahead: bool = False

    def __bool__(self) -> bool:
        return bool(self.pending or self.forced or self.ahead)


@dataclass(frozen=True, slots=True)
class _Sent:
    """A round sent and verified: its draft (``lead`` forced tokens first, the proposers
    asked for ``k``), the target's result, how long the drafting and the whole round took,
    and whether the next plain step is queued behind it."""

    draft: Draft
    res: Verified
    k: int = 0
    lead: int = 0
    t_draft: float = 0.0
    elapsed: float = 0.0
    ahead: bool = False


class RequestRun:
    """One request's loop over the route's target (and drafter) sessions."""

    def __init__(self, backend: SpecBackend, request: GenerationRequest) -> None:
        self.b = backend
        self.spec = backend.spec
        self.knobs = backend.spec.knobs
        self.req = request
        self.info = backend.target_info
        self.pieces = backend.pieces
        self.target: RemoteSession | None = None
        self.c = Counters()
        self.prompt: list[int] = []
        self.output: list[int] = []
        self.ngram: NGramProposer | None = None
        self.prediction: PredictionProposer | None = None
        # The proposer asked when no draft-free one serves (model and hybrid routes).
        self.drafter: Drafter | None = None
        self.copy = CopyState()
        self.prefill_ms = 0.0
        self.cached = 0
        self.done = False
        # Counted among the route's live runs (from events() until cleanup).
        self.live = False

    async def _prompt_tokens(self) -> list[int]:
        r, t = self.req, self.spec.target
        if r.prompt_tokens is not None:
            return list(r.prompt_tokens)
        if r.messages is not None:
            return await t.render_chat([(m.role, m.content, m.name) for m in r.messages])
        return await t.tokenize(r.prompt or "", add_special=True, parse_special=True)

    async def _open(self) -> OutputGuard:
        """Tokenize the prompt, check it fits, open the target session; the output's guard."""
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
            self.pieces,
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
        return guard

    async def events(self) -> AsyncGenerator[GenerationEvent, None]:
        """The request's events: its text as the target verifies it, then :class:`Finished`.
        Each round: the budget, a plain stretch where the policy says no round could draft,
        else one round sent (:meth:`_send_round`), taken into the output
        (:meth:`_take_round`) and handed on to the next (:meth:`_next_carry`)."""
        guard = await self._start()
        if self.req.echo:
            echo = b"".join(self.pieces[t] for t in self.prompt).decode("utf-8", "replace")
            yield TextDelta(text=echo)
        control = self._control()
        carry, grammar_done = _Carry(), False
        while not guard.finished and not grammar_done:
            room = self.info.n_ctx - len(self.prompt) - len(self.output)
            if room <= 0:
                break
            # Tokens a round may still emit: draft no more than the budget can use.
            left = room if guard.max_tokens is None else min(room, guard.max_tokens - guard.count)
            # The batch this round joins: the controller prices its verify at that width
            # (alone where the target does not batch: the runs then take turns).
            control.observe_load(self.b.priced_load)
            t0 = time.perf_counter()
            ngram_seen = len(self.ngram.tokens) if self.ngram is not None else 0
            stretch = 0 if carry else self._stretch(control, room, guard)
            if stretch > 1:
                end: GenerateEnd | None = None
                async for item in self._plain_run(stretch, guard, control):
                    if isinstance(item, GenerateEnd):
                        end = item
                    else:
                        yield item
                if end is not None:
                    carry, grammar_done = _Carry(forced=end.forced), end.grammar_done
                continue
            sent = await self._send_round(control, left, carry, t0)
            before = len(self.output)
            deltas, grammar_done = self._take_round(control, guard, sent, ngram_seen)
            for delta in deltas:
                yield delta
            if guard.finished or grammar_done:
                break
            carry = await self._next_carry(sent, before)
        tail = guard.finish()
        if tail:
            yield TextDelta(text=tail, round=self.c.round_no)
        self.done = True
        yield self._finished(guard, grammar_done=grammar_done)

    async def _start(self) -> OutputGuard:
        """Count the run in on the route, open the target session and the proposers; the
        output's guard."""
        self.b.run_started()
        self.live = True
        guard = await self._open()
        await self._setup_drafting()
        return guard

    async def _send_round(
        self, control: RequestControl, left: int, carry: _Carry, t0: float
    ) -> _Sent:
        """This round on the target: the result of the plain step queued last round, or this
        round's draft (:meth:`_draft`) sent as a Verify (with the pipelined draft of the next
        round started while it verifies). ``t0``: when the round began."""
        assert self.target is not None
        if carry.ahead:  # the plain step queued last round
            res = await self._target_call(self.target.read_verified())
            return _Sent(Draft(), res, elapsed=time.perf_counter() - t0)
        draft, k, lead = await self._draft(control, left, carry.pending, carry.forced)
        t_draft = time.perf_counter() - t0
        if self.drafter is not None:
            self.drafter.start_pipeline(draft, len(self.prompt) + len(self.output))
        res, ahead = await self._target_call(self._round(draft, left))
        return _Sent(draft, res, k, lead, t_draft, time.perf_counter() - t0, ahead)

    def _take_round(
        self, control: RequestControl, guard: OutputGuard, sent: _Sent, ngram_seen: int
    ) -> tuple[list[TextDelta], bool]:
        """Count the round and commit its verified block; the deltas to emit, and whether
        the grammar completed the output with it (then it ends, even at max_tokens)."""
        draft, res = sent.draft, sent.res
        self._account(control, sent)
        block = [*draft.tokens[: res.accepted], res.next_token]
        self._commit(block, lead=sent.lead, ngram_seen=ngram_seen)
        deltas, kept = self._deltas(guard, block, res, lead=sent.lead, drafted=bool(draft))
        return deltas, res.grammar_done and kept == len(block)

    async def _next_carry(self, sent: _Sent, before: int) -> _Carry:
        """What the round hands the next (``before``: output tokens before the round): the
        tokens the grammar forces next, else the drafter's pipelined draft if it held."""
        # A plain step queued behind this one already took the first forced token.
        forced = () if sent.ahead else sent.res.forced
        pending = Draft()
        if self.drafter is not None:
            pending = await self.drafter.after_round(
                sent.draft, sent.res, len(self.prompt) + before
            )
        if forced:
            pending = Draft()
        return _Carry(pending, forced, ahead=sent.ahead)

    def _finished(self, guard: OutputGuard, *, grammar_done: bool) -> Finished:
        return Finished(
            finish_reason="stop" if grammar_done else (guard.finish_reason or "length"),
            usage=Usage(prompt_tokens=len(self.prompt), completion_tokens=guard.count),
            stats=self._stats(),
        )

    def _commit(self, block: list[int], *, lead: int, ngram_seen: int) -> None:
        """Append a verified block to the output and the n-gram index (``lead`` forced tokens
        were indexed before the round's lookup, the index then held ``ngram_seen`` tokens)."""
        self.output.extend(block)
        if self.ngram is None:
            return
        if lead:
            self.ngram.sync([*self.ngram.tokens[:ngram_seen], *block])
        else:
            self.ngram.extend(block)

    def _deltas(
        self, guard: OutputGuard, block: list[int], res: Verified, *, lead: int, drafted: bool
    ) -> tuple[list[TextDelta], int]:
        """A verified block through the guard, part by origin; the deltas to emit and how
        many of the block's tokens the guard kept (fewer: the output ended inside it)."""
        parts = policy.block_origins(block, lead=lead, accepted=res.accepted, drafted=drafted)
        deltas: list[TextDelta] = []
        offset, kept_all = 0, 0
        for origin, toks in parts:
            if not toks:
                continue
            out = guard.push_block(toks)
            kept_all += out.kept
            if out.text or out.kept:
                deltas.append(
                    TextDelta(
                        text=out.text,
                        token_ids=tuple(toks[: out.kept]),
                        logprobs=self._logprobs(res, offset, out.kept),
                        origin=origin,
                        round=self.c.round_no,
                    )
                )
            offset += len(toks)
        return deltas, kept_all

    async def _draft(
        self, control: RequestControl, left: int, pending: Draft, forced: Sequence[int]
    ) -> tuple[Draft, int, int]:
        """This round's draft (:func:`~.policy.plan_round`), the k asked of the proposers,
        and how many forced tokens lead the draft. The draft is cut to what the budget can
        use."""
        plan = policy.plan_round(
            self.knobs,
            self.copy,
            next_k=control.next_k(),
            plain_measured=control.plain_step_seconds() is not None,
            left=left,
            forced=forced,
            pending=bool(pending),
            ngram=self.ngram is not None,
        )
        if plan.open_drafter and self.drafter is not None:
            self.drafter.ensure_opening()
        if plan.head and self.ngram is not None:
            self.ngram.extend(plan.head)
        k = plan.k
        if plan.reuse:
            draft = pending
        else:
            draft = Draft()
            if plan.propose:
                draft = await self._propose(plan.k, plan.room, plan.head)
                if draft.shaped:
                    k = len(draft)
            draft = policy.lead_with(plan.head, draft)
        return draft.cut(left - 1), k, len(plan.head)

    def _control(self) -> RequestControl:
        if not self.spec.adaptive:
            return RequestControl(FixedK(self.spec.max_draft_tokens), None)
        proposer = "prediction" if self.prediction is not None else self.spec.draft_mode
        return request_control(
            self.spec.control,
            proposer=proposer,
            shared=self.b.controller_for(proposer),
            costs=self.b.costs,
        )

    def _account(self, control: RequestControl, sent: _Sent) -> None:
        """Count the round, teach the controllers and the route's verify costs, and step the
        copy state. The controller learns from the proposer's part of the draft only: forced
        tokens cost no drafting and are always accepted."""
        draft, res, lead, elapsed = sent.draft, sent.res, sent.lead, sent.elapsed
        self.c.draft_ms += sent.t_draft * 1000.0
        self.c.verify_ms += res.verify_ms
        self.c.record_round(len(draft), res.accepted, lead, load=control.load)
        self.b.record_verify(len(draft) + 1, res.verify_ms / 1000.0)
        own, own_acc = len(draft) - lead, max(0, res.accepted - lead)
        if own:
            control.record(sent.k, own, own_acc, elapsed, sent.t_draft)
        elif not lead:
            control.record_plain(elapsed)
        result = RoundResult(
            k=sent.k,
            drafted=own,
            accepted=own_acc,
            elapsed=elapsed,
            t_plain=control.plain_step_seconds(),
            copy=draft.copy,
            lead=lead,
            in_drafter=draft.in_drafter,
        )
        self.copy = policy.after_round(self.knobs, self.copy, result, len(self.output))

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
            self.copy = CopyState(
                run_k=min(self.spec.prediction_start_tokens, self.spec.max_draft_tokens)
            )
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
        if mode not in ("model", "hybrid"):
            return
        # Text drafters serve when no Engine drafter (same vocabulary, token level) is healthy.
        if self.b.pick_drafter() is None:
            text = text_proposer(
                self.spec.text_drafters,
                target=self.spec.target,
                pieces=self.pieces,
                request=self.req,
                prompt=self.prompt,
                bos_token_id=self.info.bos_token_id,
                timeout_s=self.spec.draft_timeout_s,
                cooldown_s=self.spec.drafter_cooldown_s,
                route=self.spec.name,
            )
            if text is not None:
                self.drafter = TextDrafting(text)
                return
        # A seeded request drafts greedily (one-hot drafts, sample-and-match): the target
        # then draws one uniform per emitted token, exactly as plain decoding does, so the
        # output is the same with or without speculation. Unseeded sampled requests draft
        # by sampling and are verified by rejection sampling (same distribution).
        seeded = self.req.seed is not None
        sampling = SamplingConfig() if seeded else self.req.sampling
        self.drafter = ModelDrafting(self.spec, self.b.pick_drafter, self.prompt, sampling)

    async def _propose(self, k: int, room: int, head: Sequence[int] = ()) -> Draft:
        """Drafts for this round (k = 0: only a copy). ``head``: forced tokens that lead this
        round's draft; the drafts continue after them (a text drafter does not continue a
        forced draft)."""
        free = policy.free_draft(
            self.knobs,
            self.copy,
            self.b.costs,
            k=k,
            room=room,
            output=self.output,
            prediction=self.prediction,
            ngram=self.ngram,
            after_forced=bool(head),
        )
        if free is not None:
            return free
        if self.drafter is None or (head and not self.drafter.continues_forced):
            return Draft()
        return await self.drafter.propose(k, [*self.prompt, *self.output, *head], self.output)

    # -- plain stretches ----------------------------------------------------------------

    def _outlook(self, control: RequestControl, *, pipelined: bool) -> Outlook:
        """The facts :func:`~.policy.plain_stretch` decides from. The controller's k is asked
        only where the policy reads it (asking may start a probe)."""
        looks = self.ngram is not None or self.prediction is not None
        asks = looks and self.knobs.plain_chunks and self.knobs.plain_lookahead and not pipelined
        model = self.drafter is not None and self.drafter.may_serve
        return Outlook(
            produced=len(self.output),
            next_k=control.next_k() if asks else 0,
            plain_ahead=control.plain_steps_ahead(),
            model_drafting=model,
            prediction_run=self.prediction.sync(self.output) if self.prediction else None,
            ngram_match=self.ngram.lookup(None, 1).match_length if self.ngram else None,
            ngram_min_n=self.ngram.min_n if self.ngram is not None else 2,
        )

    def _stretch(self, control: RequestControl, room: int, guard: OutputGuard) -> int:
        pipelined = self.drafter is not None and self.drafter.pipelined
        budget = None if guard.max_tokens is None else guard.max_tokens - guard.count
        view = self._outlook(control, pipelined=pipelined)
        return policy.plain_stretch(
            self.knobs, self.copy, view, pipelined=pipelined, room=room, budget=budget
        )

    async def _round(self, draft: Draft, left: int) -> tuple[Verified, bool]:
        """Send this round's Verify; a plain one also queues the next plain step (lookahead)
        when the policy says so. The result, and whether a step was queued."""
        assert self.target is not None
        q = list(draft.q) if draft.q is not None else None
        await self.target.send_verify(list(draft.tokens), q)
        queued = policy.queue_lookahead(self.knobs, len(draft), left)
        if queued:
            await self.target.send_verify()
        return await self.target.read_verified(), queued

    async def _plain_run(
        self, n: int, guard: OutputGuard, control: RequestControl
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
                self.c.record_round(0, 0, load=control.load)
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
                        round=self.c.round_no,
                    )
                if guard.finished:
                    return  # the session is still streaming: cleanup cancels the rest

    # -- results ------------------------------------------------------------------------

    def _logprobs(self, res: Verified, offset: int, kept: int) -> tuple[LogprobEntry, ...]:
        """Entries for the ``kept`` tokens of ``res``'s block from ``offset`` on."""
        if not (self.req.logprobs or self.req.top_logprobs) or not res.logprobs:
            return ()
        pieces = self.pieces
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
            mode=self.spec.draft_mode,
            rounds=c.rounds,
            drafted=c.drafted,
            accepted=c.accepted,
            plain_steps=c.plain_steps,
            draft_ms=c.draft_ms,
            verify_ms=c.verify_ms,
            prefill_ms=self.prefill_ms,
            cached_prompt_tokens=self.cached,
            draft_failures=self.drafter.failures if self.drafter is not None else 0,
            accepted_by_position=tuple(c.by_position),
            forced_drafted=c.forced_drafted,
            forced_accepted=c.forced_accepted,
            load_steps=c.load_steps,
        )

    async def cleanup(self) -> None:
        if self.live:
            self.live = False
            self.b.run_ended()
        if self.drafter is not None:
            await self.drafter.close(done=self.done)
        if self.target is None:
            return
        if self.done:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.target.close(), 2.0)
        else:
            self.target.abort()
