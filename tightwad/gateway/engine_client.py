"""gRPC client of the Engine service: one channel per engine, one stream per session.

:class:`RemoteSession` speaks the Session stream command by command (write, then read the
events of that command). Failures surface as :mod:`tightwad.errors` types; the stream is
cancelled on close, so the engine frees the sequence whatever happened.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import grpc

from tightwad.engine.contract import BatchOccupancy
from tightwad.engine.engine_wire import batch_from_pb
from tightwad.engine.grammar import GrammarSpec
from tightwad.engine.spec_wire import sampling_to_pb, sparse_to_pb
from tightwad.errors import InvalidRequestError, UnavailableError, from_grpc_status
from tightwad.gateway.tools.request import Tool
from tightwad.gateway.types import ChatMessage
from tightwad.rpc import client_channel, translate_rpc_error
from tightwad.spec.sampling import SamplingConfig, SparseDist
from tightwad.v1 import engine_pb2, engine_pb2_grpc

__all__ = [
    "ChatLike",
    "DraftProposal",
    "EngineClient",
    "GenerateEnd",
    "Generated",
    "Opened",
    "RemoteEngineInfo",
    "RemoteSession",
    "Verified",
    "chat_messages_pb",
    "tools_json",
]

# A chat message: a gateway ChatMessage (tool calls and call id included), or (role, content,
# name).
ChatLike: TypeAlias = ChatMessage | tuple[str, str, str]


def chat_messages_pb(messages: Sequence[ChatLike]) -> list[engine_pb2.ChatMessage]:
    """Messages on the wire: an assistant's calls as OpenAI's ``tool_calls`` JSON array, a
    ``tool`` message's ``tool_call_id``."""
    out = []
    for m in messages:
        if isinstance(m, tuple):
            role, content, name = m
            out.append(engine_pb2.ChatMessage(role=role, content=content, name=name))
            continue
        calls = json.dumps([c.as_openai() for c in m.tool_calls]) if m.tool_calls else ""
        out.append(
            engine_pb2.ChatMessage(
                role=m.role,
                content=m.content,
                name=m.name,
                tool_calls_json=calls,
                tool_call_id=m.tool_call_id,
            )
        )
    return out


def tools_json(tools: Sequence[Tool] | Sequence[Mapping[str, Any]]) -> str:
    """OpenAI's ``tools`` array as JSON (empty: no tools)."""
    if not tools:
        return ""
    return json.dumps([t.as_openai() if isinstance(t, Tool) else dict(t) for t in tools])


@dataclass(frozen=True, slots=True)
class RemoteEngineInfo:
    model: str
    model_name: str
    architecture: str
    n_ctx: int
    n_vocab: int
    vocab_fingerprint: str
    can_verify: bool
    can_draft: bool
    can_render_chat: bool
    eog_token_ids: frozenset[int]
    bos_token_id: int
    live_sessions: int
    kind: str
    # Live occupancy of the engine's continuous batching (all zero, ``enabled`` False, for an
    # engine that does not batch or does not say).
    batch: BatchOccupancy = field(default_factory=BatchOccupancy)


@dataclass(frozen=True, slots=True)
class Opened:
    prompt_tokens: tuple[int, ...]
    cached_tokens: int
    prefill_ms: float
    n_ctx: int


@dataclass(frozen=True, slots=True)
class Verified:
    """One Verify round. Under a grammar: ``grammar_valid`` draft tokens were allowed (the
    engine cut the draft at the first one it forbids), ``forced`` are the tokens the grammar
    forces after ``next_token`` (a free draft for the next round), and ``grammar_done`` says
    the grammar is complete after ``next_token`` (the output ends there)."""

    accepted: int
    next_token: int
    logprobs: tuple[Any, ...]
    verify_ms: float
    grammar_valid: int = 0
    forced: tuple[int, ...] = ()
    grammar_done: bool = False


@dataclass(frozen=True, slots=True)
class Generated:
    """One token of a Generate stream (``logprob``: a TokenLogprob message, when asked)."""

    token: int
    logprob: Any | None


