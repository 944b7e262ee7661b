"""What ``tightwadctl`` prints: fixed-width tables for people, JSON documents for scripts.

Tables: aligned columns, sizes in GiB/MiB, states upper-case, times as local ``HH:MM:SS`` or
"Ns ago". JSON (``--json``): one document per command — objects or lists of objects whose keys
never change with the data (absent values are ``null`` or empty), sizes in bytes, states
upper-case, times as Unix seconds. Following commands (``events -f``, ``logs -f``) print one
JSON object per line instead.

Everything here is pure: values in, strings or plain dicts out.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tightwad.cli.client import ClusterStatus, NodeStatus
from tightwad.config import ModelConfig
from tightwad.controller.domain import Deployment, Event
from tightwad.controller.placement import Assignment, Placement, format_bytes
from tightwad.engine.device_facts import DeviceInfo
from tightwad.engine.log_line import LogLine
from tightwad.engine.model_facts import ModelFacts

__all__ = [
    "ModelRow",
    "deployment_dict",
    "deployments_table",
    "device_dict",
    "event_dict",
    "event_line",
    "events_table",
    "gpus_table",
    "log_dict",
    "log_line",
    "model_dict",
    "model_rows",
    "models_table",
    "node_dict",
    "nodes_table",
    "placement_dict",
    "placement_text",
    "status_dict",
    "status_text",
    "table",
]

# --- primitives ---------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Left-aligned columns two spaces apart; the last column is not padded."""
    cells = [[str(h) for h in headers], *([str(c) for c in row] for row in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)]
        lines.append("  ".join([*padded, row[-1]]).rstrip())
    return "\n".join(lines)


def size(n: int) -> str:
    return format_bytes(n)


def clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) if t > 0 else "-"


def ago(t: float, now: float) -> str:
    if t <= 0:
        return "never"
    s = max(0, int(now - t))
    if s < 120:
        return f"{s}s ago"
    if s < 7200:
        return f"{s // 60}m ago"
    return f"{s // 3600}h ago"


def duration(seconds: float) -> str:
    s = int(seconds)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _upper(value: str) -> str:
    return value.upper()


# --- nodes and devices --------------------------------------------------------------------


def _gpu_memory(devices: Sequence[DeviceInfo]) -> tuple[int, int]:
    gpus = [d for d in devices if d.is_gpu]
    return sum(d.memory_free_bytes for d in gpus), sum(d.memory_total_bytes for d in gpus)


def device_dict(node_id: str, d: DeviceInfo) -> dict[str, Any]:
    return {
        "node": node_id,
        "id": d.id,
        "index": d.index,
        "name": d.name,
        "vendor": d.vendor.value,
        "backend": d.backend.value,
        "ggml_name": d.ggml_name,
        "memory_free_bytes": d.memory_free_bytes,
        "memory_total_bytes": d.memory_total_bytes,
        "utilization_percent": d.utilization_percent,
        "temperature_c": d.temperature_c,
    }


def node_dict(n: NodeStatus) -> dict[str, Any]:
    r = n.record
    free, total = _gpu_memory(r.devices)
    return {
        "node": r.node_id,
        "state": _upper(n.state.value),
        "address": r.address,
        "hostname": r.host.hostname,
        "os": r.host.os,
        "arch": r.host.arch,
        "llama_cpp_version": r.host.llama_cpp_version,
        "rpc_protocol_version": r.host.rpc_protocol_version,
        "gpu_free_bytes": free,
        "gpu_total_bytes": total,
        "devices": [device_dict(r.node_id, d) for d in r.devices],
        "models": [m.path for m in r.models],
        "processes": [
            {"name": p.name, "kind": p.kind.value, "state": _upper(p.state), "port": p.port}
            for p in r.processes
        ],
        "engines": [{"model": e.model, "ready": e.ready} for e in r.engines],
        "last_seen": r.last_seen,
        "message": r.message,
    }


def nodes_table(nodes: Sequence[NodeStatus], now: float) -> str:
    if not nodes:
        return "no nodes have joined (start tightwad-agent on each host)"
    rows = []
    for n in nodes:
        r = n.record
        free, total = _gpu_memory(r.devices)
        gpus = sum(1 for d in r.devices if d.is_gpu)
        procs = ",".join(p.name for p in r.processes) or "-"
        rows.append(
            [
                r.node_id,
                _upper(n.state.value),
                r.address,
                gpus,
                f"{size(free)} / {size(total)}" if gpus else "-",
                len(r.models),
                procs,
                ago(r.last_seen, now),
                r.message,
            ]
        )
    headers = ["NODE", "STATE", "ADDRESS", "GPUS", "GPU FREE / TOTAL", "MODELS", "PROCESSES"]
    return table([*headers, "LAST SEEN", "MESSAGE"], rows)


