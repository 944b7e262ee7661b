"""The controller's decision: ``reconcile(desired, observed, now) -> list[Action]``. Pure.

A sync compares each deployment with what the agents report and returns what to do, in the
order to do it; :mod:`tightwad.controller.executor` and the controller carry it out. Running
a sync again on an unchanged world returns the same actions, and a world that already matches
(e.g. after a controller restart with everything still running) returns none.

Rules, per deployment that should run (``desired_running``) and has a fitting placement:

1. a node of its placement UNREACHABLE, DRAINING or gone -> ``MarkState(DEGRADED)`` and
   ``Replan`` (planning only uses READY nodes); a NOT_READY node -> wait (no action);
2. an rpc-server it needs that is missing or stopped -> ``StartRpcServer``; one that is dead
   (backoff, crash loop, failed) after the model was loaded -> DEGRADED + ``Replan`` (the
   model's tensors on it are gone, so the coordinator must reload);
3. all rpc-servers alive and the load of the current generation not done -> unload the stale
   engine / stop the stale llama-server, then ``LoadEngine`` or ``StartLlamaServer``;
4. loaded and healthy but not marked SERVING -> ``MarkState(SERVING)`` with the route; loaded
   but the engine or llama-server is gone or unhealthy -> DEGRADED and a reload.

A deployment without a placement, or with a refused one, gets ``Replan``. A stopping
deployment gets its engine or llama-server removed, then ``MarkState(STOPPED)``. Finally,
controller-owned processes (``rpc-*``, ``llama-dep-*``) that no running deployment needs are
stopped (garbage collection), on READY nodes only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tightwad.controller.domain import (
    Deployment,
    DeploymentState,
    NodeRecord,
    NodeState,
    ProcessKind,
    RouteInfo,
    ServeMode,
)
from tightwad.controller.ids import DeploymentId, DeviceId, NodeId
from tightwad.controller.placement import Placement
from tightwad.controller.registry import node_states

__all__ = [
    "Action",
    "LoadEngine",
    "MarkState",
    "Replan",
    "StartLlamaServer",
    "StartRpcServer",
    "StopProcess",
    "UnloadEngine",
    "llama_server_args",
    "llama_server_name",
    "reconcile",
    "rpc_server_name",
]

_DEAD = frozenset({"backoff", "crash_loop", "failed"})
_GONE = frozenset({"stopped", "stopping"})
LLAMA_PORT_BASE = 8180


def rpc_server_name(device_id: DeviceId | str) -> str:
    return f"rpc-{device_id}"


def llama_server_name(deployment_id: DeploymentId) -> str:
    return f"llama-{deployment_id}"


@dataclass(frozen=True, slots=True)
class StartRpcServer:
    deployment_id: DeploymentId
    node_id: NodeId
    device_id: DeviceId
    name: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class StopProcess:
    deployment_id: DeploymentId | None
    node_id: NodeId
    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class LoadEngine:
    deployment_id: DeploymentId
    node_id: NodeId
    model: str
    path: str
    ctx_size: int
    devices: tuple[str, ...]
    tensor_split: tuple[float, ...]
    n_gpu_layers: int
    generation: int


@dataclass(frozen=True, slots=True)
class UnloadEngine:
    deployment_id: DeploymentId
    node_id: NodeId
    model: str


@dataclass(frozen=True, slots=True)
class StartLlamaServer:
    deployment_id: DeploymentId
    node_id: NodeId
    name: str
    port: int
    args: tuple[str, ...]
    generation: int


@dataclass(frozen=True, slots=True)
class MarkState:
    deployment_id: DeploymentId
    state: DeploymentState
    message: str
    route: RouteInfo | None = None


@dataclass(frozen=True, slots=True)
class Replan:
    deployment_id: DeploymentId
    reason: str


Action = (
    StartRpcServer | StopProcess | LoadEngine | UnloadEngine | StartLlamaServer | MarkState | Replan
)


def llama_server_args(dep: Deployment, placement: Placement, port: int) -> tuple[str, ...]:
    """llama-server's command line for a pooled deployment (the agent adds the binary)."""
    args = [
        "--model", dep.model_path, "--alias", dep.spec.model,
        "--ctx-size", str(dep.spec.ctx_size),
        "--port", str(port),
        "-ngl", str(placement.n_gpu_layers),
        "--cache-type-k", dep.spec.kv_type, "--cache-type-v", dep.spec.kv_type,
    ]  # fmt: skip
    rpc = [a.ggml_device[4:-1] for a in placement.rpc_assignments]
    if rpc:
        args += ["--rpc", ",".join(rpc)]
    if placement.devices:
        args += ["--device", ",".join(placement.devices)]
        args += ["--tensor-split", ",".join(f"{f:g}" for f in placement.tensor_split)]
    else:
        args += ["--device", "none"]
    return tuple(args)


