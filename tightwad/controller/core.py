"""The controller's state machine: deployments, planning, the sync loop, routes.

``Controller`` is the single writer: every change goes through the store and the event log.
The sync loop (``run``) is Kubernetes-style: each pass re-reads desired and observed state,
asks the pure :func:`tightwad.controller.reconcile.reconcile` what to do, and runs each
deployment's actions as one task (a key already in flight is skipped). A failure requeues that
deployment with exponential backoff (reset on success); a permanent error (the agent cannot
load the model: FAILED_PRECONDITION) is recorded as the FAILED state with the reason and is not
retried until the spec changes (``swap``) or it is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from tightwad.clock import Clock
from tightwad.config import ClusterConfig
from tightwad.controller.domain import (
    Deployment,
    DeploymentSpec,
    DeploymentState,
    EventLevel,
    NodeRecord,
    NodeState,
    RouteInfo,
)
from tightwad.controller.events import EventLog
from tightwad.controller.executor import Executor
from tightwad.controller.ids import DeploymentId, NodeId, new_deployment_id
from tightwad.controller.placement import (
    Candidate,
    Placement,
    PlacementOptions,
    PlacementRequest,
    plan_placement,
)
from tightwad.controller.reconcile import (
    Action,
    EngineHostDefaults,
    MarkState,
    Replan,
    StartEngineHost,
    StartLlamaServer,
    StartRpcServer,
    StopProcess,
    UnloadEngine,
    reconcile,
)
from tightwad.controller.registry import Registry
from tightwad.controller.store import Store
from tightwad.engine.model_facts import ModelFacts
from tightwad.errors import ModelLoadError, NotFoundError, TightwadError
from tightwad.logs import get_logger

if TYPE_CHECKING:  # the executor's channel credentials (mutual TLS); core speaks no gRPC
    import grpc

__all__ = ["RPC_PORT_BASE", "Backoff", "Controller"]

log = get_logger("tightwad.controller")

RPC_PORT_BASE = 50052


@dataclass(slots=True)
class Backoff:
    """Per-key exponential backoff: ``base * 2**failures`` capped at ``cap``."""

    base: float = 1.0
    cap: float = 60.0
    failures: int = 0
    not_before: float = 0.0

    def failed(self, now: float) -> float:
        delay = min(self.cap, self.base * 2.0**self.failures)
        self.failures += 1
        self.not_before = now + delay
        return delay

    def succeeded(self) -> None:
        self.failures = 0
        self.not_before = 0.0


class Controller:
    def __init__(
        self,
        config: ClusterConfig,
        store: Store,
        clock: Clock,
        *,
        executor: Executor | None = None,
        agent_credentials: grpc.ChannelCredentials | None = None,
        options: PlacementOptions = PlacementOptions(),  # noqa: B008 - frozen value
        rpc_port_base: int = RPC_PORT_BASE,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.started = clock.time()
        self.events = EventLog(store, clock)
        self.registry = Registry(
            store,
            self.events,
            token=config.cluster.token,
            timeout_s=config.controller.heartbeat_timeout_s,
            now=clock.time(),
        )
        self.executor = executor or Executor(
            self.registry,
            token=config.cluster.token,
            credentials=agent_credentials,
            allow_public_bind=config.cluster.allow_public_bind,
        )
        self.options = options
        self.rpc_port_base = rpc_port_base
        self._deployments = {d.deployment_id: d for d in store.load_deployments()}
        self._backoff: dict[DeploymentId, Backoff] = {}
        self._inflight: dict[DeploymentId, asyncio.Task[None]] = {}
        self._routes_changed = asyncio.Event()
        self._kick = asyncio.Event()
        self._stopping = asyncio.Event()

    # --- queries -------------------------------------------------------------------------

    def deployments(self) -> list[Deployment]:
        return [self._deployments[k] for k in sorted(self._deployments)]

    def deployment(self, deployment_id: DeploymentId) -> Deployment:
        try:
            return self._deployments[deployment_id]
        except KeyError:
            raise NotFoundError(f"no deployment {deployment_id!r}") from None

    def node_states(self) -> dict[NodeId, NodeState]:
        return self.registry.states(self.clock.time())

    def routes(self) -> list[RouteInfo]:
        return [
            d.route
            for d in self.deployments()
            if d.route is not None and d.state is DeploymentState.SERVING
        ]

    async def watch_routes(self) -> AsyncIterator[list[RouteInfo]]:
        current = self.routes()
        yield current
        while not self._stopping.is_set():
            changed = self._routes_changed
            await changed.wait()
            now = self.routes()
            if now != current:
                current = now
                yield current

    # --- planning ------------------------------------------------------------------------

    def resolve_model(self, model: str) -> tuple[str, str]:
        """(name, path hint): a config model name gives its path; otherwise ``model`` is a
        GGUF path or a name the agents reported."""
        cfg = self.config.models.get(model)
        return (model, cfg.path) if cfg else (model, model)

    def _facts_by_node(self, model: str) -> dict[NodeId, ModelFacts]:
        _, hint = self.resolve_model(model)
        out: dict[NodeId, ModelFacts] = {}
        for node in self.registry.nodes():
            facts = node.model_facts(hint) or node.model_facts(model)
            if facts is None:
                base = hint.rsplit("/", 1)[-1]
                facts = next((m for m in node.models if m.path.endswith("/" + base)), None)
            if facts is not None:
                out[node.node_id] = facts
        return out

    def rpc_ports(self) -> dict[tuple[NodeId, str], int]:
        """Where each device's rpc-server listens: ``rpc_port_base`` onwards, one port per
        device of every known node *sharing that host address* (by node id, then device id),
        so two agents on one host never plan the same port. Known nodes, not only READY ones,
        so a node going away does not move the ports of the others."""
        ports: dict[tuple[NodeId, str], int] = {}
        next_port: dict[str, int] = {}
        for node in self.registry.nodes():
            for device in sorted(node.devices, key=lambda d: d.id):
                port = next_port.get(node.rpc_host, self.rpc_port_base)
                ports[(node.node_id, device.id)] = port
                next_port[node.rpc_host] = port + 1
        return ports

    def candidates(self, reclaim: Placement | None = None) -> list[Candidate]:
        """READY nodes' devices; ``reclaim``'s own bytes count as free (it will be reloaded).
        A device whose rpc-server is crash-looping or failed is left out: re-planning puts its
        layers elsewhere (its agent reported why)."""
        states = self.node_states()
        ports = self.rpc_ports()
        given_back: dict[tuple[NodeId, str], int] = {}
        if reclaim is not None:
            for a in reclaim.assignments:
                given_back[(a.node_id, a.device_id)] = a.expected_bytes
        out = []
        for node in self.registry.nodes():
            if states.get(node.node_id) is not NodeState.READY:
                continue
            broken = {
                d
                for p in node.processes
                if p.name.startswith("rpc-") and p.state in ("crash_loop", "failed")
                for d in p.device_ids
            }
            for device in sorted(node.devices, key=lambda d: d.id):
                if device.id in broken:
                    continue
                extra = given_back.get((node.node_id, device.id), 0)
                if extra:
                    device = replace(
                        device,
                        memory_free_bytes=min(
                            device.memory_total_bytes or device.memory_free_bytes + extra,
                            device.memory_free_bytes + extra,
                        ),
                    )
                port = ports[(node.node_id, device.id)]
                out.append(Candidate(node.node_id, device, node.rpc_host, port))
        return out

    def plan(self, spec: DeploymentSpec, reclaim: Placement | None = None) -> tuple[Placement, str]:
        """A placement preview and the model path on its coordinator (pure of side effects)."""
        facts_by_node = self._facts_by_node(spec.model)
        name = spec.model
        if not facts_by_node:
            return Placement(
                name,
                None,
                (),
                (),
                0,
                False,
                f"no ready node has the model {spec.model!r} "
                "(a config model name, or a GGUF path an agent reported)",
            ), ""
        cands = self.candidates(reclaim)
        states = self.node_states()
        coord = spec.constraints.coordinator
        ready_with_file = sorted(n for n in facts_by_node if states.get(n) is NodeState.READY)
        if coord is not None and coord not in facts_by_node:
            return Placement(
                name,
                coord,
                (),
                (),
                0,
                False,
                f"coordinator {coord} does not have the model {spec.model!r}",
            ), ""
        choices = [coord] if coord is not None else ready_with_file
        best: Placement | None = None
        for c in choices:
            cons = replace(spec.constraints, coordinator=c)
            p = plan_placement(
                PlacementRequest(name, spec.ctx_size, spec.kv_type, cons),
                facts_by_node[c],
                cands,
                self.options,
            )
            better = best is None or (
                p.fits and (not best.fits or len(p.node_ids) < len(best.node_ids))
            )
            if better:
                best = p
        assert best is not None or not choices
        if best is None:
            return Placement(
                name, None, (), (), 0, False, f"no ready node has the model {spec.model!r}"
            ), ""
        path = facts_by_node[best.coordinator].path if best.coordinator else ""
        return best, path

    # --- desired-state changes -----------------------------------------------------------

    def deploy(self, spec: DeploymentSpec) -> Deployment:
        placement, path = self.plan(spec)
        if not placement.fits:
            raise ModelLoadError(placement.reason)
        dep = Deployment(
            new_deployment_id(),
            spec,
            placement,
            DeploymentState.PENDING,
            "planned",
            updated=self.clock.time(),
            model_path=path,
        )
        self._save(dep)
        self.events.append(
            "deployment_created",
            _describe(dep),
            deployment_id=dep.deployment_id,
            fields={"model": spec.model, "devices": ",".join(placement.devices)},
        )
        self._kick.set()
        return dep

    def swap(self, deployment_id: DeploymentId, spec: DeploymentSpec) -> Deployment:
        """A new model (or settings) on the same deployment; workers are kept when they fit."""
        old = self.deployment(deployment_id)
        placement, path = self.plan(spec, reclaim=old.placement)
        if not placement.fits:
            raise ModelLoadError(placement.reason)
        dep = replace(
            old,
            spec=spec,
            placement=placement,
            state=DeploymentState.PENDING,
            message=f"swapping {old.spec.model} for {spec.model}",
            route=None,
            generation=old.generation + 1,
            model_path=path,
            updated=self.clock.time(),
        )
        self._save(dep)
        self._backoff.pop(deployment_id, None)
        self.events.append("deployment_swapped", dep.message, deployment_id=deployment_id)
        self._kick.set()
        return dep

    def stop_deployment(self, deployment_id: DeploymentId) -> Deployment:
        old = self.deployment(deployment_id)
        if old.state is DeploymentState.STOPPED:
            return old
        dep = replace(
            old,
            state=DeploymentState.STOPPING,
            message="stopping",
            route=None,
            updated=self.clock.time(),
        )
        self._save(dep)
        self.events.append(
            "deployment_stopping", f"stopping {old.spec.model}", deployment_id=deployment_id
        )
        self._kick.set()
        return dep

    def drain(self, node_id: NodeId, drain: bool) -> NodeRecord:
        node = self.registry.drain(node_id, drain)
        self._kick.set()
        return node

    def _save(self, dep: Deployment) -> None:
        before = self._deployments.get(dep.deployment_id)
        self.store.save_deployment(dep)
        self._deployments[dep.deployment_id] = dep
        if before is None or (before.route, before.state) != (dep.route, dep.state):
            self._routes_changed.set()
            self._routes_changed = asyncio.Event()

    # --- the sync loop -------------------------------------------------------------------

    def decide(self) -> list[Action]:
        """What one sync would do now (pure: reads state, changes nothing)."""
        nodes = {n.node_id: n for n in self.registry.nodes()}
        engine = EngineHostDefaults(
            max_sessions=self.config.engine.max_sessions,
            threads=self.config.engine.threads or 0,
            batch_size=self.config.engine.batch_size,
            batch_steps=self.config.engine.batch_steps,
            open_wait_s=self.config.engine.open_wait_s,
            prefill_chunk=self.config.engine.prefill_chunk,
        )
        return reconcile(
            self.deployments(),
            nodes,
            self.clock.time(),
            timeout_s=self.registry.timeout_s,
            engine=engine,
        )

    async def sync_once(self) -> None:
        """One pass: sweep node states, decide, start one task per deployment with actions."""
        now = self.clock.time()
        self.registry.sweep(now)
        by_key: dict[DeploymentId | None, list[Action]] = {}
        for action in self.decide():
            by_key.setdefault(action.deployment_id, []).append(action)
        for key, actions in by_key.items():
            if key is None:
                await self._run_actions(None, actions)
                continue
            if key in self._inflight:
                continue
            backoff = self._backoff.get(key)
            if backoff is not None and backoff.not_before > now:
                continue
            task = asyncio.create_task(self._run_actions(key, actions))
            self._inflight[key] = task
            task.add_done_callback(self._done_callback(key))

    def _done_callback(self, key: DeploymentId) -> Callable[[asyncio.Task[None]], None]:
        def done(_task: asyncio.Task[None]) -> None:
            self._inflight.pop(key, None)

        return done

    async def wait_idle(self) -> None:
        """Wait for every action task in flight (tests; shutdown)."""
        while self._inflight:
            await asyncio.gather(*self._inflight.values(), return_exceptions=True)

    async def run(self) -> None:
        interval = self.config.controller.reconcile_interval_s
        try:
            while not self._stopping.is_set():
                await self.sync_once()
                self._kick.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), timeout=interval)
        finally:
            for task in list(self._inflight.values()):
                task.cancel()
            await asyncio.gather(*self._inflight.values(), return_exceptions=True)

    async def stop(self) -> None:
        self._stopping.set()
        self._kick.set()
        self._routes_changed.set()
        await self.events.close()
        await self.executor.close()

    def kick(self) -> None:
        self._kick.set()

    async def _run_actions(self, key: DeploymentId | None, actions: Sequence[Action]) -> None:
        try:
            for action in actions:
                await self._execute(action)
        except asyncio.CancelledError:
            raise
        except TightwadError as exc:
            self._failed(key, exc)
        except Exception as exc:
            log.exception("sync_action_failed", deployment=key)
            self._failed(key, TightwadError(f"internal error: {type(exc).__name__}"))
        else:
            if key is not None:
                self._backoff.pop(key, None)
            if any(not isinstance(a, MarkState) for a in actions):
                self._kick.set()  # look again at once: the next step may be ready

    def _failed(self, key: DeploymentId | None, exc: TightwadError) -> None:
        now = self.clock.time()
        if key is None:
            self.events.append("sync_failed", exc.message, level=EventLevel.WARNING)
            return
        dep = self._deployments.get(key)
        if dep is None:
            return
        if isinstance(exc, ModelLoadError):
            self._save(
                replace(
                    dep, state=DeploymentState.FAILED, message=exc.message, route=None, updated=now
                )
            )
            self.events.append(
                "deployment_failed", exc.message, level=EventLevel.ERROR, deployment_id=key
            )
            return
        delay = self._backoff.setdefault(key, Backoff()).failed(now)
        self._save(replace(dep, message=f"{exc.message} (retrying in {delay:g} s)", updated=now))
        self.events.append(
            "sync_failed",
            exc.message,
            level=EventLevel.WARNING,
            deployment_id=key,
            fields={"retry_in_s": f"{delay:g}"},
        )

    async def _execute(self, action: Action) -> None:
        match action:
            case StartRpcServer():
                view = await self.executor.start_rpc_server(action)
                self.events.append(
                    "rpc_server_started",
                    f"rpc-server for {action.device_id} on node {action.node_id} at "
                    f"{action.host}:{action.port} ({view.state})",
                    node_id=action.node_id,
                    deployment_id=action.deployment_id,
                )
            case StopProcess():
                await self.executor.stop_process(action)
                self.events.append(
                    "process_stopped",
                    f"stopped {action.name} on node {action.node_id}: {action.reason}",
                    node_id=action.node_id,
                    deployment_id=action.deployment_id or "",
                )
            case UnloadEngine():
                await self.executor.unload_engine(action)
            case StartEngineHost():
                view = await self.executor.start_engine_host(action)
                self._loaded(action.deployment_id, action.generation)
                self.events.append(
                    "engine_host_started",
                    f"engine host {action.name} on node {action.node_id} serves at "
                    f"{view.host}:{view.port}",
                    node_id=action.node_id,
                    deployment_id=action.deployment_id,
                )
            case StartLlamaServer():
                view = await self.executor.start_llama_server(action)
                self._loaded(action.deployment_id, action.generation)
                self.events.append(
                    "llama_server_started",
                    f"llama-server {action.name} on node {action.node_id} serves at "
                    f"{view.host}:{view.port}",
                    node_id=action.node_id,
                    deployment_id=action.deployment_id,
                )
            case MarkState():
                self._mark(action)
            case Replan():
                self._replan(action)

    def _loaded(self, deployment_id: DeploymentId, generation: int) -> None:
        dep = self._deployments.get(deployment_id)
        if dep is not None and dep.generation == generation:
            self._save(replace(dep, loaded_generation=generation, updated=self.clock.time()))
            self.events.append(
                "model_loaded", f"{dep.spec.model} loaded", deployment_id=deployment_id
            )

    def _mark(self, action: MarkState) -> None:
        dep = self._deployments.get(action.deployment_id)
        if dep is None:
            return
        self._save(
            replace(
                dep,
                state=action.state,
                message=action.message,
                route=action.route,
                updated=self.clock.time(),
            )
        )
        level = (
            EventLevel.WARNING if action.state is DeploymentState.DEGRADED else (EventLevel.INFO)
        )
        self.events.append(
            f"deployment_{action.state.value}",
            action.message,
            level=level,
            deployment_id=action.deployment_id,
        )

    def _replan(self, action: Replan) -> None:
        dep = self._deployments.get(action.deployment_id)
        if dep is None:
            return
        placement, path = self.plan(dep.spec, reclaim=dep.placement)
        if not placement.fits:
            self._save(
                replace(
                    dep,
                    state=DeploymentState.DEGRADED,
                    route=None,
                    message=f"{action.reason}; cannot re-plan: {placement.reason}",
                    updated=self.clock.time(),
                )
            )
            raise _Retry(f"re-plan of {dep.spec.model} failed: {placement.reason}")
        self._save(
            replace(
                dep,
                placement=placement,
                generation=dep.generation + 1,
                model_path=path,
                route=None,
                updated=self.clock.time(),
            )
        )
        self.events.append(
            "deployment_replanned",
            f"{action.reason}; new devices: {', '.join(placement.devices) or 'CPU'}",
            level=EventLevel.WARNING,
            deployment_id=action.deployment_id,
        )


class _Retry(TightwadError):
    """A transient failure of a sync step: retried with backoff."""


def _describe(dep: Deployment) -> str:
    p = dep.placement
    where = ", ".join(p.devices) if p and p.devices else "CPU"
    return f"{dep.spec.model} on {p.coordinator if p else '?'}: {where}"
