"""Domain values of the controller: nodes as observed, deployments as desired, events.

All frozen dataclasses; protobuf messages are built from them only in
``tightwad.controller.cluster_wire``. Observed process and engine state is what agents report in
their heartbeats; desired state is what ``Deploy``/``Swap``/``Stop`` recorded.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from tightwad.controller.ids import DeploymentId, NodeId
from tightwad.controller.placement import Constraints, Placement
from tightwad.engine.device_facts import DeviceInfo, HostFacts
from tightwad.engine.model_facts import ModelFacts

__all__ = [
    "Deployment",
    "DeploymentSpec",
    "DeploymentState",
    "EngineView",
    "Event",
    "EventLevel",
    "NodeRecord",
    "NodeState",
    "ProcessKind",
    "ProcessView",
    "RouteInfo",
    "ServeMode",
]


class NodeState(enum.StrEnum):
    READY = "ready"
    UNREACHABLE = "unreachable"
    NOT_READY = "not_ready"
    DRAINING = "draining"


class ProcessKind(enum.StrEnum):
    RPC_SERVER = "rpc_server"
    LLAMA_SERVER = "llama_server"
    ENGINE_HOST = "engine_host"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class ProcessView:
    """A supervised process as its agent reports it."""

    name: str
    kind: ProcessKind
    state: str  # "running", "backoff", "crash_loop", "stopped", "failed", "starting"...
    host: str = ""
    port: int = 0
    healthy: bool = False
    device_ids: tuple[str, ...] = ()
    message: str = ""
    pid: int = 0
    restarts: int = 0
    since: float = 0.0  # the agent's clock when it last changed state (0: not told)

    @property
    def alive(self) -> bool:
        return self.state in ("running", "starting") and (self.healthy or self.state == "starting")


@dataclass(frozen=True, slots=True)
class EngineView:
    """A model loaded in an agent's embedded engine."""

    model: str
    ready: bool
    devices: tuple[str, ...] = ()
    message: str = ""


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """A registered agent: its inventory, model files, processes and liveness facts."""

    node_id: NodeId
    address: str
    host: HostFacts
    devices: tuple[DeviceInfo, ...] = ()
    models: tuple[ModelFacts, ...] = ()
    processes: tuple[ProcessView, ...] = ()
    engines: tuple[EngineView, ...] = ()
    last_seen: float = 0.0
    connected: bool = False
    draining: bool = False
    message: str = ""

    @property
    def rpc_host(self) -> str:
        """Host part of the agent address: where its rpc-servers listen."""
        host = self.address.rsplit(":", 1)[0] if ":" in self.address else self.address
        return host.strip("[]") or "127.0.0.1"

    def process(self, name: str) -> ProcessView | None:
        return next((p for p in self.processes if p.name == name), None)

    def engine(self, model: str) -> EngineView | None:
        return next((e for e in self.engines if e.model == model), None)

    def model_facts(self, name_or_path: str) -> ModelFacts | None:
        return next(
            (m for m in self.models if name_or_path in (m.path, m.name)),
            None,
        )


class ServeMode(enum.StrEnum):
    ENGINE = "engine"
    LLAMA_SERVER = "llama_server"


@dataclass(frozen=True, slots=True)
class DeploymentSpec:
    """What a user asked for. ``model`` is a config model name or a GGUF path."""

    model: str
    ctx_size: int = 4096
    kv_type: str = "f16"
    constraints: Constraints = field(default_factory=Constraints)
    serve_mode: ServeMode = ServeMode.ENGINE


class DeploymentState(enum.StrEnum):
    PENDING = "pending"
    STARTING = "starting"
    SERVING = "serving"
    DEGRADED = "degraded"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class RouteInfo:
    """Where the gateway reaches a served model."""

    model: str
    engine_address: str = ""
    http_url: str = ""
    can_verify: bool = False


@dataclass(frozen=True, slots=True)
class Deployment:
    """Desired state (``spec``, ``stopped``) plus what the controller last decided about it."""

    deployment_id: DeploymentId
    spec: DeploymentSpec
    placement: Placement | None = None
    state: DeploymentState = DeploymentState.PENDING
    message: str = ""
    route: RouteInfo | None = None
    updated: float = 0.0
    generation: int = 1
    # The GGUF path on the coordinator the placement was made for.
    model_path: str = ""
    # The generation whose model load last succeeded (0 = never): a bump forces a reload.
    loaded_generation: int = 0

    @property
    def desired_running(self) -> bool:
        return self.state not in (DeploymentState.STOPPING, DeploymentState.STOPPED)


class EventLevel(enum.StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Event:
    event_id: int
    time: float
    level: EventLevel
    kind: str
    message: str
    node_id: str = ""
    deployment_id: str = ""
    fields: Mapping[str, str] = field(default_factory=dict)