@dataclass(frozen=True, slots=True)
class GenerateEnd:
    """The last item of a Generate stream: why it ended (``stop``: a GenerateStop name, e.g.
    ``GENERATE_STOP_GRAMMAR`` once the grammar is complete) and the tokens the grammar forces
    after its last token."""

    stop: str
    forced: tuple[int, ...] = ()

    @property
    def grammar_done(self) -> bool:
        return self.stop == "GENERATE_STOP_GRAMMAR"


@dataclass(frozen=True, slots=True)
class DraftProposal:
    tokens: tuple[int, ...]
    probs: tuple[float, ...]
    q: tuple[SparseDist, ...] | None
    draft_ms: float
    stop: str


class EngineClient:
    """A connection to one engine (agent address + model id)."""

    def __init__(
        self,
        address: str,
        model: str = "",
        *,
        token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        rpc_timeout_s: float = 30.0,
    ) -> None:
        self.address = address
        self.model = model
        self._channel = client_channel(address, token=token, credentials=credentials)
        self._stub = engine_pb2_grpc.EngineServiceStub(self._channel)
        self._timeout = rpc_timeout_s

    async def close(self) -> None:
        await self._channel.close()

    def _what(self, rpc: str) -> str:
        return f"engine {self.model or '(default)'} at {self.address} {rpc}"

    async def info(self) -> RemoteEngineInfo:
        try:
            r = await self._stub.Info(
                engine_pb2.InfoRequest(model=self.model), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise translate_rpc_error(exc, self._what("Info")) from exc
        return RemoteEngineInfo(
            model=r.model,
            model_name=r.model_name,
            architecture=r.architecture,
            n_ctx=r.n_ctx,
            n_vocab=r.n_vocab,
            vocab_fingerprint=r.vocab_fingerprint,
            can_verify=r.capabilities.can_verify,
            can_draft=r.capabilities.can_draft,
            can_render_chat=r.capabilities.can_render_chat,
            eog_token_ids=frozenset(r.eog_token_ids),
            bos_token_id=r.bos_token_id,
            live_sessions=r.live_sessions,
            kind=engine_pb2.EngineKind.Name(r.kind),
            batch=batch_from_pb(r),
        )

    async def vocabulary(self) -> tuple[list[bytes], frozenset[int], str]:
        try:
            r = await self._stub.Vocabulary(
                engine_pb2.VocabularyRequest(model=self.model), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise translate_rpc_error(exc, self._what("Vocabulary")) from exc
        return list(r.pieces), frozenset(r.special_token_ids), r.vocab_fingerprint

    async def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        try:
            r = await self._stub.Tokenize(
                engine_pb2.TokenizeRequest(
                    model=self.model,
                    text=text,
                    add_special=add_special,
                    parse_special=parse_special,
                ),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise translate_rpc_error(exc, self._what("Tokenize")) from exc
        return list(r.token_ids)

    async def detokenize(self, tokens: Sequence[int], *, render_special: bool) -> str:
        try:
            r = await self._stub.Detokenize(
                engine_pb2.DetokenizeRequest(
                    model=self.model, token_ids=list(tokens), render_special=render_special
                ),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise translate_rpc_error(exc, self._what("Detokenize")) from exc
        return str(r.text)

    async def render_chat(
        self,
        messages: Sequence[ChatLike],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[Tool] = (),
    ) -> list[int]:
        """The prompt tokens of ``messages`` rendered by the model's own template (with
        ``tools`` as its ``tools`` variable and the messages' tool calls / call ids)."""
        _, tokens = await self.render_chat_text(
            messages, add_generation_prompt=add_generation_prompt, tools=tools
        )
        return tokens

    async def render_chat_text(
        self,
        messages: Sequence[ChatLike],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[Tool] | Sequence[Mapping[str, Any]] = (),
    ) -> tuple[str, list[int]]:
        """As :meth:`render_chat`, with the rendered text too. ``tools`` may also be given
        as OpenAI's JSON objects."""
        req = engine_pb2.RenderChatRequest(
            model=self.model,
            messages=chat_messages_pb(messages),
            add_generation_prompt=add_generation_prompt,
            tools_json=tools_json(tools),
        )
        try:
            r = await self._stub.RenderChat(req, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise translate_rpc_error(exc, self._what("RenderChat")) from exc
        return str(r.text), list(r.token_ids)

    def session(self, *, timeout_s: float | None = None) -> RemoteSession:
        return RemoteSession(self, timeout_s=timeout_s)


class RemoteSession:
    """One Session stream. ``open`` first; ``close`` (or ``abort``) always."""

    def __init__(self, client: EngineClient, *, timeout_s: float | None) -> None:
        self._client = client
        self._call: Any = client._stub.Session(timeout=timeout_s)
        self._seq = 0
        self.closed = False
        # A Generate command whose events were not all read: the stream can carry no other
        # command, and closing it must cancel (the engine would otherwise decode on).
        self._streaming = False
        # Verify commands sent whose results were not read yet (closing then cancels too).
        self._pending = 0

    async def _send(self, **command: Any) -> int:
        self._seq += 1
        try:
            await self._call.write(engine_pb2.SessionRequest(seq=self._seq, **command))
        except grpc.aio.AioRpcError as exc:
            raise translate_rpc_error(exc, self._client._what("Session")) from exc
        except asyncio.InvalidStateError as exc:
            raise UnavailableError(f"{self._client._what('Session')}: stream closed") from exc
        return self._seq

    async def _read(self) -> engine_pb2.SessionResponse:
        try:
            resp = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise translate_rpc_error(exc, self._client._what("Session")) from exc
        if resp is grpc.aio.EOF:
            code = await self._call.code()
            details = await self._call.details()
            if code is not None and code != grpc.StatusCode.OK:
                raise from_grpc_status(code, f"{self._client._what('Session')}: {details}")
            raise UnavailableError(f"{self._client._what('Session')}: stream ended")
        return resp  # type: ignore[no-any-return]

    async def open(
        self,
        prompt_tokens: Sequence[int],
        sampling: SamplingConfig,
        *,
        seed: int | None = None,
        top_logprobs: int = 0,
        logprobs: bool = False,
        grammar: GrammarSpec | None = None,
        chat: Sequence[ChatLike] | None = None,
        tools: Sequence[Tool] = (),
    ) -> Opened:
        """Open the session on ``prompt_tokens``; with ``grammar``, every token it emits is
        constrained by it (the engine compiles it over its own vocabulary). With ``chat``
        (``prompt_tokens`` then ignored), the engine renders the messages and ``tools`` with
        the model's template itself; ``Opened.prompt_tokens`` says what it rendered."""
        prompt: dict[str, Any] = (
            {"tokens": engine_pb2.TokenList(token_ids=list(prompt_tokens))}
            if chat is None
            else {
                "chat": engine_pb2.ChatPrompt(
                    messages=chat_messages_pb(chat),
                    add_generation_prompt=True,
                    tools_json=tools_json(tools),
                )
            }
        )
        await self._send(
            open=engine_pb2.OpenCommand(
                model=self._client.model,
                **prompt,
                sampling=sampling_to_pb(sampling, seed),
                top_logprobs=top_logprobs,
                logprobs=logprobs,
                grammar=(
                    engine_pb2.Grammar(kind=grammar.kind, source=grammar.source)
                    if grammar is not None
                    else None
                ),
            )
        )
        resp = await self._read()
        if resp.WhichOneof("event") != "opened":
            raise InvalidRequestError(f"unexpected {resp.WhichOneof('event')} after open")
        o = resp.opened
        return Opened(
            prompt_tokens=tuple(o.prompt_token_ids),
            cached_tokens=o.cached_tokens,
            prefill_ms=o.prefill_ms,
            n_ctx=o.n_ctx,
        )

    async def verify(self, draft: Sequence[int], q: Sequence[SparseDist] | None = None) -> Verified:
        await self.send_verify(draft, q)
        return await self.read_verified()

    async def send_verify(
        self, draft: Sequence[int] = (), q: Sequence[SparseDist] | None = None
    ) -> None:
        """Queue a Verify on the engine without waiting; :meth:`read_verified` takes its result
        (results come back in the order sent). Used to keep the engine busy: the next plain
        step is queued before this one's result has been looked at."""
        probs = [sparse_to_pb(d) for d in q] if q else []
        await self._send(
            verify=engine_pb2.VerifyCommand(draft_token_ids=list(draft), draft_probs=probs)
        )
        self._pending += 1

    async def read_verified(self) -> Verified:
        resp = await self._read()
        self._pending -= 1
        if resp.WhichOneof("event") != "verified":
            raise InvalidRequestError(f"unexpected {resp.WhichOneof('event')} after verify")
        v = resp.verified
        return Verified(
            accepted=v.accepted,
            next_token=v.next_token_id,
            logprobs=tuple(v.logprobs),
            verify_ms=v.verify_ms,
            grammar_valid=v.grammar_valid,
            forced=tuple(v.forced_token_ids),
            grammar_done=v.grammar_done,
        )

    async def draft(
        self,
        k: int,
        *,
        keep: int,
        append: Sequence[int] = (),
        min_confidence: float = 0.0,
        top_m: int = 0,
    ) -> DraftProposal:
        await self._send(
            draft=engine_pb2.DraftCommand(
                k=k, keep=keep, append=list(append), min_confidence=min_confidence, top_m=top_m
            )
        )
        tokens: list[int] = []
        probs: list[float] = []
        qs: list[SparseDist] = []
        sampled = False
        while True:
            resp = await self._read()
            kind = resp.WhichOneof("event")
            if kind == "draft_token":
                d = resp.draft_token
                tokens.append(d.token_id)
                probs.append(d.prob)
                if d.HasField("q") and d.q.token_ids:
                    sampled = True
                    qs.append(SparseDist.of(list(d.q.token_ids), list(d.q.probs)))
                else:
                    qs.append(SparseDist.one_hot(d.token_id))
            elif kind == "draft_done":
                dd = resp.draft_done
                return DraftProposal(
                    tokens=tuple(tokens),
                    probs=tuple(probs),
                    q=tuple(qs) if sampled else None,
                    draft_ms=dd.draft_ms,
                    stop=engine_pb2.DraftStop.Name(dd.stop),
                )
            else:
                raise InvalidRequestError(f"unexpected {kind} during draft")

    async def generate(
        self, n: int, stop_token_ids: Sequence[int] = ()
    ) -> AsyncGenerator[Generated | GenerateEnd, None]:
        """Plain decoding of up to ``n`` tokens, streamed as the engine produces them (no round
        trip per token), then one :class:`GenerateEnd`. The engine stops early at an EOG token
        (yielded) or a stop token, or after the token that completes the session's grammar.
        Leaving the iteration early leaves the stream busy: only :meth:`close`/:meth:`abort`
        may follow, and they cancel the rest."""
        await self._send(
            generate=engine_pb2.GenerateCommand(n=n, stop_token_ids=list(stop_token_ids))
        )
        self._streaming = True
        while True:
            resp = await self._read()
            kind = resp.WhichOneof("event")
            if kind == "token":
                t = resp.token
                yield Generated(t.token_id, t.logprob if t.HasField("logprob") else None)
            elif kind == "generate_done":
                self._streaming = False
                done = resp.generate_done
                yield GenerateEnd(
                    stop=engine_pb2.GenerateStop.Name(done.stop),
                    forced=tuple(done.forced_token_ids),
                )
                return
            else:
                raise InvalidRequestError(f"unexpected {kind} during generate")

    async def close(self) -> None:
        if self.closed:
            return
        if self._streaming or self._pending:
            self.abort()
            return
        self.closed = True
        try:
            await self._send(close=engine_pb2.CloseCommand())
            await self._read()
            await self._call.done_writing()
        except Exception:
            self._call.cancel()

    def abort(self) -> None:
        """Cancel the stream without waiting (the engine frees the sequence)."""
        self.closed = True
        self._call.cancel()
