"""One request's sequence in the embedded engine: prefill, Verify, Generate, Draft, Rewind.

Guarantees:
- ``tokens`` is the prompt plus everything committed or drafted; all of it but the last
  ("pending") token is in the KV cache (``n_kv == len(tokens) - 1``) between commands.
- Verify decodes ``[pending, d1..dk]`` in one batch, runs :func:`tightwad.spec.acceptance.verify`
  on the target's own processed distribution, and trims the KV cache to the accepted prefix.
- Under a grammar (:mod:`tightwad.engine.grammar`) every row is masked by the grammar's state
  after the tokens before it, before the sampling chain, in Verify, Generate and Draft alike;
  a draft is cut at its first token the grammar forbids (and before an end-of-generation
  token, which only ever comes as the emitted token), and the grammar state follows the
  token list through rejections, rewinds and draft alignments.
- Every llama.cpp call runs on the engine's compute thread: the ``*_sync`` methods and the
  batch jobs (``*_job``: what to decode, then what to make of its rows), which the engine runs
  alone or in one forward pass with other sessions' jobs (:mod:`tightwad.engine.step_batcher`).
- A prefill keeps ``n_kv`` true chunk by chunk, so a session released mid-prefill leaves a
  truthful cached prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from tightwad.engine import session_rules as rules
from tightwad.engine.contract import (
    DraftEnd,
    DraftStep,
    DraftStop,
    GenerateStop,
    TokenLogprob,
    VerifyResult,
)
from tightwad.engine.grammar import GrammarMatcher
from tightwad.engine.step_batcher import MORE, WAIT, FnJob, Part
from tightwad.errors import UnavailableError
from tightwad.spec.acceptance import Outcome, verify
from tightwad.spec.sampling import SamplingConfig, SparseDist, sample, target_distribution

if TYPE_CHECKING:
    from tightwad.engine.llama_engine import Engine

__all__ = ["Session", "SessionGrammar", "Slot"]


@dataclass
class Slot:
    """A KV sequence of the engine: live while a session holds it, else a cached prefix."""

    seq_id: int
    live: bool = False
    kv_tokens: list[int] = field(default_factory=list)
    # Leading positions whose KV came from aligned prefill chunks (exactly reusable).
    exact: int = 0
    # The end of the prompt prefilled into this slot (its last chunk ``[exact, tail)``), while
    # the cache still holds all of it: a prompt of this very length and tokens would decode
    # the same chunks, so it may take the whole of it (n choices of one prompt share one
    # prefill). 0 once the sequence is cut below it.
    tail: int = 0
    last_used: float = 0.0
    # While a prefill into this slot runs (batched, it spans steps): the positions really in
    # the cache so far (``kv_tokens`` then says what they will be). None otherwise.
    prefill_at: int | None = None

    def cut(self, n: int) -> None:
        """The cache keeps only the first ``n`` positions of this sequence (or is extended
        past them by other computation): shrink what is exactly reusable."""
        self.exact = min(self.exact, n)
        if self.tail > n:
            self.tail = 0

    def reusable(self, prompt: Sequence[int], chunk: int) -> int:
        """How many leading positions of ``prompt``'s prefill this slot's cache can give
        exactly: all but its last token when it holds that very prompt's prefill, else a
        whole number of aligned chunks of the common prefix."""
        limit = len(prompt) - 1
        n = min(lcp(self.kv_tokens, prompt), limit)
        if n == limit and self.tail == limit and self.exact == limit // chunk * chunk:
            return limit
        return min(n, self.exact) // chunk * chunk


def lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _retrieve(f: asyncio.Future[Any]) -> None:
    """Mark a fire-and-forget future's outcome as seen (no "never retrieved" warning)."""
    if not f.cancelled():
        f.exception()


def _log_softmax(logits: NDArray[np.float32]) -> NDArray[np.float64]:
    x = logits.astype(np.float64)
    m = float(x.max())
    return x - (m + math.log(float(np.exp(x - m).sum())))


def _softmax_prob_of(logits: NDArray[np.float32], token: int) -> float:
    m = float(logits.max())
    return float(math.exp(float(logits[token]) - m) / float(np.exp(logits - m).sum()))


