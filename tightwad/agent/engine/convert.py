"""Protobuf <-> domain conversion for the Engine service (the wire stays at this edge)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from tightwad.agent.engine.core import EngineInfo, TokenLogprob
from tightwad.agent.engine.template import Message
from tightwad.errors import InvalidRequestError
from tightwad.spec.sampling import SamplingConfig, SparseDist
from tightwad.v1 import common_pb2, engine_pb2

__all__ = [
    "info_to_pb",
    "logprob_to_pb",
    "messages_from_pb",
    "sampling_from_pb",
    "sampling_to_pb",
    "sparse_from_pb",
    "sparse_to_pb",
]


def sampling_from_pb(p: engine_pb2.SamplingParams) -> tuple[SamplingConfig, int | None]:
    """Proto zero values mean "off" (top_p 0 -> 1.0, repeat_penalty 0 -> 1.0)."""
    try:
        cfg = SamplingConfig(
            temperature=max(0.0, p.temperature),
            top_k=max(0, p.top_k),
            top_p=p.top_p if p.top_p > 0 else 1.0,
            min_p=p.min_p,
            repeat_penalty=p.repeat_penalty if p.repeat_penalty > 0 else 1.0,
            penalty_last_n=p.penalty_last_n,
            presence_penalty=p.presence_penalty,
            frequency_penalty=p.frequency_penalty,
            logit_bias=dict(p.logit_bias),
        )
    except ValueError as exc:
        raise InvalidRequestError(f"bad sampling parameters: {exc}") from exc
    seed = p.seed if p.HasField("seed") else None
    return cfg, seed


def sampling_to_pb(cfg: SamplingConfig, seed: int | None = None) -> engine_pb2.SamplingParams:
    p = engine_pb2.SamplingParams(
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        min_p=cfg.min_p,
        repeat_penalty=cfg.repeat_penalty,
        penalty_last_n=cfg.penalty_last_n,
        presence_penalty=cfg.presence_penalty,
        frequency_penalty=cfg.frequency_penalty,
    )
    for tok, bias in dict(cfg.logit_bias).items():
        p.logit_bias[int(tok)] = float(bias)
    if seed is not None:
        p.seed = seed
    return p


def sparse_to_pb(d: SparseDist) -> common_pb2.SparseDistribution:
    return common_pb2.SparseDistribution(
        token_ids=[int(t) for t in d.token_ids], probs=[float(x) for x in d.probs]
    )


def sparse_from_pb(p: common_pb2.SparseDistribution) -> SparseDist:
    if len(p.token_ids) != len(p.probs) or not p.token_ids:
        raise InvalidRequestError("a draft distribution needs as many probs as token ids (>0)")
    return SparseDist(
        token_ids=np.asarray(p.token_ids, dtype=np.int64),
        probs=np.asarray(p.probs, dtype=np.float64),
    )


def logprob_to_pb(lp: TokenLogprob) -> common_pb2.TokenLogprob:
    return common_pb2.TokenLogprob(
        token_id=lp.token_id,
        logprob=lp.logprob,
        top=[common_pb2.TopLogprob(token_id=t, logprob=v) for t, v in lp.top],
    )


def messages_from_pb(msgs: Iterable[engine_pb2.ChatMessage]) -> list[Message]:
    return [Message(role=m.role, content=m.content, name=m.name) for m in msgs]


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
            can_verify=True,
            can_draft=True,
            can_render_chat=info.has_chat_template,
            can_logprobs=True,
        ),
        placement=[
            engine_pb2.DevicePlacement(device=name, layers=layers) for name, layers in info.devices
        ],
        kind=engine_pb2.ENGINE_KIND_EMBEDDED,
        bos_token_id=info.bos_token_id,
        eog_token_ids=list(info.eog_token_ids),
        live_sessions=info.live_sessions,
        n_threads=info.n_threads,
        path=info.path,
        engine_version=info.engine_version,
    )
