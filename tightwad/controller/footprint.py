"""What a model needs on a device: weights, KV cache, compute buffer and a safety margin.

Calibration (issue #6: expected bytes within 15% of what llama.cpp allocates, measured with
llama-server 0.3.36 on SmolLM2-135M Q4_1 and Qwen2.5-Coder 0.5B Q4_K_M split over the local
CPU and a ggml-rpc-server, ctx 512 and 2048, no mmap; see
``tests/cluster/test_placement_calibration.py``): weights are the GGUF tensor bytes of the
layers a device holds (the coordinator's CPU adds the token embedding; the output device the
output head, a copy of the embedding when tied); KV is ``ctx x bytes per token`` split per
layer; the compute buffer is :func:`compute_buffer_bytes`. With mmap (llama.cpp's default)
the CPU's "CPU_Mapped" figure is the mapped file range, page cache shared with the OS, not an
allocation.

Pure functions of :class:`~tightwad.engine.model_facts.ModelFacts`; the planner
(:mod:`tightwad.controller.placement`) adds them up per device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tightwad.engine.device_facts import DeviceInfo
from tightwad.engine.model_facts import ModelFacts

__all__ = [
    "KV_TYPE_FACTORS",
    "GiB",
    "MiB",
    "PlacementOptions",
    "compute_buffer_bytes",
    "device_margin",
    "ffn_width",
    "format_bytes",
    "kv_bytes",
]

MiB = 1024 * 1024
GiB = 1024 * MiB

# Bytes per element of each KV cache type relative to f16 (ggml block sizes: q8_0 is 34 bytes
# per 32 values, f16 64).
KV_TYPE_FACTORS: dict[str, float] = {
    "f32": 2.0,
    "f16": 1.0,
    "bf16": 1.0,
    "q8_0": 34 / 64,
    "q5_1": 24 / 64,
    "q5_0": 22 / 64,
    "q4_1": 20 / 64,
    "q4_0": 18 / 64,
    "iq4_nl": 18 / 64,
}


@dataclass(frozen=True, slots=True)
class PlacementOptions:
    """Tunables. The margin of a device is ``max(margin_min_bytes, fraction * total)``."""

    margin_fraction: float = 0.05
    margin_min_bytes: int = 256 * MiB
    ubatch: int = 512
    flash_attn: bool = True


def device_margin(device: DeviceInfo, options: PlacementOptions) -> int:
    """Memory a plan leaves free on ``device``: ``max(margin_min_bytes, fraction * total)``."""
    return max(options.margin_min_bytes, int(options.margin_fraction * device.memory_total_bytes))


def kv_bytes(facts: ModelFacts, ctx_size: int, kv_type: str) -> int:
    """KV cache bytes for ``ctx_size`` tokens over all layers."""
    return math.ceil(facts.kv_bytes_per_token * ctx_size * KV_TYPE_FACTORS[kv_type])


# Average bits per weight of a file type's repeating layers (mixed K-quants included), used
# only to estimate the FFN width from a layer's bytes. Unknown types count as 5.
_BITS_PER_WEIGHT: dict[str, float] = {
    "F32": 32.0,
    "F16": 16.0,
    "BF16": 16.0,
    "Q8_0": 8.5,
    "Q6_K": 6.5625,
    "Q5_K_M": 5.7,
    "Q5_K_S": 5.5,
    "Q5_1": 6.0,
    "Q5_0": 5.5,
    "Q4_K_M": 5.0,
    "Q4_K_S": 4.6,
    "Q4_1": 5.0,
    "Q4_0": 4.5,
    "IQ4_NL": 4.5,
    "IQ4_XS": 4.25,
    "Q3_K_L": 4.3,
    "Q3_K_M": 3.9,
    "Q3_K_S": 3.5,
    "Q2_K": 3.35,
}


def ffn_width(facts: ModelFacts) -> int:
    """The feed-forward width, estimated from a layer's bytes: a layer holds ``2·E² + 2·E·E_kv``
    attention weights and ``3·E·F`` FFN weights. Clamped to ``[E, 8·E]``."""
    e = max(1, facts.embedding_length)
    n = len(facts.layer_bytes)
    if not n:
        return e
    bpw = _BITS_PER_WEIGHT.get(facts.quantization.upper(), 5.0)
    params = sum(facts.layer_bytes) / n * 8 / bpw
    kv_dim = e * max(1, facts.n_head_kv) / max(1, facts.n_head)
    ffn = (params - 2 * e * e - 2 * e * kv_dim) / (3 * e)
    return int(min(max(ffn, e), 8 * e))


def compute_buffer_bytes(
    facts: ModelFacts,
    ctx_size: int,
    *,
    options: PlacementOptions,
    layers: bool = True,
    inputs: bool = False,
) -> int:
    """Peak scratch memory of llama.cpp's graph on one device (``sched_reserve``'s "compute
    buffer size"), calibrated against llama.cpp's own log (see the module docstring).

    A device holding layers (``layers``) needs one micro-batch of f32 activations at the FFN's
    peak (``ubatch · (2·E + 3·F)``: input, normed input, gate, up, activation) plus the f16
    attention mask (``ctx x ubatch``), plus the f32 scores without flash attention. The
    coordinator's CPU (``inputs``) also builds the inputs (token embeddings, ``2·E`` floats
    per token), the mask and the host output buffer (one row of logits) even with no layer.
    """
    ubatch = max(1, min(options.ubatch, ctx_size))
    e = facts.embedding_length
    mask = ubatch * ctx_size * 2
    total = 0
    if layers:
        total += ubatch * (2 * e + 3 * ffn_width(facts)) * 4 + mask
        if not options.flash_attn:
            total += ubatch * ctx_size * max(1, facts.n_head) * 4
    if inputs:
        total += ubatch * 2 * e * 4 + facts.n_vocab * 4 + (0 if layers else mask)
    return total


def format_bytes(n: int) -> str:
    if abs(n) >= GiB:
        return f"{n / GiB:.2f} GiB"
    return f"{n / MiB:.1f} MiB"
