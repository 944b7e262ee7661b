"""The controller's decision: ``reconcile(desired, observed, now) -> list[Action]``. Pure.

A sync compares each deployment with what the agents report and returns what to do, in the
order to do it; :mod:`tightwad.controller.executor` and the controller carry it out. Running
a sync again on an unchanged world returns the same actions, and a world that already matches
(e.g. after a controller restart with everything still running) returns none.

A deployment is served by one *server process* on its coordinator: an engine host
(``engine-<id>``, :mod:`tightwad.agent.engine_host`: the embedded engine, pooled over the
rpc-servers, so the gateway can speculate over the pool) or a ``llama-server`` (``llama-<id>``).
Either listens on a port its agent allocates; the route is that process's ``host:port``.

Rules, per deployment that should run (``desired_running``) and has a fitting placement:

1. a node of its placement UNREACHABLE, DRAINING or gone -> ``MarkState(DEGRADED)`` and
   ``Replan`` (planning only uses READY nodes); a NOT_READY node -> wait (no action);
2. an rpc-server it needs:
   - missing or stopped -> ``StartRpcServer`` (listening on another port than planned: stop
     it first); gone after the model was loaded -> DEGRADED + ``Replan``;
   - restarting (backoff) after the model was loaded -> DEGRADED + ``Replan``: the tensors the
     server held are gone with it, so the server process must reload; before the load -> wait
     for its agent to bring it back;
   - crash loop or failed -> DEGRADED + ``Replan``; planning leaves that device out;
3. all rpc-servers up and the current generation not loaded -> stop the stale server process,
   then ``StartEngineHost`` or ``StartLlamaServer`` (started and waited healthy by its agent);
4. loaded, its server process running and healthy -> ``MarkState(SERVING)`` with the route;
   starting or restarting (its agent restarts it) -> DEGRADED with the reason, and wait;
   gone, crash-looping or failed -> DEGRADED, stop it, start it again.

A deployment without a placement, or with a refused one, gets ``Replan``. A stopping
deployment gets its server process (and any engine loaded inside its coordinator's agent)
removed, then ``MarkState(STOPPED)``. Finally, controller-owned processes (``rpc-*``,
``engine-dep-*``, ``llama-dep-*``) that no running deployment needs are stopped (garbage
collection), on READY nodes only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tightwad.config._schema import EngineConfig as _ConfigEngine
from tightwad.controller.domain import (
    Deployment,
    DeploymentState,
    NodeRecord,
    NodeState,
    ProcessKind,
    ProcessView,
    RouteInfo,
    ServeMode,
)
from tightwad.controller.ids import DeploymentId, DeviceId, NodeId
from tightwad.controller.placement import Placement
from tightwad.controller.registry import node_states

__all__ = [
    "Action",
    "EngineHostDefaults",
    "MarkState",
    "Replan",
    "StartEngineHost",
    "StartLlamaServer",
    "StartRpcServer",
    "StopProcess",
    "UnloadEngine",
    "engine_host_args",
    "engine_host_name",
    "llama_server_args",
    "llama_server_name",
    "reconcile",
    "rpc_server_name",
    "server_process_name",
]

_RESTARTING = frozenset({"backoff"})
_BROKEN = frozenset({"crash_loop", "failed"})
_DEAD = _RESTARTING | _BROKEN
_GONE = frozenset({"stopped", "stopping"})
_OWNED_PREFIXES = ("llama-dep-", "engine-dep-")


def rpc_server_name(device_id: DeviceId | str) -> str:
    return f"rpc-{device_id}"


def llama_server_name(deployment_id: DeploymentId) -> str:
    return f"llama-{deployment_id}"


def engine_host_name(deployment_id: DeploymentId) -> str:
    return f"engine-{deployment_id}"


def server_process_name(dep: Deployment) -> str:
    """The process that serves ``dep`` on its coordinator."""
    if dep.spec.serve_mode is ServeMode.ENGINE:
        return engine_host_name(dep.deployment_id)
    return llama_server_name(dep.deployment_id)


_CONFIG_ENGINE = _ConfigEngine()  # the cluster file's engine section, defaults


@dataclass(frozen=True, slots=True)
class EngineHostDefaults:
    """Engine settings a deployment spec does not carry (the cluster file's ``engine``)."""

    max_sessions: int = _CONFIG_ENGINE.max_sessions  # engine.max_sessions
    threads: int = 0
    batch_size: int = 512
    # None: the engine host's own default (the engine's EngineConfig).
    batch_steps: bool | None = None
    open_wait_s: float | None = None
    prefill_chunk: int | None = None


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
class UnloadEngine:
    """Unload a model from the coordinator agent's own engine (deployments made before engine
    hosts loaded it there)."""

    deployment_id: DeploymentId
    node_id: NodeId
    model: str


@dataclass(frozen=True, slots=True)
class StartEngineHost:
    deployment_id: DeploymentId
    node_id: NodeId
    name: str
    args: tuple[str, ...]
    generation: int


@dataclass(frozen=True, slots=True)
class StartLlamaServer:
    deployment_id: DeploymentId
    node_id: NodeId
    name: str
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
    StartRpcServer
    | StopProcess
    | UnloadEngine
    | StartEngineHost
    | StartLlamaServer
    | MarkState
    | Replan
)


