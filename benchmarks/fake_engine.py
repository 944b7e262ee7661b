"""A trivially fast Engine: the real ``EngineService`` servicer interface answering every command
at once, so that what a benchmark measures over it is the gateway and the gRPC session stream,
not a model.

The vocabulary has :data:`VOCAB` tokens (token 0 is the only end-of-generation token, never
emitted; token i >= 1 renders as ``"t<i> "``). Verify accepts every draft token and emits the next
token of a fixed cycle; Draft proposes the cycle; Generate streams it. Served with the project's
own :class:`~tightwad.rpc.GrpcServer` (same interceptors as an agent).

Run standalone (one process per engine, as on a real host)::

    python -m benchmarks.fake_engine --listen 127.0.0.1:0    # prints "READY <address>"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc

from tightwad.logs import configure_logging
from tightwad.rpc import GrpcServer, ServiceRegistration
from tightwad.v1 import engine_pb2, engine_pb2_grpc

__all__ = ["VOCAB", "FakeEngineServicer", "serve"]

VOCAB = 256
_PIECES = [b""] + [f"t{i} ".encode() for i in range(1, VOCAB)]
_FINGERPRINT = "fake-engine-256"


def _next(token: int) -> int:
    return token % (VOCAB - 1) + 1


def _tokens(text: str) -> list[int]:
    return [b % (VOCAB - 1) + 1 for b in text.encode()][:4096] or [1]


class FakeEngineServicer(engine_pb2_grpc.EngineServiceServicer):
    """Info / Tokenize / Detokenize / Vocabulary / RenderChat / Session, all instant."""

    def __init__(
        self,
        model: str = "fake",
        record: Path | None = None,
        verify_ms: Callable[[int], float] | None = None,
    ) -> None:
        self.model = model
        # The engine-side verify time each Verify reports, by batch width (drafts + 1), so a
        # test can give the gateway a cost curve to shape drafts by; None reports 0 (unknown).
        self.verify_ms = verify_ms
        # With ``record``, each session appends one JSON line: the arrival times (perf_counter
        # seconds) of its Verify commands. Their gaps are whole rounds of whoever drives the
        # session, since answering takes this engine no time.
        self.record = record

    async def Info(
        self, request: engine_pb2.InfoRequest, context: grpc.aio.ServicerContext
    ) -> engine_pb2.InfoResponse:
        return engine_pb2.InfoResponse(
            model=self.model,
            model_name="fake",
            architecture="fake",
            n_layers=1,
            n_ctx=1 << 20,
            n_ctx_train=1 << 20,
            n_vocab=VOCAB,
            vocab_fingerprint=_FINGERPRINT,
            capabilities=engine_pb2.Capabilities(
                can_verify=True, can_draft=True, can_render_chat=True, can_logprobs=False
            ),
            kind=engine_pb2.ENGINE_KIND_EMBEDDED,
            bos_token_id=-1,
            eog_token_ids=[0],
            engine_version="fake",
        )

    async def Tokenize(
        self, request: engine_pb2.TokenizeRequest, context: grpc.aio.ServicerContext
    ) -> engine_pb2.TokenizeResponse:
        return engine_pb2.TokenizeResponse(token_ids=_tokens(request.text))

    async def Detokenize(
        self, request: engine_pb2.DetokenizeRequest, context: grpc.aio.ServicerContext
    ) -> engine_pb2.DetokenizeResponse:
        raw = b"".join(_PIECES[t] for t in request.token_ids if 0 <= t < VOCAB)
        return engine_pb2.DetokenizeResponse(text=raw.decode(), raw=raw)

    async def Vocabulary(
        self, request: engine_pb2.VocabularyRequest, context: grpc.aio.ServicerContext
    ) -> engine_pb2.VocabularyResponse:
        return engine_pb2.VocabularyResponse(
            pieces=_PIECES, special_token_ids=[0], vocab_fingerprint=_FINGERPRINT
        )

    async def RenderChat(
        self, request: engine_pb2.RenderChatRequest, context: grpc.aio.ServicerContext
    ) -> engine_pb2.RenderChatResponse:
        text = "".join(f"{m.role}: {m.content}\n" for m in request.messages)
        return engine_pb2.RenderChatResponse(text=text, token_ids=_tokens(text))

    async def Session(
        self,
        request_iterator: AsyncIterator[engine_pb2.SessionRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[engine_pb2.SessionResponse]:
        arrivals: list[float] = []
        try:
            async for resp in self._session(request_iterator, arrivals):
                yield resp
        finally:
            if self.record is not None and arrivals:
                with self.record.open("a") as f:
                    f.write(json.dumps(arrivals) + "\n")

    async def _session(
        self, request_iterator: AsyncIterator[engine_pb2.SessionRequest], arrivals: list[float]
    ) -> AsyncIterator[engine_pb2.SessionResponse]:
        last = 1
        n = 0
        async for req in request_iterator:
            kind = req.WhichOneof("command")
            seq = req.seq
            if kind == "open":
                prompt = list(req.open.tokens.token_ids) or _tokens(req.open.text)
                last, n = prompt[-1], len(prompt)
                yield engine_pb2.SessionResponse(
                    seq=seq,
                    opened=engine_pb2.OpenedEvent(
                        prompt_tokens=n, prompt_token_ids=prompt, n_ctx=1 << 20
                    ),
                )
            elif kind == "verify":
                arrivals.append(time.perf_counter())
                drafts = list(req.verify.draft_token_ids)
                last = _next(drafts[-1] if drafts else last)
                n += len(drafts) + 1
                yield engine_pb2.SessionResponse(
                    seq=seq,
                    verified=engine_pb2.VerifyResultEvent(
                        accepted=len(drafts),
                        next_token_id=last,
                        n_tokens=n,
                        verify_ms=self.verify_ms(len(drafts) + 1) if self.verify_ms else 0.0,
                    ),
                )
            elif kind == "draft":
                t = last
                for _ in range(req.draft.k):
                    t = _next(t)
                    yield engine_pb2.SessionResponse(
                        seq=seq, draft_token=engine_pb2.DraftTokenEvent(token_id=t, prob=1.0)
                    )
                yield engine_pb2.SessionResponse(
                    seq=seq,
                    draft_done=engine_pb2.DraftDoneEvent(
                        count=req.draft.k, stop=engine_pb2.DRAFT_STOP_LENGTH, n_tokens=n
                    ),
                )
            elif kind == "generate":
                for _ in range(req.generate.n):
                    last = _next(last)
                    n += 1
                    yield engine_pb2.SessionResponse(
                        seq=seq, token=engine_pb2.TokenEvent(token_id=last)
                    )
                yield engine_pb2.SessionResponse(
                    seq=seq,
                    generate_done=engine_pb2.GenerateDoneEvent(
                        count=req.generate.n, stop=engine_pb2.GENERATE_STOP_LENGTH, n_tokens=n
                    ),
                )
            elif kind == "rewind":
                n = min(n, req.rewind.keep)
                yield engine_pb2.SessionResponse(
                    seq=seq, rewound=engine_pb2.RewoundEvent(n_tokens=n)
                )
            elif kind == "close":
                yield engine_pb2.SessionResponse(seq=seq, closed=engine_pb2.ClosedEvent())
                return


def registration(
    model: str = "fake",
    record: Path | None = None,
    verify_ms: Callable[[int], float] | None = None,
) -> ServiceRegistration:
    return ServiceRegistration(
        name=engine_pb2.DESCRIPTOR.services_by_name["EngineService"].full_name,
        servicer=FakeEngineServicer(model, record, verify_ms),
        add=engine_pb2_grpc.add_EngineServiceServicer_to_server,
    )


async def serve(listen: str, record: Path | None = None) -> None:
    configure_logging("warning")
    server = GrpcServer([registration(record=record)], address=listen)
    await server.start()
    print(f"READY {server.bound_address}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0.2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fake_engine")
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--record", type=Path, help="append each session's Verify arrival times")
    args = p.parse_args(argv)
    asyncio.run(serve(args.listen, args.record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
