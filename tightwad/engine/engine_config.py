"""How the embedded llama.cpp engine serves one model (read by the agent, the gateway and
``tightwad up``; importing it loads no llama.cpp)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from tightwad.engine.offload import OffloadPlan

__all__ = ["EngineConfig"]


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """How to serve one model. ``ctx_size`` is per session; the context holds
    ``ctx_size * max_sessions`` cells (unified KV cache).

    ``gpu_layers="auto"`` (the default) is resolved at construction into llama.cpp's number by
    :func:`tightwad.engine.offload.plan_for_config`: as many layers as fit on the GPUs ggml sees
    in this process (on ``devices`` when named), 0 when it sees none; the plan is kept in
    ``offload`` (``offload.summary()`` is the line to print at start). An int overrides it
    (``-1``: all layers), as ``--gpu-layers`` does; a plan that offloads also fills
    ``devices`` and ``tensor_split`` when they were not given. When the KV cache of
    ``max_sessions`` sessions is what keeps layers off the GPUs, "auto" serves fewer sessions
    at once with every layer on them (:func:`tightwad.engine.offload.plan_sessions`; the
    summary says so)."""

    model_id: str
    path: Path
    ctx_size: int = 2048
    max_sessions: int = 16
    cache_slots: int = 4
    threads: int = 0
    gpu_layers: int | Literal["auto"] = "auto"
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
    # Run the pending work of all sessions (plain steps, verifies, prefill chunks, draft
    # steps) as one forward pass per step (tightwad.engine.step_batcher). Lossless as batched
    # verification is: a session alone decodes exactly as unbatched; batch mates change only
    # the last bits (greedy output equal to solo or first different at a near-tie).
    # n choices of one prompt share one prefill (the whole prompt's KV, copied), so their
    # first tokens come from one cache (tests/gateway/test_api_choices_real.py).
    batch_steps: bool = True
    # An Open that finds all ``max_sessions`` taken waits this long for one to free (as
    # llama-server queues requests for its slots), then is refused as overloaded (429).
    open_wait_s: float = 10.0
    offload: OffloadPlan | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.path, Path):  # a str from a caller's own code
            object.__setattr__(self, "path", Path(self.path))
        if self.gpu_layers != "auto":
            if not isinstance(self.gpu_layers, int) or isinstance(self.gpu_layers, bool):
                raise ValueError(
                    f"gpu_layers must be an integer or 'auto', not {self.gpu_layers!r}"
                )
            return
        from tightwad.engine.offload import plan_for_config

        plan = plan_for_config(self)
        set_ = object.__setattr__
        if plan is None:  # unreadable model (the load says why) or an rpc-server named
            set_(self, "gpu_layers", -1 if self.devices else 0)
            return
        set_(self, "gpu_layers", plan.n_gpu_layers)
        set_(self, "offload", plan)
        if plan.sessions:  # the asked sessions' KV would push layers off the GPUs
            set_(self, "max_sessions", plan.sessions)
        if plan.devices and not self.devices:
            set_(self, "devices", plan.devices)
            if not self.tensor_split:
                set_(self, "tensor_split", plan.tensor_split)

    @property
    def offload_summary(self) -> str:
        """Where the model goes (``28/28 layers on Vulkan0 (llvmpipe), 1.1 GiB; KV 224 MiB``),
        or ``""`` when ``gpu_layers`` was given."""
        return self.offload.summary() if self.offload else ""
