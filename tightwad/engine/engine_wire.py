"""Protobuf <-> domain conversion for the Engine service (the wire stays at this edge)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from tightwad.engine.contract import BatchOccupancy, EngineInfo, Message, TokenLogprob
from tightwad.v1 import common_pb2, engine_pb2

if TYPE_CHECKING:
    from tightwad.engine.grammar import GrammarSpec

__all__ = [
    "batch_from_pb",
    "grammar_from_pb",
    "info_to_pb",
    "logprob_to_pb",
    "messages_from_pb",
]

_KINDS: dict[str, engine_pb2.EngineKind.ValueType] = {
    "embedded": engine_pb2.ENGINE_KIND_EMBEDDED,
    "llama_server": engine_pb2.ENGINE_KIND_LLAMA_SERVER,
    "ollama": engine_pb2.ENGINE_KIND_OLLAMA,
    "openai": engine_pb2.ENGINE_KIND_OPENAI,
}


def logprob_to_pb(lp: TokenLogprob) -> common_pb2.TokenLogprob:
    return common_pb2.TokenLogprob(
        token_id=lp.token_id,
        logprob=lp.logprob,
        top=[common_pb2.TopLogprob(token_id=t, logprob=v) for t, v in lp.top],
    )


def messages_from_pb(msgs: Iterable[engine_pb2.ChatMessage]) -> list[Message]:
    return [
        Message(
            role=m.role,
            content=m.content,
            name=m.name,
            tool_calls_json=m.tool_calls_json,
            tool_call_id=m.tool_call_id,
        )
        for m in msgs
    ]


def grammar_from_pb(cmd: engine_pb2.OpenCommand) -> GrammarSpec | None:
    """The session's grammar (unset = unconstrained); a bad kind is an InvalidRequestError."""
    if not cmd.HasField("grammar"):
        return None
    from tightwad.engine.grammar import GrammarSpec

    return GrammarSpec(cmd.grammar.kind, cmd.grammar.source)  # type: ignore[arg-type]


def info_to_pb(info: EngineInfo) -> engine_pb2.InfoResponse:
    return engine_pb2.InfoResponse(
        model=info.model_id,
        model_name=info.model_name,
        architecture=info.architecture,
        n_layers=info.n_layers,
        n_ctx=info.n_ctx,
        n_ctx_train=info.n_ctx_train,
        n_vocab=info.n_vocab,
        vocab_fingerprint=info.vocab_fingerprint,
        capabilities=engine_pb2.Capabilities(
            can_verify=info.can_verify,
            can_draft=info.can_draft,
            can_render_chat=info.has_chat_template,
            can_logprobs=info.can_logprobs,
        ),
        placement=[
            engine_pb2.DevicePlacement(device=name, layers=layers) for name, layers in info.devices
        ],
        kind=_KINDS.get(info.kind, engine_pb2.ENGINE_KIND_UNSPECIFIED),
        bos_token_id=info.bos_token_id,
        eog_token_ids=list(info.eog_token_ids),
        live_sessions=info.live_sessions,
        n_threads=info.n_threads,
        path=info.path,
        engine_version=info.engine_version,
        batch=_batch_to_pb(info.batch) if info.batch.enabled else None,
    )


_BATCH_FIELDS = [f for f in BatchOccupancy.__dataclass_fields__ if f != "enabled"]


def _batch_to_pb(b: BatchOccupancy) -> engine_pb2.BatchOccupancy:
    return engine_pb2.BatchOccupancy(**{f: getattr(b, f) for f in _BATCH_FIELDS})


def batch_from_pb(r: engine_pb2.InfoResponse) -> BatchOccupancy:
    """The Info response's batch occupancy; the all-zero default when the engine sent none
    (no batching, or an engine older than the field)."""
    if not r.HasField("batch"):
        return BatchOccupancy()
    return BatchOccupancy(enabled=True, **{f: getattr(r.batch, f) for f in _BATCH_FIELDS})
