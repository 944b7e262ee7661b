"""The registry of agents: join checks, heartbeats, liveness and draining.

Pure parts (tests call them directly):

- :func:`check_join` — the join token (constant-time compare), the wire protocol version, and
  the ggml RPC protocol version against the nodes already known (a different major is
  refused: llama.cpp's RPC client rejects a server of another major);
- :func:`node_state` / :func:`node_states` — READY, NOT_READY, DRAINING or UNREACHABLE from
  facts and the time: not heard from within the timeout = UNREACHABLE; heard from but its
  stream is not (yet) attached, e.g. just after a controller restart = NOT_READY; drained =
  DRAINING; otherwise READY.

:class:`Registry` keeps the nodes in memory, writes every change through the store and tells
the event log about joins, state changes and drains.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from tightwad.controller.domain import EngineView, EventLevel, NodeRecord, NodeState, ProcessView
from tightwad.controller.events import EventLog
from tightwad.controller.ids import NodeId
from tightwad.controller.store import Store
from tightwad.engine.device_facts import DeviceInfo, HostFacts
from tightwad.engine.model_facts import ModelFacts
from tightwad.errors import AuthenticationError, ModelLoadError, NotFoundError

__all__ = [
    "PROTOCOL_VERSION",
    "IncompatibleNodeError",
    "Join",
    "Registry",
    "check_join",
    "node_state",
    "node_states",
]

PROTOCOL_VERSION = "1"


class IncompatibleNodeError(ModelLoadError):
    """An agent whose protocol versions cannot work with this cluster (FAILED_PRECONDITION)."""


@dataclass(frozen=True, slots=True)
class Join:
    """What an agent's hello says."""

    node_id: NodeId
    join_token: str
    address: str
    host: HostFacts
    devices: tuple[DeviceInfo, ...]
    models: tuple[ModelFacts, ...]
    processes: tuple[ProcessView, ...] = ()
    engines: tuple[EngineView, ...] = ()
    protocol_version: str = PROTOCOL_VERSION


def _major(version: str) -> str:
    return version.strip().lstrip("v").split(".")[0]


def check_join(join: Join, token: str | None, known: Iterable[NodeRecord]) -> list[str]:
    """Raise if ``join`` must be refused; otherwise the warnings worth an event."""
    if token is not None and not hmac.compare_digest(join.join_token.encode(), token.encode()):
        raise AuthenticationError(f"node {join.node_id or '?'}: wrong join token")
    if not join.node_id:
        raise IncompatibleNodeError("hello without a node_id")
    if _major(join.protocol_version or "0") != _major(PROTOCOL_VERSION):
        raise IncompatibleNodeError(
            f"node {join.node_id} speaks Tightwad protocol {join.protocol_version or '?'}, "
            f"this controller {PROTOCOL_VERSION}: upgrade the older side"
        )
    warnings = []
    mine = join.host.rpc_protocol_version
    for other in known:
        if other.node_id == join.node_id:
            continue
        theirs = other.host.rpc_protocol_version
        if mine and theirs and _major(mine) != _major(theirs):
            raise IncompatibleNodeError(
                f"node {join.node_id} has ggml RPC protocol {mine} but node {other.node_id} "
                f"has {theirs}: llama.cpp refuses RPC across major versions; build both from "
                "the same llama.cpp"
            )
        if (
            join.host.llama_cpp_version
            and other.host.llama_cpp_version
            and join.host.llama_cpp_version != other.host.llama_cpp_version
        ):
            warnings.append(
                f"node {join.node_id} runs llama.cpp {join.host.llama_cpp_version}, node "
                f"{other.node_id} {other.host.llama_cpp_version}"
            )
    return warnings


def node_state(node: NodeRecord, now: float, timeout_s: float) -> NodeState:
    if now - node.last_seen > timeout_s:
        return NodeState.UNREACHABLE
    if not node.connected:
        return NodeState.NOT_READY
    if node.draining:
        return NodeState.DRAINING
    return NodeState.READY


def node_states(
    nodes: Iterable[NodeRecord], now: float, timeout_s: float
) -> dict[NodeId, NodeState]:
    return {n.node_id: node_state(n, now, timeout_s) for n in nodes}


