"""What the HTTP adapters share: their config, their facts, and the session machinery.

An :class:`HttpSession` keeps the session's token list on our side and asks the server for
tokens by streaming: plain steps (``verify([])``, ``generate``) are served from one read-ahead
stream per run of plain steps (prompt as token ids, ``n`` tokens), so a plain target costs one
HTTP request per run, not one per token; anything that changes the sequence (a draft, a rewind,
a verified draft, release) cancels the read-ahead, which closes its connection and so stops the
server's generation. Drafting streams ``k`` tokens with the drafting sampler.

A subclass (one per server kind) provides :meth:`HttpEngine._stream` and the facts; one that
can verify a draft in one pass overrides :meth:`HttpEngine._verify_draft`.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from tightwad.engine import session_rules as rules
from tightwad.engine.adapters.http import HttpClient
from tightwad.engine.contract import (
    DraftEnd,
    DraftStep,
    DraftStop,
    EngineInfo,
    GenerateStop,
    Message,
    TokenLogprob,
    VerifyResult,
)
from tightwad.engine.session_rules import check_open, check_tokens
from tightwad.errors import (
    ContextLengthError,
    InvalidRequestError,
    OverloadedError,
    UnavailableError,
)
from tightwad.logs import get_logger
from tightwad.spec.sampling import SamplingConfig, SparseDist
from tightwad.url_policy import UrlPolicy

if TYPE_CHECKING:
    from tightwad.engine.grammar import GrammarSpec

__all__ = [
    "AdapterConfig",
    "AdapterFacts",
    "HttpEngine",
    "HttpSession",
    "StreamRequest",
    "StreamedToken",
    "refuse_tools",
]

log = get_logger("tightwad.adapters")


def refuse_tools(model_id: str, kind: str, tools_json: str, messages: Sequence[Message]) -> None:
    """HTTP adapters render no tools nor tool-call history (their servers' templates are out
    of our reach): say so rather than drop them."""
    if tools_json or any(m.tool_calls_json or m.tool_call_id for m in messages):
        raise InvalidRequestError(
            f"model {model_id} is served by a {kind} server, whose chat template Tightwad "
            "cannot render tools with; serve it from an embedded engine",
            param="tools",
        )


@dataclass(frozen=True, slots=True)
class AdapterConfig:
    """How to reach one server. ``model_id`` is the id the Engine service answers to;
    ``server_model`` the model name the server expects in requests (Ollama/OpenAI);
    ``ctx_size`` 0 = what the server reports. ``url_policy`` (the cluster file's
    ``upstreams``) vets ``url`` when the engine is built (a ConfigError naming ``url_key``)
    and every address dialled afterwards."""

    model_id: str
    url: str
    server_model: str = ""
    ctx_size: int = 0
    api_key: str | None = None
    timeout_s: float = 30.0
    readahead_tokens: int = 512
    max_sessions: int = 64
    url_policy: UrlPolicy | None = None
    url_key: str = "url"

    @property
    def path(self) -> str:
        return self.url


@dataclass(frozen=True, slots=True)
class AdapterFacts:
    """What a probe of the server found (filled once by ``start``)."""

    model_name: str
    n_ctx: int
    n_vocab: int
    vocab_fingerprint: str
    bos_token_id: int
    eog_token_ids: tuple[int, ...]
    has_chat_template: bool
    can_verify: bool
    can_draft: bool
    can_logprobs: bool
    architecture: str = ""
    n_layers: int = 0
    n_ctx_train: int = 0
    version: str = ""


@dataclass(frozen=True, slots=True)
class StreamedToken:
    """One token a server produced: its logprob (when asked) and, for a sampled draft, the
    distribution it was sampled from; ``prob`` is the probability of the token (or None)."""

    token_id: int
    logprob: TokenLogprob | None = None
    prob: float | None = None
    q: SparseDist | None = None


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """One generation request: continue ``tokens`` by up to ``n`` tokens."""

    tokens: tuple[int, ...]
    n: int
    sampling: SamplingConfig
    seed: int | None
    n_probs: int = 0
    post_sampling: bool = False
    extra: dict[str, object] = field(default_factory=dict)


E = TypeVar("E", bound="HttpEngine")


async def started(engine: E) -> E:
    """``engine`` once :meth:`HttpEngine.start` has probed its server (closed if that fails):
    the body of every adapter's ``connect``."""
    try:
        await engine.start()
    except BaseException:
        await engine.close()
        raise
    return engine


