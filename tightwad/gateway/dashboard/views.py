"""What the dashboard page shows, as JSON: pure functions of the gateway's and the
controller's state.

Owns :func:`drafting_verdict` (drafting on or off, and why, from a route's status entry),
:func:`route_view` (a status entry plus its rolling history; :func:`batch_view`, how full its
steps are) and :func:`cluster_view` (nodes,
devices with what each deployment holds, deployments with their layer split). Nothing here does
I/O; the page draws exactly these numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tightwad.controller.cluster_wire import NodeStatus
from tightwad.controller.domain import Deployment, Event

__all__ = ["batch_view", "cluster_view", "drafting_verdict", "event_view", "route_view"]


def _ms(value: object) -> str:
    return f"{value:g} ms" if isinstance(value, int | float) else "?"


def drafting_verdict(route: Mapping[str, Any]) -> dict[str, Any]:
    """``{"on": bool, "why": str}`` for a ``/v1/tightwad/status`` route entry.

    Reads the loop's calibration (``details.drafting``: per proposer, whether drafting can pay
    at the measured plain-step and per-token costs) and the drafters' health.
    """
    details: Mapping[str, Any] = route.get("details") or {}
    if not route.get("ready", False):
        error = details.get("error") or route.get("error")
        return {"on": False, "why": f"route not ready: {error}" if error else "route not ready"}
    mode = route.get("draft_mode") or "none"
    if mode == "none":
        return {"on": False, "why": "no drafter configured: plain decoding"}
    if not route.get("can_verify", False):
        return {"on": False, "why": "the target cannot verify drafts: plain decoding"}
    drafters: Sequence[Mapping[str, Any]] = details.get("drafters") or []
    if drafters and not any(d.get("healthy", True) for d in drafters):
        return {"on": False, "why": "every drafter failed: plain decoding until one recovers"}
    proposers: Mapping[str, Mapping[str, Any]] = details.get("drafting") or {}
    if not proposers:
        return {"on": True, "why": f"{mode}: drafting; its cost is not judged yet (no rounds "
                "of an adaptive request measured)"}  # fmt: skip
    paying = {name: p for name, p in proposers.items() if p.get("can_pay", True)}
    reasons = []
    for name, p in (paying or proposers).items():
        reasons.append(
            f"{name}: plain step {_ms(p.get('plain_step_ms'))}, "
            f"+{_ms(p.get('extra_ms_per_drafted_token'))} per drafted token, "
            f"acceptance {float(p.get('acceptance') or 0.0):.0%} "
            f"over {p.get('rounds_seen', 0)} rounds"
        )
    if paying:
        return {"on": True, "why": "drafting pays (" + "; ".join(reasons) + ")"}
    return {"on": False, "why": "drafting cannot pay here (" + "; ".join(reasons) + ")"}


def route_view(
    route: Mapping[str, Any],
    *,
    tok_s: float,
    series: Mapping[str, Any],
    totals: Mapping[str, Any],
    errors: int,
) -> dict[str, Any]:
    """One row of the routes table (and its charts)."""
    details: Mapping[str, Any] = route.get("details") or {}
    widths = details.get("verify_ms_by_width") or {}
    return {
        "name": route.get("name"),
        "target": route.get("target", ""),
        "draft": route.get("draft") or "",
        "draft_mode": route.get("draft_mode", "none"),
        "ready": bool(route.get("ready", False)),
        "n_ctx": route.get("n_ctx", 0),
        "in_flight": route.get("in_flight", 0),
        "queued": route.get("queued", 0),
        "errors": errors,
        "error": details.get("error") or route.get("error"),
        "tok_s": round(tok_s, 2),
        "series": dict(series),
        "totals": dict(totals),
        "drafting": drafting_verdict(route),
        "verify_ms_by_width": {str(k): v for k, v in sorted(widths.items(), key=_width)},
        "copy_drafts": details.get("copy_drafts"),
        "batch": batch_view(details),
    }


def _number(value: object) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _per(num: object, den: object) -> float | None:
    n, d = _number(num), _number(den)
    return round(n / d, 2) if n is not None and d else None


def _first(b: Mapping[str, Any], *keys: str) -> int | float | None:
    for key in keys:
        value = _number(b.get(key))
        if value is not None:
            return round(value, 2)
    return None


def batch_view(details: Mapping[str, Any]) -> dict[str, Any]:
    """How full the route's steps are: requests running on it now and the most at once
    (``live_runs``, ``peak_live_runs``), and when the target engine reports its continuous
    batching (``details["batch"]``, the engine's ``BatchOccupancy``: decodes, the jobs and
    tokens they held) the mean sessions and tokens per shared decode. ``batching`` False: the
    engine does not batch. Every field is None when the route does not report it."""
    batch = details.get("batch")
    b: Mapping[str, Any] = batch if isinstance(batch, Mapping) else {}
    enabled = b.get("enabled")
    decodes = _number(b.get("decodes"))
    stepped = enabled is not False and decodes != 0
    jobs = b.get("jobs", b.get("steps"))
    view: dict[str, Any] = {
        "live_runs": _number(details.get("live_runs")),
        "peak_live_runs": _number(details.get("peak_live_runs")),
        "batching": enabled if isinstance(enabled, bool) else (True if b else None),
        "sessions_per_step": None,
        "tokens_per_step": None,
        "recent_sessions_per_step": None,
        "max_sessions_per_step": None,
        "max_tokens_per_step": None,
        "decodes": decodes,
    }
    if not b or not stepped:
        return view
    sessions = _first(b, "mean_sessions_per_step", "sessions_per_step")
    tokens = _first(b, "mean_tokens_per_step", "tokens_per_step")
    view.update(
        sessions_per_step=sessions if sessions else _per(jobs, decodes),
        tokens_per_step=tokens if tokens else _per(b.get("tokens"), decodes),
        recent_sessions_per_step=_first(b, "recent_sessions_per_step") or None,
        max_sessions_per_step=_number(b.get("max_jobs")),
        max_tokens_per_step=_number(b.get("max_tokens")),
    )
    return view


def _width(item: tuple[str, object]) -> int:
    try:
        return int(item[0])
    except ValueError:
        return 0


# --- the cluster ---------------------------------------------------------------------------


def event_view(event: Event) -> dict[str, Any]:
    return {
        "id": event.event_id,
        "time": event.time,
        "level": str(event.level),
        "kind": event.kind,
        "message": event.message,
        "node_id": event.node_id,
        "deployment_id": event.deployment_id,
        "fields": dict(event.fields),
    }


def _held(deployments: Iterable[Deployment]) -> dict[str, list[dict[str, Any]]]:
    """Device id -> what each deployment's placement expects it to hold."""
    held: dict[str, list[dict[str, Any]]] = {}
    for dep in deployments:
        if dep.placement is None or not dep.desired_running:
            continue
        for a in dep.placement.assignments:
            held.setdefault(str(a.device_id), []).append(
                {
                    "deployment_id": str(dep.deployment_id),
                    "model": dep.spec.model,
                    "bytes": a.expected_bytes,
                    "layers": a.n_layers,
                }
            )
    return held


