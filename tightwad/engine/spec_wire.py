"""Protobuf <-> domain conversion of the spec values that cross the wire (sampling
parameters, sparse draft distributions), shared by the engine service and its clients."""

from __future__ import annotations

from tightwad.errors import InvalidRequestError
from tightwad.spec.sampling import SamplingConfig, SparseDist
from tightwad.v1 import common_pb2, engine_pb2

__all__ = ["sampling_from_pb", "sampling_to_pb", "sparse_from_pb", "sparse_to_pb"]


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
        p.seed = seed & 0xFFFF_FFFF_FFFF_FFFF  # OpenAI allows negative seeds; keep them distinct
    return p


def sparse_to_pb(d: SparseDist) -> common_pb2.SparseDistribution:
    return common_pb2.SparseDistribution(
        token_ids=[int(t) for t in d.token_ids], probs=[float(x) for x in d.probs]
    )


def sparse_from_pb(p: common_pb2.SparseDistribution) -> SparseDist:
    try:
        return SparseDist.of(list(p.token_ids), list(p.probs))
    except ValueError as exc:
        raise InvalidRequestError(f"bad draft distribution: {exc}") from exc
