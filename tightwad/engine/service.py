"""The gRPC Engine service: a thin servicer over the engines loaded in this agent.

Each ``Session`` stream is one engine session: commands in, events out, in order. The
session's sequence is released in ``finally`` whatever ends the stream (Close, client cancel,
disconnect, deadline), so the live session count returns to zero.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc

from tightwad.engine import engine_wire as convert
from tightwad.engine import spec_wire as wire
from tightwad.engine.contract import DraftEnd, DraftStop, EngineLike, GenerateStop, SessionLike
from tightwad.engine.grammar import check_grammar
from tightwad.errors import InvalidRequestError, NotFoundError
from tightwad.v1 import engine_pb2, engine_pb2_grpc

__all__ = ["EngineRegistry", "EngineServicer"]

_DRAFT_STOP = {
    DraftStop.LENGTH: engine_pb2.DRAFT_STOP_LENGTH,
    DraftStop.LOW_CONFIDENCE: engine_pb2.DRAFT_STOP_LOW_CONFIDENCE,
    DraftStop.EOG: engine_pb2.DRAFT_STOP_EOG,
    DraftStop.CONTEXT_FULL: engine_pb2.DRAFT_STOP_CONTEXT_FULL,
}
_GEN_STOP = {
    GenerateStop.LENGTH: engine_pb2.GENERATE_STOP_LENGTH,
    GenerateStop.EOG: engine_pb2.GENERATE_STOP_EOG,
    GenerateStop.TOKEN: engine_pb2.GENERATE_STOP_TOKEN,
    GenerateStop.CONTEXT_FULL: engine_pb2.GENERATE_STOP_CONTEXT_FULL,
    GenerateStop.GRAMMAR: engine_pb2.GENERATE_STOP_GRAMMAR,
}


class EngineRegistry:
    """The engines of one agent, by model id. The first one loaded is the default."""

    def __init__(self) -> None:
        self._engines: dict[str, EngineLike] = {}

    def add(self, engine: EngineLike) -> None:
        self._engines[engine.cfg.model_id] = engine

    def remove(self, model_id: str) -> EngineLike:
        try:
            return self._engines.pop(model_id)
        except KeyError:
            raise NotFoundError(f"no model {model_id!r} is loaded on this agent") from None

    def get(self, model_id: str) -> EngineLike:
        if not model_id:
            if not self._engines:
                raise NotFoundError("no model is loaded on this agent")
            return next(iter(self._engines.values()))
        try:
            return self._engines[model_id]
        except KeyError:
            known = ", ".join(sorted(self._engines)) or "none"
            raise NotFoundError(
                f"model {model_id!r} is not loaded here (loaded: {known})"
            ) from None

    def all(self) -> list[EngineLike]:
        return list(self._engines.values())

    async def close(self) -> None:
        for engine in list(self._engines.values()):
            await engine.close()
        self._engines.clear()


class EngineServicer(engine_pb2_grpc.EngineServiceServicer):
    def __init__(self, registry: EngineRegistry) -> None:
        self._reg = registry

    async def Info(
        self, request: engine_pb2.InfoRequest, context: grpc.aio.ServicerContext
    ) -> engine_pb2.InfoResponse:
        return convert.info_to_pb(await self._reg.get(request.model).info())

    async def Tokenize(
        self, request: engine_pb2.TokenizeRequest, context: grpc.aio.ServicerContext
    ) -> engine_pb2.TokenizeResponse:
        engine = self._reg.get(request.model)
        tokens = await engine.tokenize(
            request.text, add_special=request.add_special, parse_special=request.parse_special
        )
        return engine_pb2.TokenizeResponse(token_ids=tokens)

    async def Detokenize(
        self, request: engine_pb2.DetokenizeRequest, context: grpc.aio.ServicerContext
    ) -> engine_pb2.DetokenizeResponse:
        engine = self._reg.get(request.model)
        raw = await engine.detokenize(
            list(request.token_ids), render_special=request.render_special
        )
        return engine_pb2.DetokenizeResponse(text=raw.decode("utf-8", errors="replace"), raw=raw)

    async def Vocabulary(
        self, request: engine_pb2.VocabularyRequest, context: grpc.aio.ServicerContext
    ) -> engine_pb2.VocabularyResponse:
        engine = self._reg.get(request.model)
        return engine_pb2.VocabularyResponse(
            pieces=await engine.pieces(),
            special_token_ids=await engine.special_tokens(),
            vocab_fingerprint=await engine.vocab_fingerprint(),
        )

    async def RenderChat(
        self, request: engine_pb2.RenderChatRequest, context: grpc.aio.ServicerContext
    ) -> engine_pb2.RenderChatResponse:
        engine = self._reg.get(request.model)
        text, tokens = await engine.render_chat(
            convert.messages_from_pb(request.messages),
            add_generation_prompt=request.add_generation_prompt,
            tools_json=request.tools_json,
        )
        return engine_pb2.RenderChatResponse(text=text, token_ids=tokens)

    async def Session(
        self,
        request_iterator: AsyncIterator[engine_pb2.SessionRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[engine_pb2.SessionResponse]:
        session: SessionLike | None = None
        try:
            async for req in request_iterator:
                kind = req.WhichOneof("command")
                if kind == "open":
                    if session is not None:
                        raise InvalidRequestError("the session is already open")
                    session, event = await self._open(req.open)
                    yield engine_pb2.SessionResponse(seq=req.seq, opened=event)
                    continue
                if kind == "close":
                    yield engine_pb2.SessionResponse(seq=req.seq, closed=engine_pb2.ClosedEvent())
                    return
                if session is None:
                    raise InvalidRequestError(f"{kind} before open: send Open first")
                async for resp in self._command(session, req):
                    yield resp
        finally:
            if session is not None:
                session.release()

    async def _open(
        self, cmd: engine_pb2.OpenCommand
    ) -> tuple[SessionLike, engine_pb2.OpenedEvent]:
        engine = self._reg.get(cmd.model)
        which = cmd.WhichOneof("prompt")
        if which == "tokens":
            prompt = list(cmd.tokens.token_ids)
        elif which == "text":
            prompt = await engine.tokenize(
                cmd.text, add_special=cmd.add_special, parse_special=True
            )
        elif which == "chat":
            _, prompt = await engine.render_chat(
                convert.messages_from_pb(cmd.chat.messages),
                add_generation_prompt=cmd.chat.add_generation_prompt,
                tools_json=cmd.chat.tools_json,
            )
        else:
            raise InvalidRequestError("open needs a prompt: tokens, text or chat")
        sampling, seed = wire.sampling_from_pb(cmd.sampling)
        grammar = convert.grammar_from_pb(cmd)
        if grammar is not None:
            check_grammar(grammar, param="grammar")
        session, cached, ms = await engine.open_session(
            prompt,
            sampling,
            seed=seed,
            top_logprobs=cmd.top_logprobs,
            logprobs=cmd.logprobs,
            grammar=grammar,
        )
        return session, engine_pb2.OpenedEvent(
            prompt_tokens=len(prompt),
            cached_tokens=cached,
            prompt_token_ids=prompt,
            prefill_ms=ms,
            n_ctx=engine.cfg.ctx_size,
        )

    async def _command(
        self, session: SessionLike, req: engine_pb2.SessionRequest
    ) -> AsyncIterator[engine_pb2.SessionResponse]:
        kind = req.WhichOneof("command")
        seq = req.seq
        if kind == "verify":
            cmd = req.verify
            q = [wire.sparse_from_pb(d) for d in cmd.draft_probs] or None
            res = await session.verify(list(cmd.draft_token_ids), q)
            yield engine_pb2.SessionResponse(
                seq=seq,
                verified=engine_pb2.VerifyResultEvent(
                    accepted=res.accepted,
                    next_token_id=res.next_token,
                    logprobs=[convert.logprob_to_pb(lp) for lp in res.logprobs],
                    verify_ms=res.verify_ms,
                    n_tokens=res.n_tokens,
                    grammar_valid=res.grammar_valid,
                    forced_token_ids=res.forced,
                    grammar_done=res.grammar_done,
                ),
            )
        elif kind == "draft":
            d = req.draft

            t0 = time.perf_counter()
            count = 0
            stop = DraftStop.LENGTH
            async for step in session.draft(
                d.k,
                keep=d.keep,
                append=list(d.append),
                min_confidence=d.min_confidence,
                top_m=d.top_m,
            ):
                if isinstance(step, DraftEnd):
                    stop = step.stop
                    continue
                count += 1
                yield engine_pb2.SessionResponse(
                    seq=seq,
                    draft_token=engine_pb2.DraftTokenEvent(
                        token_id=step.token_id,
                        prob=step.prob,
                        q=wire.sparse_to_pb(step.q) if step.q is not None else None,
                    ),
                )
            yield engine_pb2.SessionResponse(
                seq=seq,
                draft_done=engine_pb2.DraftDoneEvent(
                    count=count,
                    stop=_DRAFT_STOP[stop],
                    draft_ms=(time.perf_counter() - t0) * 1000.0,
                    n_tokens=len(session.tokens),
                ),
            )
        elif kind == "generate":
            g = req.generate

            t0 = time.perf_counter()
            count = 0
            why_end = GenerateStop.LENGTH
            async for tok, lp, why in session.generate(
                g.n, list(g.stop_token_ids), ignore_eos=g.ignore_eos
            ):
                if tok >= 0:
                    count += 1
                    yield engine_pb2.SessionResponse(
                        seq=seq,
                        token=engine_pb2.TokenEvent(
                            token_id=tok,
                            logprob=convert.logprob_to_pb(lp) if lp is not None else None,
                        ),
                    )
                if why is not None:
                    why_end = GenerateStop(why)
            yield engine_pb2.SessionResponse(
                seq=seq,
                generate_done=engine_pb2.GenerateDoneEvent(
                    count=count,
                    stop=_GEN_STOP[why_end],
                    generate_ms=(time.perf_counter() - t0) * 1000.0,
                    n_tokens=len(session.tokens),
                    forced_token_ids=await session.forced(),
                ),
            )
        elif kind == "rewind":
            n = await session.rewind(req.rewind.keep)
            yield engine_pb2.SessionResponse(seq=seq, rewound=engine_pb2.RewoundEvent(n_tokens=n))
        else:
            raise InvalidRequestError(f"unknown session command {kind!r}")