class SessionGrammar:
    """A session's grammar state and the tokens it has consumed (``consumed``), kept equal to
    the session's output so it can follow any change of the token list."""

    def __init__(self, make: Callable[[], GrammarMatcher], eog: frozenset[int]) -> None:
        self._make = make
        self.m = make()
        self.eog = eog
        self.consumed: list[int] = []

    def follow(self, output: Sequence[int]) -> None:
        """Bring the state to the one after ``output``: roll back to the common prefix, then
        consume the rest. An end-of-generation token in the rolled-back part (llguidance does
        not count it in its history) makes the state be rebuilt from the start instead."""
        keep = lcp(self.consumed, output)
        dropped = self.consumed[keep:]
        if dropped:
            if self.eog.isdisjoint(dropped):
                self.m.rollback(len(dropped))
                del self.consumed[keep:]
            else:
                self.m, self.consumed, keep = self._make(), [], 0
        for t in output[keep:]:
            self.consume(t)

    def consume(self, token: int) -> None:
        self.m.consume(token)
        self.consumed.append(token)

    def masked(self, logits: NDArray[np.float32]) -> NDArray[np.float32]:
        return self.m.mask(logits.copy())


class Session:
    """One request's sequence in the engine. Use only from one task at a time."""

    def __init__(
        self,
        engine: Engine,
        slot: Slot,
        prompt: list[int],
        sampling: SamplingConfig,
        rng: np.random.Generator,
        *,
        top_logprobs: int,
        logprobs: bool,
        grammar: SessionGrammar | None = None,
    ) -> None:
        self._e = engine
        self._m = engine.model
        self._slot = slot
        self.seq = slot.seq_id
        self.tokens: list[int] = prompt
        self.prompt_len = len(prompt)
        self.n_kv = 0
        self.sampling = sampling
        self.rng = rng
        self.top_logprobs = top_logprobs
        self.logprobs = logprobs
        self.closed = False
        self._g = grammar
        self._plain = (
            grammar is None
            and not sampling.logit_bias
            and sampling.repeat_penalty == 1.0
            and sampling.presence_penalty == 0.0
            and sampling.frequency_penalty == 0.0
        )

    # -- prefill (on the compute thread) -------------------------------------------------

    def prefill_job(self, src: Slot | None, reuse: int) -> FnJob:
        """The prompt's prefill as a batch job: first the cached prefix (``reuse`` tokens of
        ``src``, once they are really there), then one aligned chunk per decode."""
        started = False

        def width() -> int:
            part = self._prefill_part() if started else None
            return len(part[1]) if part is not None else self._e.cfg.prefill_chunk

        def prepare() -> Part | None:
            nonlocal started
            if not started:
                if not self._prefill_start(src, reuse):
                    return WAIT
                started = True
            return self._prefill_part()

        def finish(_offset: int, _t0: float) -> Any:
            part = self._prefill_part()  # the chunk just decoded (None: nothing was)
            if part is not None:
                self.n_kv += len(part[1])
                self._slot.prefill_at = self.n_kv
            if self._prefill_part() is not None:
                return MORE
            self._slot.kv_tokens = self.tokens[: self.n_kv]
            self._slot.prefill_at = None
            return None

        return FnJob(self, width, prepare, finish, fill=True)

    def _prefill_start(self, src: Slot | None, reuse: int) -> bool:
        """Bring in the cached prefix; False while ``src``'s own prefill has not reached it."""
        m = self._m
        if src is not None and src is not self._slot:
            if src.prefill_at is not None and src.prefill_at < reuse:
                return False
            if lcp(src.kv_tokens, self.tokens) < reuse:  # the source changed since
                src = None
        if src is not None and src is not self._slot:
            m.seq_rm(self.seq, -1, -1)
            m.seq_cp(src.seq_id, self.seq, 0, reuse)
        elif src is None:
            m.seq_rm(self.seq, -1, -1)
            reuse = 0
        m.seq_rm(self.seq, reuse, -1)
        self.n_kv = reuse
        self._slot.prefill_at = reuse
        return True

    def _prefill_part(self) -> Part | None:
        """The next aligned chunk of the prompt still to decode (None when done)."""
        end = len(self.tokens) - 1
        pos = self.n_kv
        if pos >= end:
            return None
        chunk = self._e.cfg.prefill_chunk
        stop = min(end, (pos // chunk + 1) * chunk)
        return self.seq, self.tokens[pos:stop], pos, ()

    def release(self) -> None:
        """Free the sequence (its KV stays as a cached prefix). Idempotent.

        The slot is handed back only after any command of this session still running on the
        compute thread has finished, so a new session never shares cells with a dying one."""
        if self.closed:
            return
        self.closed = True
        try:
            if self._e.closed:  # its compute thread has finished every command: free it now
                raise UnavailableError("engine closed")
            fut = self._e.call(self, self._keep_prefix, closed_ok=True)
        except (RuntimeError, UnavailableError):  # no loop, or the engine is shut down
            self._keep_prefix()
            self._e.release_slot(self._slot)
            return

        def done(f: asyncio.Future[None]) -> None:
            if f.cancelled() or f.exception() is not None:
                self._slot.kv_tokens = []
            self._e.release_slot(self._slot)

        fut.add_done_callback(done)

    def _keep_prefix(self) -> None:
        """Say what the slot's cache holds now (on the compute thread, after this session's
        last command): its cells stay as a cached prefix for later sessions."""
        slot = self._slot
        slot.kv_tokens = self.tokens[: self.n_kv]
        slot.cut(self.n_kv)
        slot.prefill_at = None

    @property
    def room(self) -> int:
        """Tokens that may still be appended before the per-session context is full."""
        return self._e.cfg.ctx_size - len(self.tokens)

    # -- distributions ------------------------------------------------------------------

    def _dist(self, logits: NDArray[np.float32], history: Sequence[int]) -> SparseDist:
        return target_distribution(logits, history, self.sampling)

    def _logprob(self, logits: NDArray[np.float32], token: int) -> TokenLogprob:
        lp = _log_softmax(logits)
        top: tuple[tuple[int, float], ...] = ()
        if self.top_logprobs > 0:
            k = min(self.top_logprobs, lp.shape[0])
            idx = np.argpartition(-lp, k - 1)[:k]
            idx = idx[np.argsort(-lp[idx], kind="stable")]
            top = tuple((int(i), float(lp[i])) for i in idx)
        return TokenLogprob(token_id=token, logprob=float(lp[token]), top=top)

    def _follow_grammar(self) -> None:
        if self._g is not None:
            self._g.follow(self.tokens[self.prompt_len :])

    # -- verify / generate --------------------------------------------------------------

    async def verify(
        self, draft: Sequence[int], q: Sequence[SparseDist] | None = None
    ) -> VerifyResult:
        """One round: score ``draft`` in one forward pass, keep the accepted prefix, and emit
        the target's next token. ``verify([])`` is one plain decoding step."""
        rules.check_live(self.closed)
        cut, cut_q = rules.verify_draft(draft, q, room=self.room, n_vocab=self._m.n_vocab)
        if self._e.closed:
            raise UnavailableError(f"engine {self._e.cfg.model_id} is closed")
        return await self._e.step(self, cut, cut_q)

    def verify_job(self, draft: list[int], q: Sequence[SparseDist] | None) -> FnJob:
        """This Verify as a batch job: ``[pending, *draft]`` decoded, a prefix accepted."""
        cut: tuple[list[int], Sequence[SparseDist] | None] = (draft, q)

        def prepare() -> Part:
            nonlocal cut
            cut = self.verify_prepare(draft, q)
            return self.verify_part(cut[0])

        def finish(offset: int, t0: float) -> VerifyResult:
            return self.verify_finish(cut[0], cut[1], offset, t0)

        return FnJob(self, lambda: len(draft) + 1, prepare, finish)

    def verify_prepare(
        self, draft: list[int], q: Sequence[SparseDist] | None
    ) -> tuple[list[int], Sequence[SparseDist] | None]:
        """The draft this Verify scores: under a grammar, cut at the first forbidden token."""
        g = self._g
        if g is not None:
            # An EOG token ends the scored draft: it only ever comes as the emitted token.
            eog_at = next((i for i, t in enumerate(draft) if t in g.eog), len(draft))
            n = g.m.begin_draft(draft[:eog_at])
            draft = draft[:n]
            q = (list(q[:n]) or None) if q is not None else None
        return draft, q

    def verify_part(self, draft: list[int]) -> tuple[int, list[int], int, range]:
        """What this Verify decodes: (seq_id, [pending, *draft], start position, output rows)."""
        return self.seq, [self.tokens[-1], *draft], self.n_kv, range(len(draft) + 1)

    def verify_finish(
        self, draft: list[int], q: Sequence[SparseDist] | None, offset: int, t0: float
    ) -> VerifyResult:
        """Accept a prefix of ``draft`` from the rows decoded at batch index ``offset``."""
        m = self._m
        g = self._g
        base = list(self.tokens)
        rows: dict[int, NDArray[np.float32]] = {}
        masked: dict[int, NDArray[np.float32]] = {}

        def row(i: int) -> NDArray[np.float32]:
            if i not in rows:
                rows[i] = m.logits_row(offset + i)
            return rows[i]

        def processed(i: int) -> NDArray[np.float32]:
            if g is None:
                return row(i)
            if i not in masked:
                masked[i] = g.m.mask_for_draft(i, row(i).copy())
            return masked[i]

        def dist_at(i: int) -> SparseDist:
            return self._dist(processed(i), base + draft[:i])

        def argmax_at(i: int) -> int:
            if self._plain:
                # Greedy without penalties: the argmax of llama.cpp's own buffer, no copy.
                return int(np.argmax(rows[i])) if i in rows else m.argmax_row(offset + i)
            return dist_at(i).argmax()

        outcome: Outcome = verify(draft, q, dist_at, argmax_at, self.sampling.greedy, self.rng)
        a, nxt = outcome.accepted, outcome.next_token
        forced: tuple[int, ...] = ()
        done = False
        if g is not None:
            g.m.settle(a, nxt)
            g.consumed += [*draft[:a], nxt]
            done = g.m.is_stopped
            forced = () if done else tuple(g.m.forced())
        lps: tuple[TokenLogprob, ...] = ()
        if self.logprobs:
            emitted = [*draft[:a], nxt]
            lps = tuple(self._logprob(row(i), tok) for i, tok in enumerate(emitted))
        keep = self.n_kv + 1 + a
        if a < len(draft):
            m.seq_rm(self.seq, keep, -1)
        self.tokens = base + draft[:a] + [nxt]
        self.n_kv = keep
        return VerifyResult(
            accepted=a,
            next_token=nxt,
            logprobs=lps,
            verify_ms=(time.perf_counter() - t0) * 1000.0,
            n_tokens=len(self.tokens),
            grammar_valid=len(draft),
            forced=forced,
            grammar_done=done,
        )

    async def generate(
        self, n: int, stop_tokens: Sequence[int] = (), *, ignore_eos: bool = False
    ) -> AsyncIterator[tuple[int, TokenLogprob | None, GenerateStop | None]]:
        """Plain decoding: yields (token, logprob, stop reason or None) up to ``n`` tokens.

        The next step is queued on the compute thread before a token is yielded, so the model
        decodes back to back while the caller streams. A step decoded for a caller that stops
        iterating early is rolled back (queued behind it on the same thread). Under a grammar
        the run ends with :attr:`GenerateStop.GRAMMAR` after the token that completes it."""
        rules.check_live(self.closed)
        eog = self._e.eog
        stops = set(stop_tokens) | (set() if ignore_eos else set(eog))

        def step() -> asyncio.Future[VerifyResult]:
            if self._e.closed:
                raise UnavailableError(f"engine {self._e.cfg.model_id} is closed")
            return self._e.step(self, [], None)

        ahead: asyncio.Future[VerifyResult] | None = None
        ahead_len = 0  # the session's length once the queued step has run
        done = False
        try:
            for i in range(n):
                if self.room <= 0:
                    done = True
                    yield -1, None, GenerateStop.CONTEXT_FULL
                    return
                fut, ahead = ahead or step(), None
                res = await fut
                lp = res.logprobs[0] if res.logprobs else None
                if res.next_token in stops:
                    done = True
                    why = GenerateStop.EOG if res.next_token in eog else GenerateStop.TOKEN
                    yield res.next_token, lp, why
                    return
                if res.grammar_done:
                    done = True
                    yield res.next_token, lp, GenerateStop.GRAMMAR
                    return
                last = i == n - 1
                if not last and self.room > 0:
                    # The length before queueing: the compute thread may run the step at once.
                    ahead_len = len(self.tokens) + 1
                    ahead = step()
                done = last
                yield res.next_token, lp, GenerateStop.LENGTH if last else None
        finally:
            if ahead is not None and not done:
                # The caller will not take the queued step: undo it on the same thread, after it.
                ahead.add_done_callback(_retrieve)
                with contextlib.suppress(RuntimeError, UnavailableError):  # engine gone
                    self._e.call(self, lambda: self._undo_step(ahead_len)).add_done_callback(
                        _retrieve
                    )

    async def forced(self) -> tuple[int, ...]:
        """The tokens the grammar forces next (empty without a grammar or when complete)."""
        g = self._g
        if g is None:
            return ()
        return await self._e.call(self, lambda: () if g.m.is_stopped else tuple(g.m.forced()))

    def _undo_step(self, expected: int) -> None:
        """Drop the last plain step (if the session grew to ``expected`` tokens with it)."""
        if not self.closed and len(self.tokens) == expected:
            self._truncate_sync(expected - 1)

    def _truncate_sync(self, keep: int) -> int:
        """Keep the first ``keep`` tokens (the last of them pending, outside the KV cache)."""
        self.tokens = self.tokens[:keep]
        self.prompt_len = min(self.prompt_len, keep)
        self._slot.kv_tokens = self._slot.kv_tokens[: keep - 1]
        self._slot.cut(keep - 1)
        if self.n_kv > keep - 1:
            self._m.seq_rm(self.seq, keep - 1, -1)
            self.n_kv = keep - 1
        self._follow_grammar()
        return len(self.tokens)

    async def rewind(self, keep: int) -> int:
        rules.check_live(self.closed)
        rules.check_rewind(keep, len(self.tokens))
        return await self._e.call(self, lambda: self._truncate_sync(keep))

    # -- draft --------------------------------------------------------------------------

    async def draft(
        self,
        k: int,
        *,
        keep: int,
        append: Sequence[int],
        min_confidence: float = 0.0,
        top_m: int = 0,
    ) -> AsyncIterator[DraftStep | DraftEnd]:
        """Align to the target (keep ``keep`` tokens, append ``append``), then propose up to
        ``k`` tokens, yielding each as produced, then one :class:`DraftEnd` saying why the
        draft ended (length, low confidence, EOG or a full context)."""
        rules.check_live(self.closed)
        new = rules.draft_alignment(self.tokens, keep, append, n_vocab=self._m.n_vocab)
        room = self._e.cfg.ctx_size - len(new)
        k = max(0, min(k, room))
        row = await self._e.job(self._sync_job(new, want_row=k > 0))
        for i in range(k):
            step = await self._e.call(
                self,
                lambda r=row: self._draft_pick(r, min_confidence, top_m),  # type: ignore[misc]
            )
            if step is None:
                yield DraftEnd(DraftStop.LOW_CONFIDENCE)
                return
            yield step
            if step.token_id in self._e.eog:
                yield DraftEnd(DraftStop.EOG)
                return
            if i < k - 1:
                row = await self._e.job(self._advance_job())
        yield DraftEnd(DraftStop.CONTEXT_FULL if k == 0 and room <= 0 else DraftStop.LENGTH)

    def _sync_job(self, new: list[int], *, want_row: bool) -> FnJob:
        """Align to ``new`` (keep the common cached prefix, decode the rest); the result is
        the last row's logits when ``want_row``."""
        tail: list[int] = []

        def width() -> int:
            return max(1, len(new) - min(lcp(self.tokens, new), self.n_kv, len(new) - 1))

        def prepare() -> Part | None:
            nonlocal tail
            valid = min(lcp(self.tokens, new), self.n_kv, len(new) - 1)
            self._m.seq_rm(self.seq, valid, -1)
            self._slot.kv_tokens = self._slot.kv_tokens[:valid]
            self._slot.cut(valid)
            self.prompt_len = min(self.prompt_len, lcp(self.tokens, new))
            self.tokens = new
            self.n_kv = valid
            self._follow_grammar()
            tail = new[valid:] if want_row else new[valid:-1]
            if not tail:
                return None
            return self.seq, tail, valid, (len(tail) - 1,) if want_row else ()

        def finish(offset: int, _t0: float) -> NDArray[np.float32] | None:
            self.n_kv += len(tail)
            return self._m.logits_row(offset + len(tail) - 1) if want_row else None

        return FnJob(self, width, prepare, finish)

    def _advance_job(self) -> FnJob:
        """Decode the token just drafted; the result is its row's logits."""

        def prepare() -> Part:
            return self.seq, [self.tokens[-1]], self.n_kv, (0,)

        def finish(offset: int, _t0: float) -> NDArray[np.float32]:
            self.n_kv += 1
            return self._m.logits_row(offset)

        return FnJob(self, lambda: 1, prepare, finish)

    def _draft_pick(
        self, logits: NDArray[np.float32] | None, min_confidence: float, top_m: int
    ) -> DraftStep | None:
        """Propose the next token from ``logits`` and append it (the pending token was just
        decoded: ``n_kv == len(tokens)`` here). None below the confidence floor."""
        assert logits is not None
        g = self._g
        if g is not None:
            if g.m.is_stopped:
                return None
            logits = g.masked(logits)
        if self.sampling.greedy:
            dist = self._dist(logits, self.tokens) if not self._plain else None
            tok = dist.argmax() if dist is not None else int(np.argmax(logits))
            prob = _softmax_prob_of(logits, tok)
            picked = DraftStep(token_id=tok, prob=prob, q=None)
        else:
            dist = self._dist(logits, self.tokens)
            if top_m > 0 and len(dist.token_ids) > top_m:
                dist = dist.top(top_m)
            tok = sample(dist, self.rng)
            picked = DraftStep(token_id=tok, prob=dist.prob_of(tok), q=dist)
        if picked.prob < min_confidence:
            return None
        self.tokens.append(tok)
        if g is not None:
            g.consume(tok)
        return picked
