"""Offload planning for one engine on one host: how many layers go on which local ggml device.

A pure function of facts (:func:`plan_offload`): the model's GGUF facts (layers, bytes per
layer, output head, KV bytes per token), the context the engine allocates (cells), and the
devices with their free memory. It mirrors how llama.cpp places a model so the numbers it
prints are the ones the engine gets:

- ``n_gpu_layers`` counts the output head as one more layer and offloads from the end: the
  first ``n_layer + 1 - n_gpu_layers`` layers stay on the CPU, the output head goes to the last
  device as soon as anything is offloaded; the token embedding always stays on the CPU.
- a device holding ``k`` layers needs their weights, ``k / n_layer`` of the KV cache (f16),
  and one compute buffer (one micro-batch of f32 activations at the FFN peak plus the f16
  attention mask), all under its free memory minus a margin
  (``max(margin_min_bytes, margin_fraction * total)``).

Devices are filled from the last one backwards (output head, then the last layers), so ranges
stay contiguous in device order; what fits nowhere stays on the CPU (a GPU+CPU split, with the
numbers in :meth:`OffloadPlan.summary`), never an allocation error. No GPU device: 0 layers.

:func:`plan_for_config` is what ``EngineConfig(gpu_layers="auto")`` resolves through: it asks
ggml for this process's devices (:mod:`tightwad.engine.ggml_devices`) and reads the GGUF header.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from tightwad.engine.model_facts import ModelFacts, read_model_facts
from tightwad.errors import ModelLoadError

if TYPE_CHECKING:
    from tightwad.engine.engine_config import EngineConfig

__all__ = [
    "DeviceShare",
    "OffloadDevice",
    "OffloadOptions",
    "OffloadPlan",
    "compute_bytes",
    "placement_line",
    "plan_for_config",
    "plan_offload",
    "plan_sessions",
]

MiB = 1 << 20
GiB = 1 << 30

# Average bits per weight of a file type's layers; only to estimate the FFN width.
_BITS_PER_WEIGHT = {"F32": 32.0, "F16": 16.0, "BF16": 16.0, "Q8_0": 8.5, "Q6_K": 6.5625}


@dataclass(frozen=True, slots=True)
class OffloadDevice:
    """A local ggml device layers may go on (``name`` as llama.cpp's ``--device`` takes it)."""

    name: str
    description: str
    memory_free_bytes: int
    memory_total_bytes: int

    @property
    def short(self) -> str:
        """``llvmpipe`` of ``llvmpipe (LLVM 15.0.6, 256 bits)``."""
        return self.description.split(" (")[0] or self.name


@dataclass(frozen=True, slots=True)
class OffloadOptions:
    margin_fraction: float = 0.05
    margin_min_bytes: int = 256 * MiB
    ubatch: int = 512
    flash_attn: bool = True


@dataclass(frozen=True, slots=True)
class DeviceShare:
    """What one device holds: ``n_layers`` repeating layers (+ the output head) and bytes."""

    device: OffloadDevice
    first_layer: int
    n_layers: int
    holds_output: bool
    weight_bytes: int
    kv_bytes: int
    compute_bytes: int
    margin_bytes: int

    @property
    def expected_bytes(self) -> int:
        return self.weight_bytes + self.kv_bytes + self.compute_bytes


@dataclass(frozen=True, slots=True)
class OffloadPlan:
    """Where a model goes. ``n_gpu_layers`` is llama.cpp's value; ``shares`` follow the device
    order; ``devices`` names them for llama.cpp (empty when nothing is offloaded) and
    ``tensor_split`` splits the layers between them (empty for one device)."""

    n_layers: int
    n_gpu_layers: int
    shares: tuple[DeviceShare, ...]
    cpu_layers: int
    cpu_weight_bytes: int
    kv_bytes: int
    reason: str = ""  # why (some) layers stay on the CPU
    devices: tuple[str, ...] = field(default=())
    tensor_split: tuple[float, ...] = field(default=())
    # Sessions the KV cache was sized for when :func:`plan_sessions` chose fewer than asked
    # (0: as asked), and the line that says why.
    sessions: int = 0
    sessions_note: str = ""

    @property
    def gpu_layers(self) -> int:
        return self.n_layers - self.cpu_layers

    def summary(self) -> str:
        """One line: ``30/30 layers on Vulkan0 (llvmpipe), 103.4 MiB; KV 720.0 MiB``."""
        parts = [
            f"{s.n_layers}/{self.n_layers} layers on {s.device.name} ({s.device.short}), "
            f"{_fmt(s.weight_bytes)}"
            for s in self.shares
        ]
        if self.cpu_layers or not parts:
            parts.append(
                f"{self.cpu_layers}/{self.n_layers} layers on CPU, {_fmt(self.cpu_weight_bytes)}"
            )
        line = " + ".join(parts) + f"; KV {_fmt(self.kv_bytes)}"
        line = f"{line} ({self.reason})" if self.reason else line
        return f"{line}; {self.sessions_note}" if self.sessions_note else line


def _fmt(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if abs(n) >= GiB else f"{n / MiB:.1f} MiB"


def _ffn_width(facts: ModelFacts) -> int:
    e = max(1, facts.embedding_length)
    if not facts.layer_bytes:
        return e
    bpw = _BITS_PER_WEIGHT.get(facts.quantization.upper(), 5.0)
    params = sum(facts.layer_bytes) / len(facts.layer_bytes) * 8 / bpw
    kv_dim = e * max(1, facts.n_head_kv) / max(1, facts.n_head)
    return int(min(max((params - 2 * e * e - 2 * e * kv_dim) / (3 * e), e), 8 * e))


def compute_bytes(facts: ModelFacts, ctx_cells: int, options: OffloadOptions) -> int:
    """Scratch memory of llama.cpp's graph on a device holding layers."""
    ubatch = max(1, min(options.ubatch, ctx_cells))
    total = ubatch * (2 * facts.embedding_length + 3 * _ffn_width(facts)) * 4
    total += ubatch * ctx_cells * 2  # f16 mask
    if not options.flash_attn:
        total += ubatch * ctx_cells * max(1, facts.n_head) * 4
    return total


def plan_offload(
    facts: ModelFacts,
    devices: Sequence[OffloadDevice],
    ctx_cells: int,
    options: OffloadOptions | None = None,
) -> OffloadPlan:
    """As many layers on ``devices`` as fit (see the module docstring)."""
    opts = options or OffloadOptions()
    n = facts.n_layers
    kv_total = math.ceil(facts.kv_bytes_per_token * ctx_cells)
    kv_layer = kv_total / max(1, n)
    compute = compute_bytes(facts, ctx_cells, opts)
    out_bytes = facts.output_bytes
    assigned: list[tuple[OffloadDevice, int, int, bool, int]] = []  # dev, first, count, out, margin
    next_layer = n  # layers [next_layer, n) are placed
    output_placed = False
    reason = "" if devices else "no GPU device visible to ggml"
    for dev in reversed(devices):
        margin = max(opts.margin_min_bytes, int(opts.margin_fraction * dev.memory_total_bytes))
        room: float = dev.memory_free_bytes - margin - compute
        take_output = not output_placed
        if take_output:
            room -= out_bytes
            if room < 0:
                reason = f"the output head does not fit on {dev.name}"
                break
        count = 0
        while next_layer - count > 0:
            need = facts.layer_bytes[next_layer - count - 1] + kv_layer
            if need > room:
                break
            room -= need
            count += 1
        if count == 0 and not take_output:
            continue
        output_placed = True
        next_layer -= count
        assigned.append((dev, next_layer, count, take_output, margin))
    assigned.reverse()
    cpu_layers = next_layer
    if cpu_layers and devices and not reason:
        free = ", ".join(f"{d.name} {_fmt(d.memory_free_bytes)} free" for d in devices)
        reason = f"{cpu_layers} layer(s) do not fit ({free})"
    shares = tuple(
        DeviceShare(
            device=dev,
            first_layer=first,
            n_layers=count,
            holds_output=out,
            weight_bytes=sum(facts.layer_bytes[first : first + count]) + (out_bytes if out else 0),
            kv_bytes=math.ceil(kv_layer * count),
            compute_bytes=compute,
            margin_bytes=margin,
        )
        for dev, first, count, out, margin in assigned
    )
    n_gpu = (n - cpu_layers + 1) if shares else 0
    cpu_weights = sum(facts.layer_bytes[:cpu_layers]) + facts.embedding_bytes + facts.other_bytes
    if not shares:
        cpu_weights += 0 if facts.tied_embeddings else out_bytes
    return OffloadPlan(
        n_layers=n,
        n_gpu_layers=n_gpu,
        shares=shares,
        cpu_layers=cpu_layers,
        cpu_weight_bytes=cpu_weights,
        kv_bytes=kv_total,
        reason=reason,
        devices=tuple(s.device.name for s in shares),
        tensor_split=_split(shares) if len(shares) > 1 else (),
    )


def plan_sessions(
    facts: ModelFacts,
    devices: Sequence[OffloadDevice],
    ctx_size: int,
    max_sessions: int,
    options: OffloadOptions | None = None,
) -> OffloadPlan:
    """The plan for ``max_sessions`` sessions of ``ctx_size`` cells, unless their KV cache is
    what pushes layers off the GPUs: then the most sessions (fewer) with every layer on them.

    A layer on the CPU slows every token of every session (a 32-layer model with 12 on the CPU
    decodes at a fraction of its all-GPU speed), while a session more only serves one client
    more at once; so when all layers fit with fewer sessions, fewer it is, and the plan says so
    (``sessions``, ``sessions_note``). When not even one session's KV lets every layer fit,
    the sessions stay as asked (the weights, not the KV, are what does not fit)."""
    asked = plan_offload(facts, devices, ctx_size * max_sessions, options)
    if not asked.cpu_layers or not devices or max_sessions <= 1:
        return asked
    for k in range(max_sessions - 1, 0, -1):
        plan = plan_offload(facts, devices, ctx_size * k, options)
        if not plan.cpu_layers:
            note = (
                f"KV for {max_sessions} sessions of {ctx_size} tokens would leave "
                f"{asked.cpu_layers} layer(s) on the CPU, so {k} session(s) at once "
                f"(engine.max_sessions {max_sessions}; a number for engine.n_gpu_layers keeps it)"
            )
            return replace(plan, sessions=k, sessions_note=note)
    return asked


def _split(shares: Sequence[DeviceShare]) -> tuple[float, ...]:
    """Counts per device (output head on the last) with each cumulative boundary half a layer
    inside its range, so llama.cpp's ``upper_bound`` over the split gives exactly these ranges."""
    counts = [float(s.n_layers + (1 if s.holds_output else 0)) for s in shares]
    counts[0] -= 0.5
    counts[-1] += 0.5
    return tuple(counts)


def plan_for_config(cfg: EngineConfig) -> OffloadPlan | None:
    """The plan for ``cfg`` on this process's ggml devices (``cfg.devices`` when named, else
    every GPU ggml sees); ``None`` when the model's facts cannot be read (the load will say why)
    or a named device's memory is unknown here (an rpc-server: all layers go there, as asked)."""
    from tightwad.engine.ggml_devices import list_ggml_devices

    seen = {d.name: d for d in list_ggml_devices()}
    if cfg.devices:
        if any(name not in seen for name in cfg.devices):
            return None
        chosen = [seen[name] for name in cfg.devices]
    else:
        chosen = [d for d in seen.values() if d.is_gpu]
    devices = [
        OffloadDevice(d.name, d.description, d.memory_free_bytes, d.memory_total_bytes)
        for d in chosen
    ]
    try:
        stat = cfg.path.stat()
        facts = _facts(str(cfg.path), stat.st_mtime_ns, stat.st_size)
    except (ModelLoadError, OSError, ValueError):
        return None
    options = OffloadOptions(ubatch=cfg.batch_size, flash_attn=cfg.flash_attn)
    return plan_sessions(facts, devices, cfg.ctx_size, cfg.max_sessions, options)


def placement_line(cfg: EngineConfig, layers: Sequence[tuple[str, int]] = ()) -> str:
    """Where ``cfg``'s model went, in one line to print or log when the engine loads.

    Planned (``gpu_layers="auto"``): the plan's summary (``28/28 layers on Vulkan0 (llvmpipe),
    1.10 GiB; KV 224.0 MiB``), or ``0/30 layers on a GPU: no GPU device visible to ggml (CPU,
    92.1 MiB; KV 22.5 MiB)``. Given as a number: ``layers`` (device name, layer count; what
    the loaded engine reports in ``EngineInfo.devices``) with the number that asked for them,
    e.g. ``10/30 layers on CPU + 20/30 layers on CUDA0 (gpu_layers 20)``."""
    plan = cfg.offload
    if plan is not None:
        if plan.shares:
            return plan.summary()
        why = plan.reason or "no GPU device"
        return (
            f"0/{plan.n_layers} layers on a GPU: {why} "
            f"(CPU, {_fmt(plan.cpu_weight_bytes)}; KV {_fmt(plan.kv_bytes)})"
        )
    asked = f"gpu_layers {cfg.gpu_layers}"
    total = sum(n for _, n in layers)
    if not total:
        return f"0 layers on a GPU: {asked} (CPU)" if cfg.gpu_layers == 0 else asked
    placed = " + ".join(f"{n}/{total} layers on {name}" for name, n in layers if n)
    return f"{placed} ({asked})"


@lru_cache(maxsize=32)
def _facts(path: str, mtime_ns: int, size: int) -> ModelFacts:
    return read_model_facts(Path(path))