class Registry:
    """Nodes in memory, written through the store; transitions told to the event log."""

    def __init__(
        self, store: Store, events: EventLog, *, token: str | None, timeout_s: float, now: float
    ) -> None:
        self._store = store
        self._events = events
        self._token = token
        self.timeout_s = timeout_s
        # After a restart every known node gets a fresh grace period to re-attach.
        self._nodes: dict[NodeId, NodeRecord] = {
            n.node_id: replace(n, last_seen=max(n.last_seen, now), connected=False)
            for n in store.load_nodes()
        }
        self._last_states = node_states(self._nodes.values(), now, timeout_s)
        # What this controller's own actions learned (a start reply) that a heartbeat
        # snapshot older than it must not undo, per node and process name.
        self._acted: dict[NodeId, dict[str, ProcessView]] = {}

    def nodes(self) -> list[NodeRecord]:
        return [self._nodes[k] for k in sorted(self._nodes)]

    def get(self, node_id: NodeId) -> NodeRecord:
        try:
            return self._nodes[node_id]
        except KeyError:
            raise NotFoundError(f"no node {node_id!r}") from None

    def states(self, now: float) -> dict[NodeId, NodeState]:
        return node_states(self._nodes.values(), now, self.timeout_s)

    def join(self, join: Join, now: float) -> NodeRecord:
        warnings = check_join(join, self._token, self._nodes.values())
        previous = self._nodes.get(join.node_id)
        self._acted.pop(join.node_id, None)  # a hello is the agent's whole truth
        node = NodeRecord(
            node_id=join.node_id,
            address=join.address,
            host=join.host,
            devices=join.devices,
            models=join.models,
            processes=join.processes,
            engines=join.engines,
            last_seen=now,
            connected=True,
            draining=previous.draining if previous else False,
        )
        self._put(node)
        kind = "node_rejoined" if previous else "node_joined"
        self._events.append(
            kind,
            f"node {join.node_id} at {join.address} joined with {len(join.devices)} device(s)",
            node_id=join.node_id,
            fields={
                "address": join.address,
                "llama_cpp": join.host.llama_cpp_version,
                "rpc_protocol": join.host.rpc_protocol_version,
            },
        )
        for warning in warnings:
            self._events.append(
                "version_mismatch", warning, level=EventLevel.WARNING, node_id=join.node_id
            )
        self._last_states[join.node_id] = node_state(node, now, self.timeout_s)
        return node

    def heartbeat(
        self,
        node_id: NodeId,
        now: float,
        *,
        devices: Sequence[DeviceInfo] | None = None,
        host: HostFacts | None = None,
        processes: Sequence[ProcessView] | None = None,
        engines: Sequence[EngineView] | None = None,
        snapshot_time: float = 0.0,
    ) -> NodeRecord:
        """``snapshot_time``: the agent's clock when it gathered ``processes`` (0: unknown)."""
        node = self.get(node_id)
        changes: dict[str, object] = {"last_seen": now, "connected": True}
        if host is not None:
            changes["host"] = host
        if devices is not None:
            changes["devices"] = tuple(devices)
        if processes is not None:
            changes["processes"] = self._merge_acted(node_id, processes, snapshot_time)
        if engines is not None:
            changes["engines"] = tuple(engines)
        updated = replace(node, **changes)  # type: ignore[arg-type]
        if (
            updated.devices != node.devices
            or updated.processes != node.processes
            or (updated.engines != node.engines or updated.host != node.host)
        ):
            self._put(updated)
        else:
            self._nodes[node_id] = updated
            self._store.touch_node(node_id, now)
        return updated

    def _merge_acted(
        self, node_id: NodeId, processes: Sequence[ProcessView], snapshot_time: float
    ) -> tuple[ProcessView, ...]:
        """The snapshot, except where a start reply is newer than it.

        A heartbeat gathered before a StartProcess finished can reach the controller after
        the start's own reply: taken as is, it would say the process just started is missing
        (or still stopped), and the reconciler would start it again. The agent stamps each
        state change (``since``) and each snapshot (``time``) on one clock, so the newer wins.
        """
        acted = self._acted.get(node_id)
        if not acted:
            return tuple(processes)
        merged = {p.name: p for p in processes}
        for name, view in list(acted.items()):
            if snapshot_time and snapshot_time < view.since:
                merged[name] = view  # the snapshot predates what the action saw
            else:
                del acted[name]  # the agent's own report is at least as new from here on
        return tuple(merged.values())

    def disconnect(self, node_id: NodeId, now: float) -> None:
        node = self._nodes.get(node_id)
        if node is None or not node.connected:
            return
        self._nodes[node_id] = replace(node, connected=False)
        self._events.append(
            "node_disconnected",
            f"node {node_id} closed its stream",
            level=EventLevel.WARNING,
            node_id=node_id,
        )

    def drain(self, node_id: NodeId, drain: bool) -> NodeRecord:
        node = replace(self.get(node_id), draining=drain)
        self._put(node)
        self._events.append(
            "node_drained" if drain else "node_undrained",
            f"node {node_id} {'draining: deployments move off it' if drain else 'undrained'}",
            node_id=node_id,
        )
        return node

    def observe(
        self,
        node_id: NodeId,
        *,
        process: ProcessView | None = None,
        engine: EngineView | None = None,
        removed_process: str | None = None,
        removed_engine: str | None = None,
    ) -> None:
        """Record what an action just did on a node, ahead of its next heartbeat."""
        node = self._nodes.get(node_id)
        if node is None:
            return
        procs = {p.name: p for p in node.processes}
        engines = {e.model: e for e in node.engines}
        if process is not None:
            procs[process.name] = process
            if process.since:
                self._acted.setdefault(node_id, {})[process.name] = process
        if removed_process is not None:
            procs.pop(removed_process, None)
            self._acted.get(node_id, {}).pop(removed_process, None)
        if engine is not None:
            engines[engine.model] = engine
        if removed_engine is not None:
            engines.pop(removed_engine, None)
        self._nodes[node_id] = replace(
            node, processes=tuple(procs.values()), engines=tuple(engines.values())
        )

    def sweep(self, now: float) -> Mapping[NodeId, NodeState]:
        """Current states; each change since the last sweep becomes an event."""
        states = self.states(now)
        for node_id, state in states.items():
            before = self._last_states.get(node_id)
            if before != state:
                level = EventLevel.WARNING if state is NodeState.UNREACHABLE else EventLevel.INFO
                self._events.append(
                    f"node_{state.value}",
                    f"node {node_id} is {state.value.replace('_', ' ')}"
                    + (
                        f" (not heard from for over {self.timeout_s:g} s)"
                        if state is NodeState.UNREACHABLE
                        else ""
                    ),
                    level=level,
                    node_id=node_id,
                    fields={"from": before.value if before else ""},
                )
        self._last_states = dict(states)
        return states

    def _put(self, node: NodeRecord) -> None:
        self._store.save_node(node)
        self._nodes[node.node_id] = node
