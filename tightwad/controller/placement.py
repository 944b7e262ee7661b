"""Layer placement: which layers of a model go on which device. A pure function of facts.

Terms (llama.cpp's, which this module mirrors so the numbers it prints are the ones you get):

- *coordinator*: the host that loads the model (llama-server or the agent's engine). Its
  token embedding always stays in its RAM; its GPUs are local devices (``CUDA0``...); devices
  of other hosts are reached through one ``ggml-rpc-server`` each, named ``RPC[host:port]``.
- *CPU layers*: layers not offloaded (``-ngl`` < layers + 1). ``-ngl`` counts the output head
  as a layer and offloads from the end, so llama.cpp keeps the *first* ``n_layer + 1 - ngl``
  layers on the coordinator's CPU and the output head goes to a device as soon as ``ngl >= 1``.
- *output unit*: the output head goes to the last device of the ``--device`` list, counted as
  one more "layer" in ``--tensor-split``; it stays on the CPU only when nothing is offloaded.

Guarantees of :func:`plan_placement`:

- every repeating layer is assigned exactly once, in contiguous ranges that follow the device
  order (CPU layers first, then local GPUs, then RPC devices), and the output head once;
- no device is given more than its free memory minus its margin (weights + KV share +
  compute-buffer estimate); a model that does not fit gets ``fits=False`` and a reason that
  shows the numbers, per device;
- plans are ranked (see *Ranking* below); ties go to faster backends (CUDA/ROCm/Metal, then
  Vulkan/SYCL) before slower, more free memory, then ids, so the same facts always give the
  same plan;
- pins are used (at least one layer each), exclusions never.

Ranking (decision of issue #6: GPU before CPU). A demanding user wants tokens per second, and
a layer's cost is dominated by the matmuls of the device that holds it: a GPU on another host
is usually several times faster than the coordinator's CPU, and the RPC hop costs one small
activation transfer per device boundary per step, little next to a CPU layer's matmul. So:

====  =====================================================  ================================
rank  prefer                                                 over
====  =====================================================  ================================
1     every layer on GPUs (any number of hosts)              any plan with layers on a CPU
2     fewer layers on CPUs                                   more (a remote GPU before the
                                                             local CPU)
3     the coordinator's CPU                                  remote CPUs (a CPU layer *and*
                                                             an RPC hop)
4     fewer hosts                                            more (fewer hops, fewer failures)
5     the coordinator with more usable GPU memory            less
====  =====================================================  ================================

What a device needs (weights, KV share, compute buffer, margin) is estimated in
:mod:`tightwad.controller.footprint` (calibrated against llama.cpp's allocations); the
``--tensor-split`` / ``-ngl`` flags of a plan come from :mod:`tightwad.controller.tensor_split`.
Both modules' public names are re-exported here.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tightwad.controller.footprint import (
    KV_TYPE_FACTORS,
    PlacementOptions,
    compute_buffer_bytes,
    device_margin,
    ffn_width,
    format_bytes,
    kv_bytes,
)
from tightwad.controller.ids import DeviceId, NodeId
from tightwad.controller.tensor_split import layers_from_split, tensor_split_for
from tightwad.engine.device_facts import Backend, DeviceInfo
from tightwad.engine.model_facts import ModelFacts
from tightwad.errors import InvalidRequestError

__all__ = [
    "KV_TYPE_FACTORS",
    "Assignment",
    "Candidate",
    "Constraints",
    "Placement",
    "PlacementOptions",
    "PlacementRequest",
    "compute_buffer_bytes",
    "ffn_width",
    "format_bytes",
    "kv_bytes",
    "layers_from_split",
    "plan_placement",
]

CPU_NAME = "CPU"
DEFAULT_OPTIONS = PlacementOptions()

_BACKEND_RANK: dict[Backend, int] = {
    Backend.CUDA: 0,
    Backend.ROCM: 0,
    Backend.METAL: 0,
    Backend.VULKAN: 1,
    Backend.SYCL: 1,
    Backend.RPC: 2,
    Backend.UNKNOWN: 2,
    Backend.CPU: 3,
}
_GGML_PREFIX: dict[Backend, str] = {
    Backend.CUDA: "CUDA",
    Backend.ROCM: "ROCm",
    Backend.METAL: "Metal",
    Backend.VULKAN: "Vulkan",
    Backend.SYCL: "SYCL",
}


@dataclass(frozen=True, slots=True)
class Candidate:
    """A device placement may use: its node, its inventory entry, and where its rpc-server
    would listen (``rpc_host:rpc_port``) when the node is not the coordinator."""

    node_id: NodeId
    device: DeviceInfo
    rpc_host: str
    rpc_port: int

    @property
    def device_id(self) -> DeviceId:
        return DeviceId(self.device.id)

    @property
    def is_cpu(self) -> bool:
        return self.device.backend is Backend.CPU

    def ggml_name(self, coordinator: NodeId) -> str:
        """The name in llama.cpp's ``--device`` list, seen from ``coordinator``."""
        if self.node_id != coordinator:
            return f"RPC[{self.rpc_host}:{self.rpc_port}]"
        if self.is_cpu:
            return CPU_NAME
        if self.device.ggml_name:
            return self.device.ggml_name
        prefix = _GGML_PREFIX.get(self.device.backend, self.device.backend.value.upper())
        return prefix if self.device.backend is Backend.METAL else f"{prefix}{self.device.index}"


