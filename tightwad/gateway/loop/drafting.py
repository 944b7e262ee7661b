"""A request's drafter: the proposer asked for k tokens when no draft-free proposal serves.

Owns the :class:`Drafter` interface and its two kinds: :class:`ModelDrafting` (a draft model's
session on the route's fastest healthy draft engine, kept in line with what the target
committed, with the pipelined draft of the next round) and :class:`TextDrafting` (a text
server such as Ollama, :mod:`tightwad.gateway.text_draft`). Draft-free proposers (n-gram,
predicted outputs, grammar-forced tokens) are pure and live in :mod:`.policy`.

A draft model opens (prefills) in the background the first time a round wants a draft
(:meth:`ModelDrafting.ensure_opening`): the target never waits for it, rounds use it once it is
ready (its first draft catches up with what was committed), and a route whose drafting cannot
pay never pays for the prefill (it would compete with the target on a shared host). A drafter
that fails or stalls is dropped for the rest of the request (counted in ``failures``; a draft
engine also rests for the route) and the request decodes on: a drafter returns an empty
:class:`~tightwad.gateway.loop.policy.Draft` rather than raising.

With ``pipeline``, while the target verifies round n the drafter already drafts round n+1
assuming all of round n is accepted (its first token is its guess of the target's next token);
a rejection discards that work.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from tightwad.errors import TightwadError
from tightwad.gateway.engine_client import DraftProposal, RemoteSession, Verified
from tightwad.gateway.loop.policy import Draft, pipelined_draft_holds
from tightwad.gateway.text_draft import TextDraftProposer
from tightwad.logs import get_logger
from tightwad.spec.sampling import SamplingConfig

if TYPE_CHECKING:
    from tightwad.gateway.loop.route import DrafterHealth, RouteSpec

__all__ = ["Drafter", "ModelDrafting", "TextDrafting"]

log = get_logger("tightwad.gateway.loop")


class Drafter(Protocol):
    """A request's drafter. It never raises for its own failures: it counts them
    (:attr:`failures`) and drafts nothing from then on."""

    #: Whether it drafts after grammar-forced tokens (a text drafter does not).
    continues_forced: bool

    @property
    def may_serve(self) -> bool:
        """It may draft a coming round (so no round is certainly plain)."""
        ...

    @property
    def pipelined(self) -> bool:
        """A draft of the next round is in flight."""
        ...

    @property
    def failures(self) -> int: ...

    def ensure_opening(self) -> None:
        """A round wants a draft: get ready (in the background) unless already."""
        ...

    async def propose(self, k: int, committed: Sequence[int], output: Sequence[int]) -> Draft:
        """Up to k tokens after ``committed`` (prompt + ``output`` + forced tokens)."""
        ...

    def start_pipeline(self, draft: Draft, committed: int) -> None:
        """The round of ``draft`` is about to verify (``committed`` tokens before it)."""
        ...

    async def after_round(self, draft: Draft, res: Verified, base: int) -> Draft:
        """The round verified; the next round's pipelined draft (or an empty one)."""
        ...

    async def close(self, *, done: bool) -> None: ...


class TextDrafting:
    """A text drafter as a request's :class:`Drafter`: greedy one-hot drafts, dropped for the
    request at its first failure."""

    continues_forced = False

    def __init__(self, proposer: TextDraftProposer) -> None:
        self._proposer = proposer
        self._failures = 0

    @property
    def may_serve(self) -> bool:
        return self._failures == 0

    @property
    def pipelined(self) -> bool:
        return False

    @property
    def failures(self) -> int:
        return self._failures

    def ensure_opening(self) -> None:
        return None

    async def propose(self, k: int, committed: Sequence[int], output: Sequence[int]) -> Draft:
        if self._failures:
            return Draft()
        got = await self._proposer.propose(output, k)
        if got is None:  # failed: dropped for the request
            self._failures += 1
            return Draft()
        return Draft(tuple(got))

    def start_pipeline(self, draft: Draft, committed: int) -> None:
        return None

    async def after_round(self, draft: Draft, res: Verified, base: int) -> Draft:
        return Draft()

    async def close(self, *, done: bool) -> None:
        return None


