"""Protobuf <-> domain for the controller: the only controller module (with the servicer and
the executor, which are the wire's edges) that touches generated code.

Both directions live here: ``*_to_proto`` for the servicer's replies, ``*_from_proto`` for
what clients of the controller (``tightwadctl``, the executor) read back as domain values
(``NodeStatus``, ``Deployment``, ``Placement``, ``Event``). Inventory, devices, host facts
and model facts reuse ``tightwad.engine.facts_wire``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TypeVar

from tightwad.controller.domain import (
    Deployment,
    DeploymentSpec,
    DeploymentState,
    EngineView,
    Event,
    EventLevel,
    NodeRecord,
    NodeState,
    ProcessKind,
    ProcessView,
    RouteInfo,
    ServeMode,
)
from tightwad.controller.ids import DeploymentId, DeviceId, NodeId
from tightwad.controller.placement import Assignment, Constraints, Placement
from tightwad.controller.registry import Join
from tightwad.engine.facts_wire import (
    device_from_proto,
    device_to_proto,
    host_from_proto,
    host_to_proto,
    model_facts_from_proto,
    model_facts_to_proto,
)
from tightwad.v1 import agent_pb2, controller_pb2

__all__ = [
    "NodeStatus",
    "deployment_from_proto",
    "deployment_to_proto",
    "engine_from_proto",
    "event_from_proto",
    "event_to_proto",
    "join_from_proto",
    "node_from_proto",
    "node_to_proto",
    "placement_from_proto",
    "placement_to_proto",
    "process_from_proto",
    "route_to_proto",
    "spec_from_proto",
    "spec_to_proto",
]

_NODE_STATES = {
    NodeState.READY: controller_pb2.NODE_STATE_READY,
    NodeState.UNREACHABLE: controller_pb2.NODE_STATE_UNREACHABLE,
    NodeState.NOT_READY: controller_pb2.NODE_STATE_NOT_READY,
    NodeState.DRAINING: controller_pb2.NODE_STATE_DRAINING,
}
_DEP_STATES = {
    DeploymentState.PENDING: controller_pb2.DEPLOYMENT_STATE_PENDING,
    DeploymentState.STARTING: controller_pb2.DEPLOYMENT_STATE_STARTING,
    DeploymentState.SERVING: controller_pb2.DEPLOYMENT_STATE_SERVING,
    DeploymentState.DEGRADED: controller_pb2.DEPLOYMENT_STATE_DEGRADED,
    DeploymentState.STOPPING: controller_pb2.DEPLOYMENT_STATE_STOPPING,
    DeploymentState.STOPPED: controller_pb2.DEPLOYMENT_STATE_STOPPED,
    DeploymentState.FAILED: controller_pb2.DEPLOYMENT_STATE_FAILED,
}
_LEVELS = {
    EventLevel.INFO: controller_pb2.EVENT_LEVEL_INFO,
    EventLevel.WARNING: controller_pb2.EVENT_LEVEL_WARNING,
    EventLevel.ERROR: controller_pb2.EVENT_LEVEL_ERROR,
}
_PROCESS_STATES = {
    agent_pb2.PROCESS_STATE_STARTING: "starting",
    agent_pb2.PROCESS_STATE_RUNNING: "running",
    agent_pb2.PROCESS_STATE_BACKOFF: "backoff",
    agent_pb2.PROCESS_STATE_CRASH_LOOP: "crash_loop",
    agent_pb2.PROCESS_STATE_STOPPING: "stopping",
    agent_pb2.PROCESS_STATE_STOPPED: "stopped",
    agent_pb2.PROCESS_STATE_FAILED: "failed",
}
PROCESS_STATES_TO_PROTO = {v: k for k, v in _PROCESS_STATES.items()}
_KINDS = {
    agent_pb2.PROCESS_KIND_RPC_SERVER: ProcessKind.RPC_SERVER,
    agent_pb2.PROCESS_KIND_LLAMA_SERVER: ProcessKind.LLAMA_SERVER,
    agent_pb2.PROCESS_KIND_ENGINE_HOST: ProcessKind.ENGINE_HOST,
}
KINDS_TO_PROTO = {v: k for k, v in _KINDS.items()}


def process_from_proto(msg: agent_pb2.ProcessStatus) -> ProcessView:
    return ProcessView(
        name=msg.name,
        kind=_KINDS.get(msg.spec.kind, ProcessKind.UNKNOWN),
        state=_PROCESS_STATES.get(msg.state, "unknown"),
        host=msg.host,
        port=msg.port,
        healthy=msg.healthy,
        device_ids=tuple(msg.spec.device_ids),
        message=msg.message,
        pid=msg.pid,
        restarts=msg.restarts,
        since=msg.since,
    )


def engine_from_proto(msg: agent_pb2.EngineStatus) -> EngineView:
    return EngineView(
        model=msg.model, ready=msg.ready, devices=tuple(msg.devices), message=msg.message
    )


def join_from_proto(hello: controller_pb2.AgentHello) -> Join:
    inv = hello.inventory
    return Join(
        node_id=NodeId(hello.node_id),
        join_token=hello.join_token,
        address=hello.address,
        host=host_from_proto(inv.host),
        devices=tuple(device_from_proto(d) for d in inv.devices),
        models=tuple(model_facts_from_proto(m) for m in hello.models),
        processes=tuple(process_from_proto(p) for p in inv.processes),
        engines=tuple(engine_from_proto(e) for e in inv.engines),
        protocol_version=hello.protocol_version,
    )


def node_to_proto(node: NodeRecord, state: NodeState) -> controller_pb2.Node:
    return controller_pb2.Node(
        node_id=node.node_id,
        address=node.address,
        state=_NODE_STATES[state],
        inventory=agent_pb2.Inventory(
            host=host_to_proto(node.host),
            devices=[device_to_proto(d) for d in node.devices],
            processes=[_process_to_proto(p) for p in node.processes],
            engines=[
                agent_pb2.EngineStatus(
                    model=e.model, ready=e.ready, devices=list(e.devices), message=e.message
                )
                for e in node.engines
            ],
        ),
        models=[model_facts_to_proto(m) for m in node.models],
        last_seen=node.last_seen,
        message=node.message,
    )


def _process_to_proto(p: ProcessView) -> agent_pb2.ProcessStatus:
    return agent_pb2.ProcessStatus(
        name=p.name,
        spec=agent_pb2.ProcessSpec(
            name=p.name,
            kind=KINDS_TO_PROTO.get(p.kind, agent_pb2.PROCESS_KIND_UNSPECIFIED),
            device_ids=list(p.device_ids),
        ),
        state=PROCESS_STATES_TO_PROTO.get(p.state, agent_pb2.PROCESS_STATE_UNSPECIFIED),
        host=p.host,
        port=p.port,
        healthy=p.healthy,
        message=p.message,
        pid=p.pid,
        restarts=p.restarts,
        since=p.since,
    )


def spec_from_proto(msg: controller_pb2.ModelRequest, default_ctx: int) -> DeploymentSpec:
    c = msg.constraints
    return DeploymentSpec(
        model=msg.model,
        ctx_size=msg.ctx_size or default_ctx,
        kv_type=msg.kv_type or "f16",
        constraints=Constraints(
            pin_device_ids=frozenset(DeviceId(d) for d in c.pin_device_ids),
            exclude_device_ids=frozenset(DeviceId(d) for d in c.exclude_device_ids),
            exclude_node_ids=frozenset(NodeId(n) for n in c.exclude_node_ids),
            coordinator=NodeId(c.coordinator_node_id) if c.coordinator_node_id else None,
        ),
        serve_mode=(
            ServeMode.LLAMA_SERVER
            if msg.serve_mode == controller_pb2.SERVE_MODE_LLAMA_SERVER
            else ServeMode.ENGINE
        ),
    )


def spec_to_proto(spec: DeploymentSpec) -> controller_pb2.ModelRequest:
    c = spec.constraints
    return controller_pb2.ModelRequest(
        model=spec.model,
        ctx_size=spec.ctx_size,
        kv_type=spec.kv_type,
        constraints=controller_pb2.PlacementConstraints(
            pin_device_ids=sorted(c.pin_device_ids),
            exclude_device_ids=sorted(c.exclude_device_ids),
            exclude_node_ids=sorted(c.exclude_node_ids),
            coordinator_node_id=c.coordinator or "",
        ),
        serve_mode=(
            controller_pb2.SERVE_MODE_LLAMA_SERVER
            if spec.serve_mode is ServeMode.LLAMA_SERVER
            else controller_pb2.SERVE_MODE_ENGINE
        ),
    )


def _assignment_to_proto(a: Assignment) -> controller_pb2.DeviceAssignment:
    return controller_pb2.DeviceAssignment(
        node_id=a.node_id,
        device_id=a.device_id,
        ggml_device=a.ggml_device,
        first_layer=a.first_layer,
        n_layers=a.n_layers,
        weight_bytes=a.weight_bytes,
        kv_bytes=a.kv_bytes,
        compute_bytes=a.compute_bytes,
        margin_bytes=a.margin_bytes,
        free_bytes=a.free_bytes,
    )


def placement_to_proto(p: Placement) -> controller_pb2.Placement:
    return controller_pb2.Placement(
        model=p.model,
        coordinator_node_id=p.coordinator or "",
        devices=[_assignment_to_proto(a) for a in p.assignments],
        tensor_split=list(p.tensor_split),
        n_gpu_layers=p.n_gpu_layers,
        fits=p.fits,
        reason=p.reason,
    )


def route_to_proto(r: RouteInfo) -> controller_pb2.Route:
    return controller_pb2.Route(
        model=r.model,
        engine_address=r.engine_address,
        http_url=r.http_url,
        can_verify=r.can_verify,
    )


def deployment_to_proto(d: Deployment) -> controller_pb2.Deployment:
    msg = controller_pb2.Deployment(
        deployment_id=d.deployment_id,
        request=spec_to_proto(d.spec),
        state=_DEP_STATES[d.state],
        message=d.message,
        updated=d.updated,
    )
    if d.placement is not None:
        msg.placement.CopyFrom(placement_to_proto(d.placement))
    if d.route is not None:
        msg.route.CopyFrom(route_to_proto(d.route))
    return msg


def event_to_proto(e: Event) -> controller_pb2.Event:
    return controller_pb2.Event(
        event_id=e.event_id,
        time=e.time,
        level=_LEVELS[e.level],
        kind=e.kind,
        node_id=e.node_id,
        deployment_id=e.deployment_id,
        message=e.message,
        fields=dict(e.fields),
    )


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """A node as the controller reports it: the record and its liveness state."""

    record: NodeRecord
    state: NodeState


E = TypeVar("E", bound=enum.Enum)


# --- proto -> domain ----------------------------------------------------------------------


def _by_number(enum_name: str, prefix: str, kind: type[E]) -> dict[int, E]:
    """Wire number -> domain enum, matched by name (``NODE_STATE_READY`` -> ``ready``)."""
    values = controller_pb2.DESCRIPTOR.enum_types_by_name[enum_name].values
    names = {v.number: v.name.removeprefix(prefix).lower() for v in values}
    return {n: kind(name) for n, name in names.items() if name in kind._value2member_map_}


_NODE_STATES_FROM_WIRE = _by_number("NodeState", "NODE_STATE_", NodeState)
_DEPLOYMENT_STATES_FROM_WIRE = _by_number("DeploymentState", "DEPLOYMENT_STATE_", DeploymentState)
_EVENT_LEVELS_FROM_WIRE = _by_number("EventLevel", "EVENT_LEVEL_", EventLevel)


def node_from_proto(msg: controller_pb2.Node) -> NodeStatus:
    inv = msg.inventory
    state = _NODE_STATES_FROM_WIRE.get(msg.state, NodeState.NOT_READY)
    record = NodeRecord(
        node_id=NodeId(msg.node_id),
        address=msg.address,
        host=host_from_proto(inv.host),
        devices=tuple(device_from_proto(d) for d in inv.devices),
        models=tuple(model_facts_from_proto(m) for m in msg.models),
        processes=tuple(process_from_proto(p) for p in inv.processes),
        engines=tuple(engine_from_proto(e) for e in inv.engines),
        last_seen=msg.last_seen,
        connected=state is not NodeState.UNREACHABLE,
        draining=state is NodeState.DRAINING,
        message=msg.message,
    )
    return NodeStatus(record, state)


def _assignment_from_proto(msg: controller_pb2.DeviceAssignment) -> Assignment:
    return Assignment(
        node_id=NodeId(msg.node_id),
        device_id=DeviceId(msg.device_id),
        ggml_device=msg.ggml_device,
        first_layer=msg.first_layer,
        n_layers=msg.n_layers,
        weight_bytes=msg.weight_bytes,
        kv_bytes=msg.kv_bytes,
        compute_bytes=msg.compute_bytes,
        margin_bytes=msg.margin_bytes,
        free_bytes=msg.free_bytes,
    )


def placement_from_proto(msg: controller_pb2.Placement) -> Placement:
    return Placement(
        model=msg.model,
        coordinator=NodeId(msg.coordinator_node_id) if msg.coordinator_node_id else None,
        assignments=tuple(_assignment_from_proto(a) for a in msg.devices),
        tensor_split=tuple(round(x, 6) for x in msg.tensor_split),
        n_gpu_layers=msg.n_gpu_layers,
        fits=msg.fits,
        reason=msg.reason,
    )


def _route_from_proto(msg: controller_pb2.Route) -> RouteInfo:
    return RouteInfo(
        model=msg.model,
        engine_address=msg.engine_address,
        http_url=msg.http_url,
        can_verify=msg.can_verify,
    )


def deployment_from_proto(msg: controller_pb2.Deployment) -> Deployment:
    return Deployment(
        deployment_id=DeploymentId(msg.deployment_id),
        spec=spec_from_proto(msg.request, msg.request.ctx_size),
        placement=placement_from_proto(msg.placement) if msg.HasField("placement") else None,
        state=_DEPLOYMENT_STATES_FROM_WIRE.get(msg.state, DeploymentState.PENDING),
        message=msg.message,
        route=_route_from_proto(msg.route) if msg.HasField("route") else None,
        updated=msg.updated,
    )


def event_from_proto(msg: controller_pb2.Event) -> Event:
    return Event(
        event_id=msg.event_id,
        time=msg.time,
        level=_EVENT_LEVELS_FROM_WIRE.get(msg.level, EventLevel.INFO),
        kind=msg.kind,
        message=msg.message,
        node_id=msg.node_id,
        deployment_id=msg.deployment_id,
        fields=dict(msg.fields),
    )
