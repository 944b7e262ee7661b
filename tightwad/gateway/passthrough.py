"""A route served by a text-only server we do not own (Ollama): its own text, its own counts.

Owns :class:`PassthroughBackend` (a :class:`~tightwad.gateway.types.Backend`), the
:class:`TextUpstream` seam it drives, and :class:`OllamaUpstream`, the one upstream built so
far. Such a server shows no token ids, so nothing is speculated or re-tokenized here: chat goes
through the server's own chat API (it applies the model's template), completions through its
raw completion API, and the answer is relayed as it streams.

Guarantees:

- ``max_tokens``, ``usage`` and ``finish_reason`` are the server's, in the model's real tokens
  (Ollama: ``num_predict``, ``prompt_eval_count`` / ``eval_count``, ``done_reason``);
- stop strings go to the server *and* are enforced here across chunk boundaries
  (:class:`~tightwad.spec.stops.StopScanner`): nothing from the start of a stop on is emitted,
  whatever the server does with them;
- the ``tightwad`` stats say ``mode: none``, no rounds, nothing drafted: it is not speculation;
- what the server cannot do (logprobs, ``logit_bias``, a prompt of token ids, a grammar,
  tools or tool-call history) is a 400 naming
  the parameter, never an approximation;
- a server error or an unreachable server is an UnavailableError (503 before the first byte,
  an SSE error event after it); abandoning the stream closes the upstream connection, which
  stops the server generating.

An OpenAI-compatible upstream fits the same seam (``/v1/chat/completions`` and
``/v1/completions`` streamed, ``usage`` from its last chunk); it is not built yet.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from tightwad.engine.adapters.ollama import OllamaChunk, OllamaClient, OllamaModel, ollama_options
from tightwad.errors import (
    InvalidRequestError,
    NotFoundError,
    UnavailableError,
    UnsupportedParameterError,
)
from tightwad.gateway.types import (
    ChatMessage,
    Finished,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    GenerationStats,
    RouteInfo,
    TextDelta,
    Usage,
)
from tightwad.logs import get_logger
from tightwad.spec.sampling import SamplingConfig
from tightwad.spec.stops import StopScanner

__all__ = [
    "OllamaUpstream",
    "PassthroughBackend",
    "TextChunk",
    "TextParams",
    "TextUpstream",
    "UpstreamFacts",
]

log = get_logger("tightwad.gateway.passthrough")

#: After a stop string was found here (the server let it through), chunks read on only to get
#: the server's final counts; past this many the stream is closed and the counts are ours.
DRAIN_LIMIT = 16


@dataclass(frozen=True, slots=True)
class TextParams:
    """What a text upstream is asked for (``max_tokens`` None: the server's limit)."""

    sampling: SamplingConfig
    seed: int | None
    max_tokens: int | None
    stop: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TextChunk:
    """Streamed text; the last chunk has ``done`` with the server's reason and counts."""

    text: str
    done: bool = False
    finish_reason: FinishReason | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prefill_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class UpstreamFacts:
    kind: str
    model: str
    n_ctx: int
    version: str = ""


class TextUpstream(Protocol):
    """A text-only server behind a route."""

    address: str

    async def start(self) -> UpstreamFacts: ...

    def chat(
        self, messages: Sequence[ChatMessage], params: TextParams
    ) -> AsyncIterator[TextChunk]: ...

    def complete(self, prompt: str, params: TextParams) -> AsyncIterator[TextChunk]: ...

    async def close(self) -> None: ...


class OllamaUpstream:
    """Ollama: ``/api/chat`` for chat, ``/api/generate`` with ``raw: true`` for completions."""

    def __init__(self, client: OllamaClient) -> None:
        self.client = client
        self.address = client.url

    async def start(self) -> UpstreamFacts:
        m: OllamaModel = await self.client.probe()
        return UpstreamFacts("ollama", m.name, m.n_ctx, f"ollama {m.version}".strip())

    def chat(self, messages: Sequence[ChatMessage], params: TextParams) -> AsyncIterator[TextChunk]:
        # Ollama's roles are system, user, assistant and tool; OpenAI's developer is a system.
        wire = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.content}
            for m in messages
        ]
        return self._chunks(self.client.chat(wire, self._options(params)), params)

    def complete(self, prompt: str, params: TextParams) -> AsyncIterator[TextChunk]:
        return self._chunks(self.client.generate(prompt, self._options(params)), params)

    @staticmethod
    def _options(p: TextParams) -> dict[str, object]:
        n = p.max_tokens if p.max_tokens is not None else -1
        return ollama_options(p.sampling, num_predict=n, seed=p.seed, stop=p.stop)

    @staticmethod
    async def _chunks(
        stream: AsyncIterator[OllamaChunk], p: TextParams
    ) -> AsyncIterator[TextChunk]:
        async with contextlib.aclosing(stream):  # type: ignore[type-var]
            async for c in stream:
                if not c.done:
                    yield TextChunk(text=c.text)
                    continue
                reason: FinishReason = "stop"
                if c.done_reason == "length":
                    reason = "length"
                elif c.done_reason != "stop":  # no done_reason: a full budget means it was cut
                    full = p.max_tokens is not None and (c.eval_count or 0) >= p.max_tokens
                    reason = "length" if full else "stop"
                yield TextChunk(
                    text=c.text,
                    done=True,
                    finish_reason=reason,
                    prompt_tokens=c.prompt_eval_count,
                    completion_tokens=c.eval_count,
                    prefill_ms=c.prompt_eval_ms,
                )
                return

    async def close(self) -> None:
        await self.client.close()