def _rpc_endpoints(placement: Placement) -> list[str]:
    return [a.ggml_device[4:-1] for a in placement.rpc_assignments]


def _llama_server_device_names(devices: Sequence[str], rpc: Sequence[str]) -> list[str]:
    """llama-server names the devices of ``--rpc`` servers ``RPC0``, ``RPC1``, … in the order
    of that list (one device per rpc-server, as our agents start them); the plan's
    ``RPC[host:port]`` is the engine host's spelling."""
    index = {f"RPC[{endpoint}]": f"RPC{i}" for i, endpoint in enumerate(rpc)}
    return [index.get(d, d) for d in devices]


def llama_server_args(dep: Deployment, placement: Placement) -> tuple[str, ...]:
    """llama-server's command line for a pooled deployment (the agent adds the binary, host
    and port)."""
    args = [
        "--model", dep.model_path, "--alias", dep.spec.model,
        "--ctx-size", str(dep.spec.ctx_size),
        "-ngl", str(placement.n_gpu_layers),
        "--cache-type-k", dep.spec.kv_type, "--cache-type-v", dep.spec.kv_type,
    ]  # fmt: skip
    rpc = _rpc_endpoints(placement)
    if rpc:
        args += ["--rpc", ",".join(rpc)]
    if placement.devices:
        args += ["--device", ",".join(_llama_server_device_names(placement.devices, rpc))]
        args += ["--tensor-split", ",".join(f"{f:g}" for f in placement.tensor_split)]
    else:
        args += ["--device", "none"]
    return tuple(args)


def engine_host_args(
    dep: Deployment, placement: Placement, defaults: EngineHostDefaults
) -> tuple[str, ...]:
    """The engine host's command line (:mod:`tightwad.agent.engine_host`; the agent adds the
    interpreter and ``--listen``). Its KV cache is f16 with flash attention (exact verify)."""
    args = [
        "--model", dep.model_path, "--model-id", dep.spec.model,
        "--ctx-size", str(dep.spec.ctx_size),
        "--max-sessions", str(defaults.max_sessions),
        "--batch-size", str(defaults.batch_size),
        "--gpu-layers", str(placement.n_gpu_layers),
    ]  # fmt: skip
    if defaults.threads:
        args += ["--threads", str(defaults.threads)]
    if defaults.batch_steps is not None:
        args.append("--batch-steps" if defaults.batch_steps else "--no-batch-steps")
    if defaults.open_wait_s is not None:
        args += ["--open-wait-s", f"{defaults.open_wait_s:g}"]
    if defaults.prefill_chunk is not None:
        args += ["--prefill-chunk", str(defaults.prefill_chunk)]
    if placement.devices:
        args += ["--devices", ",".join(placement.devices)]
        args += ["--tensor-split", ",".join(f"{f:g}" for f in placement.tensor_split)]
    return tuple(args)


def _route(dep: Deployment, coord: NodeRecord, proc: ProcessView) -> RouteInfo:
    host = proc.host or coord.rpc_host
    where = f"[{host}]:{proc.port}" if ":" in host else f"{host}:{proc.port}"
    if dep.spec.serve_mode is ServeMode.ENGINE:
        return RouteInfo(dep.spec.model, engine_address=where, can_verify=True)
    return RouteInfo(dep.spec.model, http_url=f"http://{where}")


def _mark(
    dep: Deployment, state: DeploymentState, message: str, route: RouteInfo | None = None
) -> list[Action]:
    if dep.state is state and dep.message == message and dep.route == route:
        return []
    return [MarkState(dep.deployment_id, state, message, route)]


def _degrade(dep: Deployment, why: str) -> list[Action]:
    return [*_mark(dep, DeploymentState.DEGRADED, why), Replan(dep.deployment_id, why)]


def _rpc_actions(
    dep: Deployment, placement: Placement, nodes: Mapping[NodeId, NodeRecord], loaded: bool
) -> tuple[list[Action], bool]:
    """Actions for the rpc-servers, and whether the deployment must wait for them."""
    actions: list[Action] = []
    wait = False
    for a in placement.rpc_assignments:
        name = rpc_server_name(a.device_id)
        rpc_host, rpc_port = a.ggml_device[4:-1].rsplit(":", 1)
        proc = nodes[a.node_id].process(name)
        where = f"rpc-server {name} on node {a.node_id}"
        if proc is not None and proc.state not in _GONE and proc.port != int(rpc_port):
            actions.append(
                StopProcess(dep.deployment_id, a.node_id, name, f"planned on port {rpc_port}")
            )
            proc = None
        if proc is None or proc.state in _GONE:
            if loaded:
                return _degrade(dep, f"{where} is gone"), True
            actions.append(
                StartRpcServer(
                    dep.deployment_id, a.node_id, a.device_id, name, rpc_host, int(rpc_port)
                )
            )
        elif proc.state in _DEAD:
            if proc.state in _RESTARTING and not loaded:
                wait = True  # its agent brings it back; nothing was loaded on it yet
                continue
            why = f"{where} is {proc.state.replace('_', ' ')}"
            if proc.message:
                why += f": {proc.message}"
            return _degrade(dep, why), True
        elif proc.state == "starting":
            wait = True
    return actions, wait


