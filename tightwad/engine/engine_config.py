"""How the embedded llama.cpp engine serves one model (read by the agent, the gateway and
``tightwad up``; importing it loads no llama.cpp)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["EngineConfig"]


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """How to serve one model. ``ctx_size`` is per session; the context holds
    ``ctx_size * max_sessions`` cells (unified KV cache)."""

    model_id: str
    path: Path
    ctx_size: int = 2048
    max_sessions: int = 16
    cache_slots: int = 4
    threads: int = 0
    gpu_layers: int = 0
    flash_attn: bool = True  # batched verify is then bit-identical to one-token decoding
    batch_size: int = 512
    tensor_split: tuple[float, ...] = ()
    # ggml device names or "RPC[host:port]" (a ggml-rpc-server), in order; see _llama.py.
    devices: tuple[str, ...] = ()
    min_prefix_reuse: int = 8
    # Prompts are prefilled in chunks aligned to multiples of this many positions, and a cached
    # prefix is reused only up to such a boundary: with flash attention the KV cache, and so
    # every logit, is then bit-identical whether or not a prefix came from the cache.
    prefill_chunk: int = 64