@dataclass(frozen=True, slots=True)
class Constraints:
    pin_device_ids: frozenset[DeviceId] = frozenset()
    exclude_device_ids: frozenset[DeviceId] = frozenset()
    exclude_node_ids: frozenset[NodeId] = frozenset()
    coordinator: NodeId | None = None


@dataclass(frozen=True, slots=True)
class PlacementRequest:
    model: str
    ctx_size: int
    kv_type: str = "f16"
    constraints: Constraints = field(default_factory=Constraints)


@dataclass(frozen=True, slots=True)
class Assignment:
    """What one device holds: layers ``[first_layer, first_layer + n_layers)`` and bytes."""

    node_id: NodeId
    device_id: DeviceId
    ggml_device: str
    first_layer: int
    n_layers: int
    weight_bytes: int
    kv_bytes: int
    compute_bytes: int
    margin_bytes: int
    free_bytes: int
    holds_output: bool = False

    @property
    def expected_bytes(self) -> int:
        """Weights + KV + compute buffer: what the device should show allocated."""
        return self.weight_bytes + self.kv_bytes + self.compute_bytes

    @property
    def is_cpu(self) -> bool:
        return self.ggml_device == CPU_NAME

    @property
    def is_rpc(self) -> bool:
        return self.ggml_device.startswith("RPC[")


@dataclass(frozen=True, slots=True)
class Placement:
    """A plan (``fits``) or a refusal (``reason`` shows the numbers)."""

    model: str
    coordinator: NodeId | None
    assignments: tuple[Assignment, ...]
    tensor_split: tuple[float, ...]
    n_gpu_layers: int
    fits: bool
    reason: str = ""

    @property
    def devices(self) -> tuple[str, ...]:
        """llama.cpp's ``--device`` list (the CPU is not named there); aligns with
        ``tensor_split``."""
        return tuple(a.ggml_device for a in self.assignments if not a.is_cpu)

    @property
    def rpc_assignments(self) -> tuple[Assignment, ...]:
        return tuple(a for a in self.assignments if a.is_rpc)

    @property
    def node_ids(self) -> tuple[NodeId, ...]:
        seen: dict[NodeId, None] = {}
        for a in self.assignments:
            seen.setdefault(a.node_id, None)
        return tuple(seen)


# --- the planner -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Slot:
    cand: Candidate
    name: str
    capacity: int  # free - margin (may be negative)
    margin: int
    pinned: bool


@dataclass(frozen=True, slots=True)
class _Range:
    slot: _Slot
    first: int
    count: int
    output: bool