def cluster_view(
    nodes: Sequence[NodeStatus],
    deployments: Sequence[Deployment],
    *,
    address: str,
    version: str = "",
    uptime_s: float = 0.0,
) -> dict[str, Any]:
    """Nodes with their devices (memory used, free, held per deployment) and deployments
    with their layer split per device."""
    held = _held(deployments)
    node_views = []
    for n in nodes:
        r = n.record
        devices = []
        for d in r.devices:
            total, free = d.memory_total_bytes, d.memory_free_bytes
            devices.append(
                {
                    "id": d.id,
                    "name": d.name,
                    "vendor": str(d.vendor),
                    "backend": str(d.backend),
                    "total_bytes": total,
                    "free_bytes": free,
                    "used_bytes": max(0, total - free),
                    "held": held.get(d.id, []),
                    "utilization_percent": d.utilization_percent,
                }
            )
        node_views.append(
            {
                "id": str(r.node_id),
                "address": r.address,
                "state": str(n.state),
                "hostname": r.host.hostname,
                "os": r.host.os,
                "arch": r.host.arch,
                "cpu_cores": r.host.cpu_cores,
                "ram_total_bytes": r.host.ram_total_bytes,
                "ram_available_bytes": r.host.ram_available_bytes,
                "last_seen": r.last_seen,
                "message": r.message,
                "devices": devices,
                "processes": [
                    {"name": p.name, "kind": str(p.kind), "state": p.state, "healthy": p.healthy}
                    for p in r.processes
                ],
                "engines": [{"model": e.model, "ready": e.ready} for e in r.engines],
            }
        )
    return {
        "reachable": True,
        "address": address,
        "version": version,
        "uptime_s": round(uptime_s, 1),
        "nodes": node_views,
        "deployments": [_deployment_view(d) for d in deployments],
    }


def _deployment_view(dep: Deployment) -> dict[str, Any]:
    placement = None
    if dep.placement is not None:
        p = dep.placement
        placement = {
            "coordinator": str(p.coordinator or ""),
            "fits": p.fits,
            "reason": p.reason,
            "n_gpu_layers": p.n_gpu_layers,
            "assignments": [
                {
                    "node_id": str(a.node_id),
                    "device_id": str(a.device_id),
                    "ggml_device": a.ggml_device,
                    "first_layer": a.first_layer,
                    "n_layers": a.n_layers,
                    "holds_output": a.holds_output,
                    "weight_bytes": a.weight_bytes,
                    "kv_bytes": a.kv_bytes,
                    "compute_bytes": a.compute_bytes,
                    "expected_bytes": a.expected_bytes,
                }
                for a in p.assignments
            ],
        }
    route = dep.route
    return {
        "id": str(dep.deployment_id),
        "model": dep.spec.model,
        "state": str(dep.state),
        "message": dep.message,
        "ctx_size": dep.spec.ctx_size,
        "serve_mode": str(dep.spec.serve_mode),
        "route": None if route is None else {"model": route.model, "can_verify": route.can_verify},
        "placement": placement,
    }