class PassthroughBackend:
    """A route whose target is a text-only server (see the module docstring)."""

    def __init__(self, name: str, upstream: TextUpstream) -> None:
        self.name = name
        self.upstream = upstream
        self._facts: UpstreamFacts | None = None
        self._error = ""

    async def start(self) -> None:
        """Probe the server (model present, able to generate); idempotent."""
        try:
            self._facts = await self.upstream.start()
        except UnavailableError as exc:
            self._error = exc.message
            raise
        self._error = ""
        log.info(
            "route_ready",
            route=self.name,
            target=self._facts.model,
            kind=self._facts.kind,
            draft_mode="none",
        )

    async def close(self) -> None:
        await self.upstream.close()

    def info(self) -> RouteInfo:
        f = self._facts
        return RouteInfo(
            name=self.name,
            target=f.model if f else "",
            draft_mode="none",
            draft=None,
            ready=f is not None,
            n_ctx=f.n_ctx if f else 0,
            can_verify=False,
            details={
                "target_address": self.upstream.address,
                "kind": f.kind if f else "",
                "version": f.version if f else "",
                "passthrough": True,
                "error": self._error,
            },
        )

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        if self._facts is None:
            raise UnavailableError(f"route {self.name} is not ready")
        _refuse_what_text_cannot_do(request, self._facts.kind)
        params = TextParams(
            sampling=request.sampling,
            seed=request.seed,
            max_tokens=request.max_tokens,
            stop=tuple(s for s in request.stop if s),
        )
        if request.messages is not None:
            stream = self.upstream.chat(request.messages, params)
        else:
            stream = self.upstream.complete(request.prompt or "", params)
        scanner = StopScanner(params.stop)
        echo = request.prompt if request.echo and request.messages is None else None
        streamed = drained = 0
        last: TextChunk | None = None
        async with contextlib.aclosing(stream):  # type: ignore[type-var]
            async for chunk in _translated(stream, self.name):
                if echo:  # only once the server answered: an error is still an HTTP error
                    yield TextDelta(text=echo)
                    echo = None
                if not scanner.stopped:
                    streamed += bool(chunk.text)
                    text = scanner.feed(chunk.text)
                    if text:
                        yield TextDelta(text=text)
                elif chunk.text:
                    drained += 1
                if chunk.done:
                    last = chunk
                    break
                if drained > DRAIN_LIMIT:
                    log.warning("upstream_ignored_stop", route=self.name, stop=scanner.matched)
                    break
        if last is None and not scanner.stopped:
            raise UnavailableError(
                f"{self._facts.kind} at {self.upstream.address} ended the stream without "
                "its final message"
            )
        if echo:
            yield TextDelta(text=echo)
        tail = scanner.flush()
        if tail:
            yield TextDelta(text=tail)
        reason: FinishReason = "stop" if scanner.stopped else (last.finish_reason or "stop")  # type: ignore[union-attr]
        prompt_tokens = last.prompt_tokens if last and last.prompt_tokens is not None else 0
        if last is not None and last.completion_tokens is not None:
            completion = last.completion_tokens
        else:  # the stream was cut here: Ollama streams one chunk per token
            completion = streamed
        yield Finished(
            finish_reason=reason,
            usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion),
            stats=GenerationStats(
                mode="none",
                plain_steps=completion,
                prefill_ms=last.prefill_ms if last else 0.0,
            ),
        )


async def _translated(stream: AsyncIterator[TextChunk], route: str) -> AsyncIterator[TextChunk]:
    """The upstream's chunks; a model gone from the server is the route's outage (503), not
    a model the client asked for that does not exist (404)."""
    try:
        async for chunk in stream:
            yield chunk
    except NotFoundError as exc:
        raise UnavailableError(f"route {route}: {exc.message}") from exc


def _refuse_what_text_cannot_do(r: GenerationRequest, kind: str) -> None:
    served = f"model {r.model} is served by {kind.capitalize()}, which"
    if r.logprobs or r.top_logprobs:
        raise UnsupportedParameterError(
            f"{served} returns no token probabilities; logprobs are not available",
            param="logprobs",
        )
    if r.sampling.logit_bias:
        raise UnsupportedParameterError(f"{served} has no logit bias", param="logit_bias")
    if r.prompt_tokens is not None:
        raise InvalidRequestError(
            f"{served} shows no token ids; send the prompt as text", param="prompt"
        )
    if r.grammar is not None:
        raise UnsupportedParameterError(
            f"{served} cannot be held to a grammar; response_format json_object / "
            "json_schema need a route served by a Tightwad engine",
            param="response_format",
        )
    if (r.tools and r.tool_choice.mode != "none") or any(
        m.tool_calls or m.tool_call_id for m in r.messages or ()
    ):
        raise UnsupportedParameterError(
            f"{served} gets no tools nor tool-call history from Tightwad; serve the model "
            "from a Tightwad engine to use tools",
            param="tools",
        )