def reconcile_one(
    dep: Deployment,
    nodes: Mapping[NodeId, NodeRecord],
    states: Mapping[NodeId, NodeState],
    engine: EngineHostDefaults = EngineHostDefaults(),
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
            return _degrade(dep, why)
    if any(states.get(n) is NodeState.NOT_READY for n in placement.node_ids):
        return []  # an agent is re-attaching: wait for it before judging its processes
    coord = nodes[placement.coordinator]
    loaded = dep.loaded_generation == dep.generation
    rpc, wait = _rpc_actions(dep, placement, nodes, loaded)
    if any(isinstance(a, Replan) for a in rpc):
        return rpc
    if any(isinstance(a, StartRpcServer) for a in rpc):
        return [*_mark(dep, DeploymentState.STARTING, "starting rpc-servers"), *rpc]
    if rpc or wait:
        return rpc
    name = server_process_name(dep)
    proc = coord.process(name)
    what = "engine host" if dep.spec.serve_mode is ServeMode.ENGINE else "llama-server"
    if loaded and proc is not None:
        if proc.state == "running" and proc.healthy:
            return _mark(dep, DeploymentState.SERVING, "serving", _route(dep, coord, proc))
        if proc.state in ("starting", "backoff", "running"):  # its agent is on it: wait
            how = "not healthy" if proc.state == "running" else "restarting"
            why = f"{what} {name} on node {coord.node_id} is {how}"
            if proc.message:
                why += f": {proc.message}"
            return _mark(dep, DeploymentState.DEGRADED, why)
    actions: list[Action] = []
    if loaded:  # it was serving, and its process is gone or broken: say so, start it again
        now = proc.state.replace("_", " ") if proc is not None else "gone"
        actions += _mark(
            dep, DeploymentState.DEGRADED, f"{what} {name} on node {coord.node_id} is {now}"
        )
    elif dep.state is not DeploymentState.STARTING:
        actions += _mark(dep, DeploymentState.STARTING, f"starting the {what}")
    if proc is not None and proc.state not in _GONE:
        actions.append(StopProcess(dep.deployment_id, coord.node_id, name, "reload"))
    if dep.spec.serve_mode is ServeMode.ENGINE:
        args = engine_host_args(dep, placement, engine)
        actions.append(
            StartEngineHost(dep.deployment_id, coord.node_id, name, args, dep.generation)
        )
    else:
        args = llama_server_args(dep, placement)
        actions.append(
            StartLlamaServer(dep.deployment_id, coord.node_id, name, args, dep.generation)
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
        name = server_process_name(dep)
        proc = coord.process(name)
        if proc is not None and proc.state not in _GONE:
            actions.append(StopProcess(dep.deployment_id, coord.node_id, name, "stopped"))
    return [*actions, MarkState(dep.deployment_id, DeploymentState.STOPPED, "stopped")]


def _garbage(
    deployments: Sequence[Deployment],
    nodes: Mapping[NodeId, NodeRecord],
    states: Mapping[NodeId, NodeState],
) -> list[StopProcess]:
    needed: set[tuple[NodeId, str]] = set()
    for dep in deployments:
        if not dep.desired_running or dep.placement is None:
            continue
        needed.add((dep.placement.coordinator or NodeId(""), server_process_name(dep)))
        for a in dep.placement.rpc_assignments:
            needed.add((a.node_id, rpc_server_name(a.device_id)))
    actions: list[StopProcess] = []
    for node_id in sorted(nodes):
        if states.get(node_id) not in (NodeState.READY, NodeState.DRAINING):
            continue
        for proc in nodes[node_id].processes:
            owned = (proc.kind is ProcessKind.RPC_SERVER and proc.name.startswith("rpc-")) or (
                proc.name.startswith(_OWNED_PREFIXES)
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
    engine: EngineHostDefaults = EngineHostDefaults(),
) -> list[Action]:
    """Every action of one sync: per deployment (by id), then garbage collection."""
    states = node_states(observed.values(), now, timeout_s)
    actions: list[Action] = []
    for dep in sorted(desired, key=lambda d: d.deployment_id):
        actions += reconcile_one(dep, observed, states, engine)
    # Processes of deployments that are still starting or being replanned are kept; those a
    # deployment's own actions already stop are not stopped twice.
    stopping = {(a.node_id, a.name) for a in actions if isinstance(a, StopProcess)}
    garbage: list[Action] = [
        a for a in _garbage(desired, observed, states) if (a.node_id, a.name) not in stopping
    ]
    return actions + garbage