class HttpEngine(abc.ABC):
    """Base of the adapters. ``await engine.start()`` probes the server; then it serves."""

    kind = "http"

    def __init__(self, cfg: AdapterConfig, *, what: str) -> None:
        self._cfg = cfg
        if cfg.url_policy is not None:
            cfg.url_policy.check_url(cfg.url, key=cfg.url_key)
        self.http = HttpClient(
            cfg.url,
            api_key=cfg.api_key,
            timeout_s=cfg.timeout_s,
            what=what,
            policy=cfg.url_policy,
        )
        self._facts: AdapterFacts | None = None
        self._pieces: list[bytes] | None = None
        self._special: list[int] = []
        # Text of each control token when rendered (its piece is b"": it is not output text).
        self._special_text: dict[int, bytes] = {}
        self._live = 0

    # -- identity -----------------------------------------------------------------------

    @property
    def cfg(self) -> AdapterConfig:
        return self._cfg

    @property
    def _model(self) -> str:
        """The model's name on the server (the route's model id unless configured)."""
        return self._cfg.server_model or self._cfg.model_id

    @property
    def facts(self) -> AdapterFacts:
        if self._facts is None:
            raise UnavailableError(f"adapter {self._cfg.model_id} is not started")
        return self._facts

    @property
    def live_sessions(self) -> int:
        return self._live

    @property
    def eog(self) -> frozenset[int]:
        return frozenset(self.facts.eog_token_ids)

    def _set_facts(self, facts: AdapterFacts) -> None:
        self._facts = facts
        if self._cfg.ctx_size <= 0 or self._cfg.ctx_size > facts.n_ctx > 0:
            self._cfg = replace(self._cfg, ctx_size=facts.n_ctx)

    @abc.abstractmethod
    async def start(self) -> None:
        """Provided by each adapter."""

    async def close(self) -> None:
        await self.http.close()

    async def info(self) -> EngineInfo:
        f = self.facts
        return EngineInfo(
            model_id=self._cfg.model_id,
            model_name=f.model_name,
            architecture=f.architecture,
            n_layers=f.n_layers,
            n_ctx=self._cfg.ctx_size,
            n_ctx_train=f.n_ctx_train,
            n_vocab=f.n_vocab,
            vocab_fingerprint=f.vocab_fingerprint,
            bos_token_id=f.bos_token_id,
            eog_token_ids=f.eog_token_ids,
            live_sessions=self._live,
            n_threads=0,
            path=self._cfg.url,
            engine_version=f.version,
            devices=(),
            has_chat_template=f.has_chat_template,
            can_verify=f.can_verify,
            can_draft=f.can_draft,
            can_logprobs=f.can_logprobs,
            kind=self.kind,
        )

    async def vocab_fingerprint(self) -> str:
        return self.facts.vocab_fingerprint

    async def pieces(self) -> list[bytes]:
        if self._pieces is None:
            raise UnavailableError(f"adapter {self._cfg.model_id} has no vocabulary yet")
        return self._pieces

    async def special_tokens(self) -> list[int]:
        return list(self._special)

    # -- what a subclass provides -------------------------------------------------------

    @abc.abstractmethod
    async def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        """Provided by each adapter."""

    async def detokenize(self, tokens: Sequence[int], *, render_special: bool) -> bytes:
        self._check_tokens(tokens)
        pieces = await self.pieces()
        special = set(self._special)
        out = []
        for t in tokens:
            if t in special and render_special:
                out.append(self._special_text.get(t, b""))
            else:
                out.append(pieces[t])
        return b"".join(out)

    @abc.abstractmethod
    async def render_chat(
        self, messages: Sequence[Message], *, add_generation_prompt: bool, tools_json: str = ""
    ) -> tuple[str, list[int]]:
        """Provided by each adapter (the server's template, or the model's own)."""

    @abc.abstractmethod
    def _stream(self, req: StreamRequest) -> AsyncIterator[StreamedToken]:
        """Stream up to ``req.n`` tokens continuing ``req.tokens``."""

    async def _verify_draft(
        self, session: HttpSession, draft: list[int]
    ) -> tuple[int, int, tuple[TokenLogprob, ...]]:
        """Score ``draft`` in one pass: (accepted, next token, logprobs)."""
        raise InvalidRequestError(
            f"engine {self._cfg.model_id} ({self.kind} at {self._cfg.url}) cannot verify "
            "draft tokens in one pass; use it as a plain target (draft: none) or as a drafter"
        )

    # -- sessions -----------------------------------------------------------------------

    def _check_tokens(self, tokens: Sequence[int]) -> None:
        check_tokens(tokens, self.facts.n_vocab)

    async def open_session(
        self,
        prompt: Sequence[int],
        sampling: SamplingConfig,
        *,
        seed: int | None = None,
        top_logprobs: int = 0,
        logprobs: bool = False,
        grammar: GrammarSpec | None = None,
    ) -> tuple[HttpSession, int, float]:
        check_open(prompt, sampling, n_vocab=self.facts.n_vocab, ctx_size=self._cfg.ctx_size)
        if grammar is not None:
            raise InvalidRequestError(
                f"engine {self._cfg.model_id} ({self.kind}) cannot constrain its output with "
                "a grammar; serve this route from an embedded engine"
            )
        if self._live >= self._cfg.max_sessions:
            raise OverloadedError(
                f"engine {self._cfg.model_id} has {self._live} live sessions; retry later"
            )
        self._live += 1
        session = HttpSession(
            self,
            list(prompt),
            sampling,
            seed=seed,
            top_logprobs=top_logprobs,
            logprobs=logprobs or top_logprobs > 0,
        )
        return session, 0, 0.0

    def _session_released(self) -> None:
        self._live -= 1