class ModelDrafting:
    """A request's draft-model session (see the module docstring). ``pick`` chooses the
    drafter when the session opens; ``sampling`` is what the drafter samples with."""

    def __init__(
        self,
        spec: RouteSpec,
        pick: Callable[[], DrafterHealth | None],
        prompt: Sequence[int],
        sampling: SamplingConfig,
    ) -> None:
        self._spec = spec
        self._pick = pick
        self._prompt = list(prompt)
        self._sampling = sampling
        self._drafter: DrafterHealth | None = None
        self._session: RemoteSession | None = None
        # Leading tokens of the draft session known to equal prompt + output.
        self._valid = 0
        self._opening: asyncio.Task[None] | None = None
        self._pre: asyncio.Task[DraftProposal] | None = None
        self._failures = 0

    continues_forced = True

    @property
    def may_serve(self) -> bool:
        """For the whole request: once wanted, a drafter that failed still counts (rounds the
        controller would draft are then not decoded as plain stretches)."""
        return True

    @property
    def pipelined(self) -> bool:
        """A draft of the next round is in flight."""
        return self._pre is not None

    @property
    def failures(self) -> int:
        """Draft failures of this request (none healthy at open, an error, a stall)."""
        return self._failures

    def ensure_opening(self) -> None:
        """Open the session in the background unless that already started."""
        if self._opening is None:
            self._opening = asyncio.create_task(self._open())

    async def _open(self) -> None:
        d = self._pick()
        if d is None:
            self._failures += 1
            return
        self._drafter = d
        sess = d.client.session(timeout_s=None)
        try:
            await asyncio.wait_for(
                sess.open(self._prompt, self._sampling), self._spec.target_timeout_s
            )
        except (TightwadError, TimeoutError) as exc:
            sess.abort()
            self._failed(exc)
            return
        except BaseException:
            sess.abort()
            raise
        self._session = sess
        self._valid = len(self._prompt)

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        if self._drafter is not None:
            self._drafter.failed()
            log.warning(
                "drafter_dropped",
                route=self._spec.name,
                drafter=self._drafter.client.address,
                reason=str(exc) or type(exc).__name__,
            )
        if self._session is not None:
            self._session.abort()
        self._session = None
        self._cancel_pipeline()

    async def propose(self, k: int, committed: Sequence[int], output: Sequence[int]) -> Draft:
        """Up to k drafted tokens after ``committed`` (prompt + output + forced tokens); the
        session first catches up with what of it it does not hold. Nothing while the session
        is not open (yet, or any more)."""
        if self._session is None:
            return Draft()
        keep = self._valid
        append = committed[keep:]
        t0 = time.perf_counter()
        try:
            prop = await asyncio.wait_for(
                self._session.draft(
                    k,
                    keep=keep,
                    append=append,
                    min_confidence=self._spec.draft_min_confidence,
                    top_m=self._spec.draft_top_m,
                ),
                self._spec.draft_timeout_s,
            )
        except (TightwadError, TimeoutError) as exc:
            self._failed(exc)
            return Draft()
        self._valid = keep + len(append)
        if prop.tokens and self._drafter is not None:
            self._drafter.observe_draft((time.perf_counter() - t0) * 1000.0 / len(prop.tokens))
        q = tuple(prop.q) if prop.q is not None else None
        return Draft(tuple(prop.tokens), q, in_drafter=bool(prop.tokens))

    def start_pipeline(self, draft: Draft, committed: int) -> None:
        """Draft the round after ``draft`` while it verifies, assuming it is accepted whole
        (``committed``: prompt + output tokens before it)."""
        if not (self._spec.pipeline and self._session is not None and draft and draft.in_drafter):
            return
        k = max(1, min(self._spec.max_draft_tokens, len(draft)) + 1)
        self._pre = asyncio.create_task(
            self._session.draft(
                k,
                keep=committed + len(draft),
                min_confidence=self._spec.draft_min_confidence,
                top_m=self._spec.draft_top_m,
            )
        )

    def _cancel_pipeline(self) -> None:
        if self._pre is not None:
            self._pre.cancel()
            self._pre = None

    async def after_round(self, draft: Draft, res: Verified, base: int) -> Draft:
        """Track what of the session still matches the committed sequence (``base``: prompt
        + output tokens before the round); the pipelined draft of the next round when its
        guess of the target's token held, else an empty one."""
        if draft.in_drafter:
            self._valid = base + res.accepted
        if self._pre is None:
            return Draft()
        pre, self._pre = self._pre, None
        try:
            prop = await asyncio.wait_for(pre, self._spec.draft_timeout_s)
        except (TightwadError, TimeoutError) as exc:
            self._failed(exc)
            return Draft()
        if pipelined_draft_holds(len(draft), res.accepted, res.next_token, prop.tokens):
            self._valid = base + len(draft) + 1
            q = tuple(prop.q[1:]) if prop.q is not None else None
            return Draft(tuple(prop.tokens[1:]), q, in_drafter=True)
        return Draft()

    async def close(self, *, done: bool) -> None:
        """Stop the pipeline and the opening; close the session (``done``: the request ended
        normally) or abort it."""
        self._cancel_pipeline()
        if self._opening is not None:
            if not self._opening.done():
                self._opening.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._opening  # also retrieves an exception the drafter's open raised
        if self._session is None:
            return
        if done:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._session.close(), 2.0)
        else:
            self._session.abort()