def _route(dep: Deployment, coord: NodeRecord, port: int) -> RouteInfo:
    if dep.spec.serve_mode is ServeMode.ENGINE:
        return RouteInfo(dep.spec.model, engine_address=coord.address, can_verify=True)
    return RouteInfo(dep.spec.model, http_url=f"http://{coord.rpc_host}:{port}")


def _llama_port(dep: Deployment) -> int:
    return LLAMA_PORT_BASE + int.from_bytes(dep.deployment_id.encode()[-2:], "big") % 500


def _mark(
    dep: Deployment, state: DeploymentState, message: str, route: RouteInfo | None = None
) -> list[Action]:
    if dep.state is state and dep.message == message and dep.route == route:
        return []
    return [MarkState(dep.deployment_id, state, message, route)]


def reconcile_one(
    dep: Deployment, nodes: Mapping[NodeId, NodeRecord], states: Mapping[NodeId, NodeState]
) -> list[Action]:
    """The actions for one deployment (see the module docstring)."""
    if not dep.desired_running:
        return _reconcile_stop(dep, nodes, states)
    placement = dep.placement
    if dep.state is DeploymentState.FAILED:
        return []  # a permanent error: wait for a new spec (Swap) or a Stop
    if placement is None or not placement.fits or placement.coordinator is None:
        return [Replan(dep.deployment_id, "no placement yet")]
    for node_id in placement.node_ids:
        state = states.get(node_id)
        if state in (None, NodeState.UNREACHABLE, NodeState.DRAINING):
            why = f"node {node_id} is {state.value.replace('_', ' ') if state else 'gone'}"
            return [*_mark(dep, DeploymentState.DEGRADED, why), Replan(dep.deployment_id, why)]
    if any(states.get(n) is NodeState.NOT_READY for n in placement.node_ids):
        return []  # an agent is re-attaching: wait for it before judging its processes
    coord = nodes[placement.coordinator]
    loaded = dep.loaded_generation == dep.generation
    starts: list[Action] = []
    for a in placement.rpc_assignments:
        name = rpc_server_name(a.device_id)
        proc = nodes[a.node_id].process(name)
        if proc is None or proc.state in _GONE:
            if loaded:
                why = f"rpc-server {name} on node {a.node_id} is gone"
                return [*_mark(dep, DeploymentState.DEGRADED, why), Replan(dep.deployment_id, why)]
            rpc_host, rpc_port = a.ggml_device[4:-1].rsplit(":", 1)
            starts.append(
                StartRpcServer(
                    dep.deployment_id, a.node_id, a.device_id, name, rpc_host, int(rpc_port)
                )
            )
        elif proc.state in _DEAD:
            why = f"rpc-server {name} on node {a.node_id} is {proc.state.replace('_', ' ')}"
            if proc.message:
                why += f": {proc.message}"
            return [*_mark(dep, DeploymentState.DEGRADED, why), Replan(dep.deployment_id, why)]
    if starts:
        return [*_mark(dep, DeploymentState.STARTING, "starting rpc-servers"), *starts]
    port = _llama_port(dep)
    route = _route(dep, coord, port)
    if dep.spec.serve_mode is ServeMode.ENGINE:
        engine = coord.engine(dep.spec.model)
        if loaded and engine is not None and engine.ready:
            return _mark(dep, DeploymentState.SERVING, "serving", route)
        actions: list[Action] = []
        if loaded:  # it was loaded, and is no more: say so, then reload
            actions += _mark(
                dep,
                DeploymentState.DEGRADED,
                f"engine {dep.spec.model} on node {coord.node_id} is not ready",
            )
        elif dep.state is not DeploymentState.STARTING:
            actions += _mark(dep, DeploymentState.STARTING, "loading the model")
        if engine is not None:
            actions.append(UnloadEngine(dep.deployment_id, coord.node_id, dep.spec.model))
        actions.append(
            LoadEngine(
                dep.deployment_id,
                coord.node_id,
                dep.spec.model,
                dep.model_path,
                dep.spec.ctx_size,
                placement.devices,
                placement.tensor_split,
                placement.n_gpu_layers,
                dep.generation,
            )
        )
        return actions
    name = llama_server_name(dep.deployment_id)
    proc = coord.process(name)
    if loaded and proc is not None and proc.state == "running" and proc.healthy:
        return _mark(dep, DeploymentState.SERVING, "serving", route)
    if proc is not None and proc.state == "starting" and loaded:
        return []
    actions = []
    if loaded:
        actions += _mark(
            dep,
            DeploymentState.DEGRADED,
            f"llama-server {name} on node {coord.node_id} is not healthy",
        )
    elif dep.state is not DeploymentState.STARTING:
        actions += _mark(dep, DeploymentState.STARTING, "starting llama-server")
    if proc is not None and proc.state not in _GONE:
        actions.append(StopProcess(dep.deployment_id, coord.node_id, name, "restart"))
    actions.append(
        StartLlamaServer(
            dep.deployment_id,
            coord.node_id,
            name,
            port,
            llama_server_args(dep, placement, port),
            dep.generation,
        )
    )
    return actions