class _End:
    """The read-ahead stream ended (the server stopped: limit, EOG or a stop)."""


_END = _End()


class _ReadAhead:
    """A task pumping one token stream into a queue; cancelling it closes the connection."""

    def __init__(self, source: AsyncIterator[StreamedToken]) -> None:
        self._queue: asyncio.Queue[StreamedToken | _End | Exception] = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._pump(source))
        self.received = 0

    async def _pump(self, source: AsyncIterator[StreamedToken]) -> None:
        try:
            async for item in source:
                self._queue.put_nowait(item)
            self._queue.put_nowait(_END)
        except Exception as exc:
            self._queue.put_nowait(exc)
        finally:
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    async def next(self) -> StreamedToken | _End:
        item = await self._queue.get()
        if isinstance(item, Exception):
            raise item
        if isinstance(item, StreamedToken):
            self.received += 1
        return item

    def cancel(self) -> None:
        self._task.cancel()


class HttpSession:
    """One request's sequence, kept here; the server sees it as a token-id prompt."""

    def __init__(
        self,
        engine: HttpEngine,
        prompt: list[int],
        sampling: SamplingConfig,
        *,
        seed: int | None,
        top_logprobs: int,
        logprobs: bool,
    ) -> None:
        self._e = engine
        self.tokens: list[int] = prompt
        self.prompt_len = len(prompt)
        self.sampling = sampling
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self.top_logprobs = top_logprobs
        self.logprobs = logprobs
        self.closed = False
        self._ahead: _ReadAhead | None = None

    @property
    def room(self) -> int:
        return self._e.cfg.ctx_size - len(self.tokens)

    def _next_seed(self) -> int | None:
        """A fresh seed per server request, derived from the session's own seed, so sampled
        output is reproducible for a seeded request and independent across requests."""
        if self.sampling.greedy:
            return self.seed
        return int(self._rng.integers(0, 2**31 - 1))

    def _stop_ahead(self) -> None:
        if self._ahead is not None:
            self._ahead.cancel()
            self._ahead = None

    def release(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._stop_ahead()
        self._e._session_released()

    # -- plain steps --------------------------------------------------------------------

    async def _next_plain(self) -> StreamedToken:
        for _ in range(2):
            if self._ahead is None:
                if self.room <= 0:
                    raise ContextLengthError("the session's context is full")
                n_probs = max(self.top_logprobs, 1) if self.logprobs else 0
                req = StreamRequest(
                    tokens=tuple(self.tokens),
                    n=min(self.room, self._e.cfg.readahead_tokens),
                    sampling=self.sampling,
                    seed=self._next_seed(),
                    n_probs=n_probs,
                )
                self._ahead = _ReadAhead(self._e._stream(req))
            try:
                item = await self._ahead.next()
            except BaseException:
                self._stop_ahead()
                raise
            if isinstance(item, StreamedToken):
                return item
            got = self._ahead.received
            self._ahead = None
            if got == 0:
                break
        raise UnavailableError(
            f"{self._e.kind} server at {self._e.cfg.url} stopped without producing a token"
        )

    async def verify(
        self, draft: Sequence[int], q: Sequence[SparseDist] | None = None
    ) -> VerifyResult:
        """``verify([])`` is one plain step; a non-empty draft needs an engine that can
        verify in one pass (else InvalidRequestError)."""
        rules.check_live(self.closed)
        t0 = time.perf_counter()
        if draft:
            cut, _ = rules.verify_draft(draft, q, room=self.room, n_vocab=self._e.facts.n_vocab)
            self._stop_ahead()
            accepted, nxt, lps = await self._e._verify_draft(self, cut)
            self.tokens = [*self.tokens, *cut[:accepted], nxt]
        else:
            step = await self._next_plain()
            self.tokens.append(step.token_id)
            accepted, nxt = 0, step.token_id
            lps = ()
            if self.logprobs and step.logprob is not None:
                lps = (replace(step.logprob, top=step.logprob.top[: self.top_logprobs]),)
        return VerifyResult(
            accepted=accepted,
            next_token=nxt,
            logprobs=lps,
            verify_ms=(time.perf_counter() - t0) * 1000.0,
            n_tokens=len(self.tokens),
            grammar_valid=len(cut) if draft else 0,
        )

    async def generate(
        self, n: int, stop_tokens: Sequence[int] = (), *, ignore_eos: bool = False
    ) -> AsyncIterator[tuple[int, TokenLogprob | None, GenerateStop | None]]:
        """Plain decoding: yields (token, logprob, stop reason or None) up to ``n`` tokens."""
        rules.check_live(self.closed)
        eog = self._e.eog
        stops = set(stop_tokens) | (set() if ignore_eos else set(eog))
        for i in range(n):
            if self.room <= 0:
                yield -1, None, GenerateStop.CONTEXT_FULL
                return
            res = await self.verify([])
            lp = res.logprobs[0] if res.logprobs else None
            if res.next_token in stops:
                why = GenerateStop.EOG if res.next_token in eog else GenerateStop.TOKEN
                yield res.next_token, lp, why
                return
            yield res.next_token, lp, GenerateStop.LENGTH if i == n - 1 else None

    async def forced(self) -> tuple[int, ...]:
        return ()  # no grammar (open refuses one)

    async def rewind(self, keep: int) -> int:
        rules.check_live(self.closed)
        rules.check_rewind(keep, len(self.tokens))
        self._stop_ahead()
        self.tokens = self.tokens[:keep]
        return len(self.tokens)

    # -- drafting -----------------------------------------------------------------------

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
        ``k`` tokens. Greedy sessions draft by argmax (one-hot); sampled ones sample from the
        server's post-sampling distribution cut to its ``top_m`` best, which is reported as q
        exactly (the server is asked for all of them)."""
        rules.check_live(self.closed)
        if not self._e.facts.can_draft:
            raise InvalidRequestError(
                f"engine {self._e.cfg.model_id} ({self._e.kind}) cannot draft token ids"
            )
        new = rules.draft_alignment(self.tokens, keep, append, n_vocab=self._e.facts.n_vocab)
        self._stop_ahead()
        self.tokens = new
        room = self._e.cfg.ctx_size - len(new)
        k = max(0, min(k, room))
        if k == 0:
            yield DraftEnd(DraftStop.CONTEXT_FULL if room <= 0 else DraftStop.LENGTH)
            return
        sampling = self.sampling
        m = top_m if top_m > 0 else 16
        if not sampling.greedy:
            top_k = min(sampling.top_k, m) if sampling.top_k > 0 else m
            sampling = replace(sampling, top_k=top_k)
        req = StreamRequest(
            tokens=tuple(new),
            n=k,
            sampling=sampling,
            seed=self._next_seed(),
            n_probs=1 if sampling.greedy else m,
            post_sampling=not sampling.greedy,
        )
        eog = self._e.eog
        stream = self._e._stream(req)
        try:
            async for step in stream:
                prob = step.prob if step.prob is not None else 1.0
                if prob < min_confidence:
                    yield DraftEnd(DraftStop.LOW_CONFIDENCE)
                    return
                self.tokens.append(step.token_id)
                yield DraftStep(
                    token_id=step.token_id, prob=prob, q=None if sampling.greedy else step.q
                )
                if step.token_id in eog:
                    yield DraftEnd(DraftStop.EOG)
                    return
            yield DraftEnd(DraftStop.LENGTH)
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