def gpus_table(nodes: Sequence[NodeStatus]) -> str:
    rows = [
        [
            n.record.node_id,
            d.id,
            d.name,
            f"{d.vendor.value}/{d.backend.value}",
            size(d.memory_free_bytes),
            size(d.memory_total_bytes),
        ]
        for n in nodes
        for d in n.record.devices
    ]
    if not rows:
        return "no devices reported (no node has joined)"
    return table(["NODE", "ID", "NAME", "VENDOR/BACKEND", "FREE", "TOTAL"], rows)


# --- models -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelRow:
    """A model as the cluster knows it: configured, reported by nodes, or both."""

    name: str
    path: str
    configured: bool
    nodes: tuple[str, ...]
    facts: ModelFacts | None


def _basename(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def model_rows(
    nodes: Sequence[NodeStatus], configured: Mapping[str, ModelConfig]
) -> list[ModelRow]:
    """Configured models first (with the nodes that have their file), then other files."""
    reported: dict[str, tuple[ModelFacts, list[str]]] = {}
    for n in nodes:
        for m in n.record.models:
            reported.setdefault(m.path, (m, []))[1].append(n.record.node_id)
    rows: list[ModelRow] = []
    claimed: set[str] = set()
    for name, cfg in configured.items():
        matches = [p for p in reported if p == cfg.path or _basename(p) == _basename(cfg.path)]
        claimed.update(matches)
        holders = sorted({node for p in matches for node in reported[p][1]})
        facts = reported[matches[0]][0] if matches else None
        rows.append(ModelRow(name, cfg.path, True, tuple(holders), facts))
    for path, (facts, holders) in sorted(reported.items()):
        if path not in claimed:
            rows.append(ModelRow(facts.name or _basename(path), path, False, tuple(holders), facts))
    return rows


def model_dict(row: ModelRow) -> dict[str, Any]:
    f = row.facts
    return {
        "name": row.name,
        "path": row.path,
        "configured": row.configured,
        "nodes": list(row.nodes),
        "size_bytes": f.size_bytes if f else None,
        "architecture": f.architecture if f else None,
        "n_layers": f.n_layers if f else None,
        "quantization": f.quantization if f else None,
        "context_length": f.context_length if f else None,
    }


def models_table(rows: Sequence[ModelRow]) -> str:
    if not rows:
        return "no models: none configured, and no node reported a GGUF file"
    body = [
        [
            r.name,
            "config" if r.configured else "node",
            ",".join(r.nodes) or "(no node has it)",
            size(r.facts.size_bytes) if r.facts else "-",
            r.facts.n_layers if r.facts else "-",
            r.facts.quantization if r.facts else "-",
            r.path,
        ]
        for r in rows
    ]
    return table(["MODEL", "SOURCE", "NODES", "SIZE", "LAYERS", "QUANT", "PATH"], body)


# --- placements and deployments -----------------------------------------------------------


def _layers(a: Assignment) -> str:
    if a.n_layers == 0:
        return "-"
    return f"{a.first_layer}-{a.first_layer + a.n_layers - 1} ({a.n_layers})"


def assignment_dict(a: Assignment) -> dict[str, Any]:
    return {
        "node": a.node_id,
        "device_id": a.device_id,
        "ggml_device": a.ggml_device,
        "first_layer": a.first_layer,
        "n_layers": a.n_layers,
        "weight_bytes": a.weight_bytes,
        "kv_bytes": a.kv_bytes,
        "compute_bytes": a.compute_bytes,
        "expected_bytes": a.expected_bytes,
        "margin_bytes": a.margin_bytes,
        "free_bytes": a.free_bytes,
    }


def placement_dict(p: Placement) -> dict[str, Any]:
    return {
        "model": p.model,
        "fits": p.fits,
        "reason": p.reason,
        "coordinator": p.coordinator,
        "device_order": list(p.devices),
        "tensor_split": list(p.tensor_split),
        "n_gpu_layers": p.n_gpu_layers,
        "devices": [assignment_dict(a) for a in p.assignments],
    }


def _refusal_lines(reason: str) -> list[str]:
    """The refusal's summary, then one indented line per further part and per device (the
    reason joins its parts with '; ' and puts the devices after ' — ')."""
    head, _, per_device = reason.partition(" — ")
    first, *rest = head.split("; ")
    return [
        first,
        *(f"  {part}" for part in rest),
        *(f"  {d}" for d in per_device.split("; ") if d),
    ]


def placement_text(p: Placement) -> str:
    if not p.fits:
        return "\n".join([f"{p.model}: REFUSED", *_refusal_lines(p.reason)])
    rows = [
        [
            a.ggml_device,
            a.node_id,
            a.device_id,
            _layers(a),
            size(a.weight_bytes),
            size(a.kv_bytes),
            size(a.compute_bytes),
            size(a.expected_bytes),
            size(a.free_bytes),
            size(a.free_bytes - a.margin_bytes - a.expected_bytes),
        ]
        for a in p.assignments
    ]
    headers = ["DEVICE", "NODE", "DEVICE ID", "LAYERS", "WEIGHTS", "KV", "COMPUTE"]
    split = ",".join(f"{x:g}" for x in p.tensor_split) or "-"
    return "\n".join(
        [
            f"{p.model}: FITS on coordinator {p.coordinator or '-'}",
            table([*headers, "EXPECTED", "FREE", "HEADROOM"], rows),
            f"--device {','.join(p.devices) or '-'}",
            f"--tensor-split {split}",
            f"-ngl {p.n_gpu_layers}",
        ]
    )


def deployment_dict(d: Deployment) -> dict[str, Any]:
    route = d.route
    return {
        "deployment_id": d.deployment_id,
        "model": d.spec.model,
        "state": _upper(d.state.value),
        "message": d.message,
        "ctx_size": d.spec.ctx_size,
        "kv_type": d.spec.kv_type,
        "serve_mode": d.spec.serve_mode.value,
        "placement": placement_dict(d.placement) if d.placement else None,
        "route": {
            "model": route.model,
            "engine_address": route.engine_address,
            "http_url": route.http_url,
            "can_verify": route.can_verify,
        }
        if route
        else None,
        "updated": d.updated,
    }


def _route(d: Deployment) -> str:
    if d.route is None:
        return "-"
    return d.route.engine_address or d.route.http_url or "-"


def deployments_table(deps: Sequence[Deployment]) -> str:
    if not deps:
        return "no deployments (tightwadctl deploy MODEL)"
    rows = [
        [
            d.deployment_id,
            d.spec.model,
            _upper(d.state.value),
            ",".join(d.placement.devices) if d.placement else "-",
            _route(d),
            d.message,
        ]
        for d in deps
    ]
    return table(["DEPLOYMENT", "MODEL", "STATE", "DEVICES", "ROUTE", "MESSAGE"], rows)


# --- status -------------------------------------------------------------------------------


def status_dict(s: ClusterStatus, address: str) -> dict[str, Any]:
    return {
        "controller": {
            "address": address,
            "version": s.controller_version,
            "uptime_s": s.uptime_s,
        },
        "nodes": [node_dict(n) for n in s.nodes],
        "deployments": [deployment_dict(d) for d in s.deployments],
    }


def _counts(values: Iterable[str]) -> str:
    tally: dict[str, int] = {}
    for v in values:
        tally[v] = tally.get(v, 0) + 1
    return ", ".join(f"{n} {k.upper()}" for k, n in sorted(tally.items()))


def status_text(s: ClusterStatus, address: str, now: float) -> str:
    nodes = _counts(n.state.value for n in s.nodes) or "none"
    deps = _counts(d.state.value for d in s.deployments) or "none"
    head = (
        f"controller {s.controller_version} at {address}, up {duration(s.uptime_s)}\n"
        f"nodes: {len(s.nodes)} ({nodes})   deployments: {len(s.deployments)} ({deps})"
    )
    return "\n\n".join([head, nodes_table(s.nodes, now), deployments_table(s.deployments)])


# --- events and logs ----------------------------------------------------------------------


def event_dict(e: Event) -> dict[str, Any]:
    return {
        "event_id": e.event_id,
        "time": e.time,
        "level": _upper(e.level.value),
        "kind": e.kind,
        "node": e.node_id,
        "deployment_id": e.deployment_id,
        "message": e.message,
        "fields": dict(e.fields),
    }


_EVENT_HEADERS = ["ID", "TIME", "LEVEL", "KIND", "NODE", "DEPLOYMENT", "MESSAGE"]


def _event_cells(e: Event) -> list[object]:
    return [
        e.event_id,
        clock(e.time),
        _upper(e.level.value),
        e.kind,
        e.node_id or "-",
        e.deployment_id or "-",
        e.message,
    ]


def events_table(events: Sequence[Event]) -> str:
    if not events:
        return "no events"
    return table(_EVENT_HEADERS, [_event_cells(e) for e in events])


def event_line(e: Event) -> str:
    """One followed event: fixed widths, since later rows cannot realign earlier ones."""
    c = _event_cells(e)
    return f"{c[0]!s:>6}  {c[1]}  {c[2]!s:<7}  {c[3]!s:<22}  {c[4]!s:<10}  {c[5]!s:<16}  {c[6]}"


def log_dict(node_id: str, process: str, line: LogLine) -> dict[str, Any]:
    return {
        "node": node_id,
        "process": process,
        "time": line.time,
        "stream": line.stream,
        "line": line.line,
    }


def log_line(line: LogLine) -> str:
    return line.line