class _Costs:
    """Prefix sums of layer bytes and the per-layer KV share, for O(1) range costs."""

    def __init__(self, facts: ModelFacts, req: PlacementRequest, options: PlacementOptions) -> None:
        self.facts = facts
        self.ctx = req.ctx_size
        self.options = options
        self.n_layers = len(facts.layer_bytes)
        self.prefix = [0]
        for b in facts.layer_bytes:
            self.prefix.append(self.prefix[-1] + b)
        total_kv = kv_bytes(facts, req.ctx_size, req.kv_type)
        self.kv_per_layer = -(-total_kv // self.n_layers) if self.n_layers else 0
        # g[j] = bytes of layers [0, j) with their KV share: monotone, so bisectable.
        self.cumulative = [p + j * self.kv_per_layer for j, p in enumerate(self.prefix)]
        self.compute_layers = compute_buffer_bytes(facts, req.ctx_size, options=options)
        self.compute_inputs = compute_buffer_bytes(
            facts, req.ctx_size, options=options, layers=False, inputs=True
        )
        self.compute_both = compute_buffer_bytes(
            facts, req.ctx_size, options=options, layers=True, inputs=True
        )

    def max_layers(self, first: int, capacity: int) -> int:
        """How many layers from ``first`` fit in ``capacity`` (no output head)."""
        budget = capacity - self.compute_layers
        if budget < 0:
            return 0
        last = bisect.bisect_right(self.cumulative, self.cumulative[first] + budget) - 1
        return max(0, last - first)

    def weights(self, first: int, count: int, output: bool) -> int:
        w = self.prefix[first + count] - self.prefix[first]
        return w + (self.facts.output_bytes if output else 0)

    def kv(self, count: int) -> int:
        return count * self.kv_per_layer

    def compute(self, count: int, output: bool) -> int:
        """A device's compute buffer (``inputs`` only on the coordinator's CPU)."""
        return self.compute_layers if count or output else 0

    def compute_ram(self, count: int, output: bool) -> int:
        """The coordinator CPU's compute buffer: the inputs always, layers when it has some."""
        return self.compute_both if count or output else self.compute_inputs

    def need(self, first: int, count: int, output: bool) -> int:
        return self.weights(first, count, output) + self.kv(count) + self.compute(count, output)


def _usable_bytes(c: Candidate, options: PlacementOptions) -> int:
    """Free memory of ``c`` a plan may use: free minus the margin, never negative."""
    return max(0, c.device.memory_free_bytes - device_margin(c.device, options))


def _speed_key(c: Candidate) -> tuple[int, int, str]:
    return (_BACKEND_RANK.get(c.device.backend, 2), -c.device.memory_free_bytes, c.device.id)


def _fill(
    slots: Sequence[_Slot], first: int, end: int, output: bool, costs: _Costs
) -> list[_Range] | None:
    """Greedy: each slot in order takes as many of layers ``[first, end)`` as fit; the slot
    that takes the last layer also takes the output head when ``output``. Pinned slots later
    in the order keep one layer each in reserve."""
    pos = first
    out: list[_Range] = []
    pinned_after = sum(1 for s in slots if s.pinned)
    for slot in slots:
        if slot.pinned:
            pinned_after -= 1
        room = end - pos - pinned_after
        m = min(room, costs.max_layers(pos, slot.capacity)) if room > 0 else 0
        takes_output = output and m > 0 and pos + m == end
        if takes_output and costs.need(pos, m, True) > slot.capacity:
            m -= 1
            takes_output = False
        if m <= 0:
            if slot.pinned:
                return None
            continue
        out.append(_Range(slot, pos, m, takes_output))
        pos += m
    if pos != end:
        return None
    return out


def _slots(
    cands: Iterable[Candidate], coord: NodeId, pins: frozenset[DeviceId], options: PlacementOptions
) -> list[_Slot]:
    slots = []
    for c in cands:
        margin = device_margin(c.device, options)
        slots.append(
            _Slot(
                c,
                c.ggml_name(coord),
                c.device.memory_free_bytes - margin,
                margin,
                c.device_id in pins,
            )
        )
    return slots


def plan_placement(
    request: PlacementRequest,
    facts: ModelFacts,
    candidates: Sequence[Candidate],
    options: PlacementOptions = DEFAULT_OPTIONS,
) -> Placement:
    """Plan where ``facts``' layers go among ``candidates`` (see the module docstring)."""
    if request.kv_type not in KV_TYPE_FACTORS:
        known = ", ".join(sorted(KV_TYPE_FACTORS))
        raise InvalidRequestError(f"unknown KV cache type {request.kv_type!r} (known: {known})")
    if request.ctx_size <= 0:
        raise InvalidRequestError(f"ctx_size must be positive, got {request.ctx_size}")
    if facts.n_layers <= 0 or not facts.layer_bytes:
        raise InvalidRequestError(f"model {request.model!r} reports no layers")
    cons = request.constraints
    costs = _Costs(facts, request, options)
    all_nodes = sorted({c.node_id for c in candidates})
    usable = [
        c
        for c in candidates
        if c.node_id not in cons.exclude_node_ids and c.device_id not in cons.exclude_device_ids
    ]

    def refuse(reason: str) -> Placement:
        return Placement(request.model, cons.coordinator, (), (), 0, False, reason)

    usable_ids = {c.device_id for c in usable}
    missing = sorted(p for p in cons.pin_device_ids if p not in usable_ids)
    if missing:
        return refuse(
            f"pinned device(s) {', '.join(missing)} not available "
            "(unknown, excluded, or their node is not ready)"
        )
    nodes = sorted({c.node_id for c in usable})
    if cons.coordinator is not None:
        if cons.coordinator in cons.exclude_node_ids:
            return refuse(f"coordinator {cons.coordinator} is excluded")
        if cons.coordinator not in all_nodes:
            return refuse(f"coordinator {cons.coordinator} is not a ready node")
        coordinators = [cons.coordinator]
    else:
        coordinators = sorted(nodes, key=lambda n: _host_rank(n, usable, options))
    if not coordinators:
        return refuse("no ready node with usable devices")
    pinned_nodes = {c.node_id for c in usable if c.device_id in cons.pin_device_ids}
    floor = costs.prefix[-1] + facts.output_bytes + costs.kv(costs.n_layers)
    roomy = sum(_usable_bytes(c, options) for c in usable)
    if roomy < floor:
        return refuse(_refusal_reason(request, facts, usable, costs, options))
    cpus = {(c.node_id, c.device_id) for c in candidates if c.is_cpu}
    max_hosts = len(set(nodes) | set(coordinators))
    for stage in range(3):
        found: list[tuple[tuple[int, int, int, int], Placement]] = []
        for k in range(1, max_hosts + 1):
            for rank, coord in enumerate(coordinators):
                hosts = _choose_hosts(coord, k, nodes, pinned_nodes, usable, options)
                if hosts is None:
                    continue
                plan = _try(request, facts, candidates, usable, coord, hosts, stage, costs, options)
                if plan is not None:
                    found.append((_plan_rank(plan, cpus, rank), plan))
            if found and stage == 0:
                break  # every layer on GPUs: the fewest hosts win, more cannot do better
        if found:
            return min(found, key=lambda f: f[0])[1]
    return refuse(_refusal_reason(request, facts, usable, costs, options))


def _plan_rank(
    plan: Placement, cpus: set[tuple[NodeId, DeviceId]], coordinator_rank: int
) -> tuple[int, int, int, int]:
    """The ranking of the module docstring, smaller first: layers on CPUs, of those on remote
    CPUs, hosts, then the coordinator's own rank."""
    on_cpu = [a for a in plan.assignments if (a.node_id, a.device_id) in cpus]
    cpu_layers = sum(a.n_layers for a in on_cpu)
    remote_cpu_layers = sum(a.n_layers for a in on_cpu if a.is_rpc)
    return (cpu_layers, remote_cpu_layers, len(plan.node_ids), coordinator_rank)


def _host_rank(
    node: NodeId, usable: Sequence[Candidate], options: PlacementOptions
) -> tuple[int, int, str]:
    """Hosts with more usable GPU memory (then more usable memory of any kind) first."""
    gpu = sum(_usable_bytes(c, options) for c in usable if c.node_id == node and not c.is_cpu)
    anyd = sum(_usable_bytes(c, options) for c in usable if c.node_id == node)
    return (-gpu, -anyd, node)


def _choose_hosts(
    coord: NodeId,
    k: int,
    nodes: Sequence[NodeId],
    pinned_nodes: set[NodeId],
    usable: Sequence[Candidate],
    options: PlacementOptions,
) -> list[NodeId] | None:
    """The coordinator, the hosts of pins, then the roomiest others: ``k`` hosts, ordered."""
    required = [coord, *sorted(n for n in pinned_nodes if n != coord)]
    if len(required) > k:
        return None
    others = sorted(
        (n for n in nodes if n not in required), key=lambda n: _host_rank(n, usable, options)
    )
    chosen = required + others[: k - len(required)]
    if len(chosen) < k:
        return None
    return [coord, *sorted(chosen[1:], key=lambda n: _host_rank(n, usable, options))]


def _try(
    request: PlacementRequest,
    facts: ModelFacts,
    all_candidates: Sequence[Candidate],
    usable: Sequence[Candidate],
    coord: NodeId,
    hosts: Sequence[NodeId],
    stage: int,
    costs: _Costs,
    options: PlacementOptions,
) -> Placement | None:
    """Stage 0: GPUs only; 1: plus the coordinator's CPU; 2: plus remote CPUs (rpc-servers)."""
    pins = request.constraints.pin_device_ids
    in_hosts = [c for c in usable if c.node_id in hosts]
    local_cpu = next((c for c in in_hosts if c.node_id == coord and c.is_cpu), None)
    pinned_local_cpu = local_cpu is not None and local_cpu.device_id in pins
    use_local_cpu = stage >= 1 or pinned_local_cpu
    if stage == 1 and local_cpu is None:
        return None  # nothing new in this stage
    remote_cpus = stage >= 2 or any(
        c.is_cpu and c.node_id != coord and c.device_id in pins for c in in_hosts
    )
    gpus: list[Candidate] = []
    for host in hosts:
        on_host = sorted(
            (c for c in in_hosts if c.node_id == host and not c.is_cpu), key=_speed_key
        )
        gpus.extend(on_host)
    if remote_cpus:
        for host in hosts[1:]:
            gpus.extend(
                c
                for c in in_hosts
                if c.node_id == host and c.is_cpu and (stage >= 2 or c.device_id in pins)
            )
    slots = _slots(gpus, coord, pins, options)
    # The embedding always lives in the coordinator's RAM (its CPU device, excluded or not).
    ram = next((c for c in all_candidates if c.node_id == coord and c.is_cpu), None)
    ram_slot = _slots([ram], coord, pins, options)[0] if ram is not None else None
    n = costs.n_layers
    if not use_local_cpu or local_cpu is None:
        ranges = _fill(slots, 0, n, True, costs)
        if ranges is None:
            return None
        cpu_range: _Range | None = None
    else:
        # The CPU keeps the fewest first layers it can; the output head goes with the last
        # offloaded layer (llama.cpp offloads it first: -ngl counts it), or stays on the CPU
        # when nothing is offloaded.
        ranges, cpu_range = None, None
        for k in range(1, n + 1):
            ranges = _fill(slots, k, n, True, costs)
            if ranges is not None:
                assert ram_slot is not None
                cpu_range = _Range(ram_slot, 0, k, not ranges)
                break
        if ranges is None or cpu_range is None:
            return None
    rows: list[Assignment] = []
    if ram_slot is not None:
        first, count, output = (
            (cpu_range.first, cpu_range.count, cpu_range.output) if cpu_range else (0, 0, False)
        )
        weights = costs.weights(first, count, output) + facts.embedding_bytes + facts.other_bytes
        compute = costs.compute_ram(count, output)
        if weights + costs.kv(count) + compute > ram_slot.capacity:
            return None
        rows.append(_row(ram_slot, first, count, output, weights, compute, costs))
    for r in ranges:
        weights = costs.weights(r.first, r.count, r.output)
        compute = costs.compute(r.count, r.output)
        rows.append(_row(r.slot, r.first, r.count, r.output, weights, compute, costs))
    split, ngl = tensor_split_for([r.count for r in ranges])
    return Placement(request.model, coord, tuple(rows), split, ngl, True)


def _row(
    slot: _Slot, first: int, count: int, output: bool, weights: int, compute: int, costs: _Costs
) -> Assignment:
    return Assignment(
        node_id=slot.cand.node_id,
        device_id=slot.cand.device_id,
        ggml_device=slot.name,
        first_layer=first,
        n_layers=count,
        weight_bytes=weights,
        kv_bytes=costs.kv(count),
        compute_bytes=compute,
        margin_bytes=slot.margin,
        free_bytes=slot.cand.device.memory_free_bytes,
        holds_output=output,
    )


def _refusal_reason(
    request: PlacementRequest,
    facts: ModelFacts,
    usable: Sequence[Candidate],
    costs: _Costs,
    options: PlacementOptions,
) -> str:
    weights = sum(facts.layer_bytes) + facts.output_bytes + facts.embedding_bytes
    kv = kv_bytes(facts, request.ctx_size, request.kv_type)
    need = weights + kv + costs.compute_both
    parts = [
        f"{request.model} does not fit: needs about {format_bytes(need)} "
        f"(weights {format_bytes(weights)}, KV {format_bytes(kv)} at ctx {request.ctx_size} "
        f"{request.kv_type}, compute >= {format_bytes(costs.compute_both)}) plus a margin "
        "per device"
    ]
    if not usable:
        parts.append("no usable device")
        return "; ".join(parts)
    usable_total = sum(_usable_bytes(c, options) for c in usable)
    parts.append(f"usable memory is {format_bytes(usable_total)} in all")
    per_device = [
        f"{c.node_id}/{c.device.id} ({c.device.name or c.device.backend.value}): free "
        f"{format_bytes(c.device.memory_free_bytes)}, margin "
        f"{format_bytes(device_margin(c.device, options))}"
        for c in sorted(usable, key=lambda c: (c.node_id, c.device.id))
    ]
    return "; ".join(parts) + " — " + "; ".join(per_device)