def _reconcile_stop(
    dep: Deployment, nodes: Mapping[NodeId, NodeRecord], states: Mapping[NodeId, NodeState]
) -> list[Action]:
    if dep.state is DeploymentState.STOPPED:
        return []
    actions: list[Action] = []
    coord_id = dep.placement.coordinator if dep.placement else None
    coord = nodes.get(coord_id) if coord_id else None
    if coord is not None and states.get(coord.node_id) not in (None, NodeState.UNREACHABLE):
        if coord.engine(dep.spec.model) is not None and dep.spec.serve_mode is ServeMode.ENGINE:
            actions.append(UnloadEngine(dep.deployment_id, coord.node_id, dep.spec.model))
        name = llama_server_name(dep.deployment_id)
        proc = coord.process(name)
        if proc is not None and proc.state not in _GONE:
            actions.append(StopProcess(dep.deployment_id, coord.node_id, name, "stopped"))
    return [*actions, MarkState(dep.deployment_id, DeploymentState.STOPPED, "stopped")]


def _garbage(
    deployments: Sequence[Deployment],
    nodes: Mapping[NodeId, NodeRecord],
    states: Mapping[NodeId, NodeState],
) -> list[Action]:
    needed: set[tuple[NodeId, str]] = set()
    for dep in deployments:
        if not dep.desired_running or dep.placement is None:
            continue
        needed.add((dep.placement.coordinator or NodeId(""), llama_server_name(dep.deployment_id)))
        for a in dep.placement.rpc_assignments:
            needed.add((a.node_id, rpc_server_name(a.device_id)))
    actions: list[Action] = []
    for node_id in sorted(nodes):
        if states.get(node_id) not in (NodeState.READY, NodeState.DRAINING):
            continue
        for proc in nodes[node_id].processes:
            owned = (proc.kind is ProcessKind.RPC_SERVER and proc.name.startswith("rpc-")) or (
                proc.name.startswith("llama-dep-")
            )
            if owned and proc.state not in _GONE and (node_id, proc.name) not in needed:
                actions.append(StopProcess(None, node_id, proc.name, "no deployment needs it"))
    return actions


def reconcile(
    desired: Sequence[Deployment],
    observed: Mapping[NodeId, NodeRecord],
    now: float,
    *,
    timeout_s: float,
) -> list[Action]:
    """Every action of one sync: per deployment (by id), then garbage collection."""
    states = node_states(observed.values(), now, timeout_s)
    actions: list[Action] = []
    for dep in sorted(desired, key=lambda d: d.deployment_id):
        actions += reconcile_one(dep, observed, states)
    # Processes of deployments that are still starting or being replanned are kept.
    return actions + _garbage(desired, observed, states)
