"""The Node service: the controller's hands and eyes on one host.

``Node`` is the domain side (no protobuf): the cached inventory, the process ``Supervisor``,
the model directories and the agent's ``EngineRegistry``. ``NodeServiceServicer`` is the thin
gRPC shell over it: convert the request, call the node, convert the reply.

Guarantees:

- ``GetInventory`` answers from a cached snapshot (vendor tools run once, then on ``refresh``
  or on the watch interval); processes and engines are always current.
- ``WatchInventory`` sends the current inventory first, then one message whenever it changes:
  a process state change or an engine load/unload at once, device facts on each poll.
- ``LoadModel`` streams progress and then the loaded engine. The load itself belongs to the
  node, not to the call: a client that goes away does not leave half a model behind, the
  engine is registered (and can be unloaded) or the error logged. ``Node.close`` waits for it.
- Model hashing and directory scans run in threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import grpc

from tightwad.agent.inventory import CommandRunner, InventoryReport, collect_inventory
from tightwad.agent.processes import Supervisor
from tightwad.agent.processes import process_wire as process_convert
from tightwad.agent.processes.domain import ProcessStatus
from tightwad.clock import Clock, SystemClock
from tightwad.config._schema import EngineConfig as _ConfigEngine
from tightwad.engine import facts_wire as inventory_convert
from tightwad.engine.device_facts import DeviceInfo
from tightwad.engine.engine_config import EngineConfig
from tightwad.engine.llama_engine import Engine
from tightwad.engine.model_facts import ModelFacts, ModelFileError, scan_model_dirs, sha256_file
from tightwad.engine.service import EngineRegistry
from tightwad.errors import ConflictError, InvalidRequestError, ModelLoadError, NotFoundError
from tightwad.logs import get_logger
from tightwad.v1 import agent_pb2, agent_pb2_grpc

__all__ = [
    "EngineView",
    "LoadDefaults",
    "Node",
    "NodeServiceServicer",
    "NodeSnapshot",
    "inventory_message",
]

log = get_logger("tightwad.agent.node")

_DEFAULT_WATCH_S = 10.0
_MIN_WATCH_S = 1.0
_PROGRESS_STEP = 0.05
_PROGRESS_POLL_S = 0.25
_ENGINE = {f.name: f.default for f in fields(EngineConfig)}


_CONFIG_ENGINE = _ConfigEngine()  # the cluster file's engine section, defaults


@dataclass(frozen=True, slots=True)
class LoadDefaults:
    """What a ``LoadModel`` request leaves at 0 gets these (from the cluster's ``engine``)."""

    ctx_size: int = 4096
    max_sessions: int = _CONFIG_ENGINE.max_sessions  # engine.max_sessions
    batch_size: int = 512
    threads: int = 0
    # Not on the wire at all: always these (the engine's own defaults unless the file says).
    batch_steps: bool = _ENGINE["batch_steps"]
    open_wait_s: float = _ENGINE["open_wait_s"]
    prefill_chunk: int = _ENGINE["prefill_chunk"]


@dataclass(frozen=True, slots=True)
class EngineView:
    model: str
    path: str
    ready: bool
    live_sessions: int
    devices: tuple[str, ...]
    message: str = ""


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    report: InventoryReport
    processes: tuple[ProcessStatus, ...]
    engines: tuple[EngineView, ...]


@dataclass(frozen=True, slots=True)
class LoadRequest:
    config: EngineConfig
    devices: tuple[str, ...] = ()


ProgressFn = Callable[[float], None]


@dataclass
class Node:
    """One host's inventory, processes, model files and embedded engines."""

    supervisor: Supervisor
    registry: EngineRegistry
    runner: CommandRunner
    model_dirs: Sequence[Path] = ()
    llama_server: Callable[[], Path | None] = lambda: None
    load_defaults: LoadDefaults = field(default_factory=LoadDefaults)
    clock: Clock = field(default_factory=SystemClock)
    _report: InventoryReport | None = None
    _report_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _loads: dict[str, asyncio.Task[EngineView]] = field(default_factory=dict)
    _devices: dict[str, tuple[str, ...]] = field(default_factory=dict)

    # -- inventory ----------------------------------------------------------------------

    async def report(self, *, refresh: bool = False) -> InventoryReport:
        async with self._report_lock:
            if self._report is None or refresh:
                self._report = await collect_inventory(
                    self.runner, llama_server=self.llama_server()
                )
            return self._report

    def device(self, device_id: str) -> DeviceInfo | None:
        """A device of the last inventory (the supervisor pins processes by these ids)."""
        return self._report.device(device_id) if self._report is not None else None

    async def snapshot(self, *, refresh: bool = False) -> NodeSnapshot:
        report = await self.report(refresh=refresh)
        return NodeSnapshot(
            report=report,
            processes=tuple(self.supervisor.processes()),
            engines=tuple(self.engines()),
        )

    # -- model files --------------------------------------------------------------------

    async def model_files(
        self, extra_dirs: Sequence[str]
    ) -> tuple[list[ModelFacts], list[ModelFileError]]:
        def scan() -> tuple[list[ModelFacts], list[ModelFileError]]:
            dirs = [*self.model_dirs, *(Path(d).expanduser() for d in extra_dirs)]
            return scan_model_dirs(dirs)

        return await asyncio.to_thread(scan)

    async def hash_file(self, path: str) -> str:
        if not path:
            raise InvalidRequestError("path is required")

        def digest() -> str:
            target = Path(path).expanduser()
            if not target.is_file():
                raise NotFoundError(f"no such file: {target}")
            return sha256_file(target)

        return await asyncio.to_thread(digest)

    # -- engines ------------------------------------------------------------------------

    def engines(self) -> list[EngineView]:
        views = [
            EngineView(
                model=e.cfg.model_id,
                path=str(e.cfg.path),
                ready=True,
                live_sessions=e.live_sessions,
                devices=self._devices.get(e.cfg.model_id, ()),
            )
            for e in self.registry.all()
        ]
        views += [
            EngineView(
                model=m, path="", ready=False, live_sessions=0, devices=(), message="loading"
            )
            for m in self._loads
        ]
        return views

    def begin_load(self, request: LoadRequest, progress: ProgressFn) -> asyncio.Task[EngineView]:
        """Start loading; the returned task is the node's (it outlives a cancelled caller)."""
        model = request.config.model_id
        if model in self._loads or any(e.cfg.model_id == model for e in self.registry.all()):
            raise ConflictError(f"model {model!r} is already loaded or loading; unload it first")
        _check_devices(request.devices)
        task = asyncio.get_running_loop().create_task(self._load(request, progress))
        task.add_done_callback(_retrieve)
        self._loads[model] = task
        self.supervisor.changes.bump()
        return task

    async def _load(self, request: LoadRequest, progress: ProgressFn) -> EngineView:
        cfg = request.config
        try:
            engine = await Engine.load(cfg, progress)
        except Exception:
            log.warning("model_load_failed", model=cfg.model_id, path=str(cfg.path))
            raise
        finally:
            self._loads.pop(cfg.model_id, None)
            self.supervisor.changes.bump()
        self.registry.add(engine)
        self._devices[cfg.model_id] = request.devices or (("CPU",) if cfg.gpu_layers == 0 else ())
        self.supervisor.changes.bump()
        log.info("model_loaded", model=cfg.model_id, path=str(cfg.path))
        return next(v for v in self.engines() if v.model == cfg.model_id)

    async def unload(self, model: str) -> None:
        engine = self.registry.remove(model)
        self._devices.pop(model, None)
        self.supervisor.changes.bump()
        await engine.close()
        log.info("model_unloaded", model=model)

    async def close(self, grace_s: float | None = None) -> None:
        """Stop every child process and wait for loads in flight (the registry is the
        agent's: it closes the engines)."""
        await self.supervisor.close(grace_s)
        loads = list(self._loads.values())
        if loads:
            await asyncio.wait(loads, timeout=120.0)


def _retrieve(task: asyncio.Task[EngineView]) -> None:
    """A load whose caller went away: its error is logged in ``_load``, not lost silently."""
    if not task.cancelled():
        task.exception()


def _check_devices(devices: Sequence[str]) -> None:
    rpc = [d for d in devices if d.upper().startswith("RPC")]
    if rpc:
        raise ModelLoadError(
            f"devices {rpc}: a model pooled over rpc-servers is not loaded inside the agent "
            "(llama.cpp aborts the whole process when an RPC peer dies); start it in an engine "
            "host process instead (StartProcess with PROCESS_KIND_ENGINE_HOST)"
        )


# -- protobuf shell ---------------------------------------------------------------------


def _engine_to_proto(view: EngineView) -> agent_pb2.EngineStatus:
    return agent_pb2.EngineStatus(
        model=view.model,
        path=view.path,
        ready=view.ready,
        live_sessions=view.live_sessions,
        devices=list(view.devices),
        message=view.message,
    )


def _snapshot_to_proto(snap: NodeSnapshot, rpc_version: str) -> agent_pb2.Inventory:
    inventory = inventory_convert.inventory_to_proto(snap.report)
    if rpc_version:
        inventory.host.rpc_protocol_version = rpc_version
    inventory.processes.extend(process_convert.status_to_proto(p) for p in snap.processes)
    inventory.engines.extend(_engine_to_proto(e) for e in snap.engines)
    return inventory


async def inventory_message(node: Node, *, refresh: bool = False) -> agent_pb2.Inventory:
    """The node's inventory as the wire has it (for the controller link's heartbeats)."""
    snap = await node.snapshot(refresh=refresh)
    return _snapshot_to_proto(snap, node.supervisor.rpc_protocol_version())


def _load_request(msg: agent_pb2.LoadModelRequest, defaults: LoadDefaults) -> LoadRequest:
    if not msg.model or not msg.path:
        raise InvalidRequestError("LoadModel needs model and path")
    cfg = EngineConfig(
        model_id=msg.model,
        path=Path(msg.path).expanduser(),
        ctx_size=msg.ctx_size or defaults.ctx_size,
        max_sessions=msg.max_sessions or defaults.max_sessions,
        threads=msg.threads or defaults.threads,
        gpu_layers=msg.gpu_layers,
        flash_attn=msg.flash_attn,
        batch_size=msg.batch_size or defaults.batch_size,
        tensor_split=tuple(msg.tensor_split),
        batch_steps=defaults.batch_steps,
        open_wait_s=defaults.open_wait_s,
        prefill_chunk=defaults.prefill_chunk,
    )
    return LoadRequest(config=cfg, devices=tuple(msg.devices))


class NodeServiceServicer(agent_pb2_grpc.NodeServiceServicer):
    def __init__(self, node: Node) -> None:
        self._node = node

    def _inventory(self, snap: NodeSnapshot) -> agent_pb2.Inventory:
        return _snapshot_to_proto(snap, self._node.supervisor.rpc_protocol_version())

    async def GetInventory(
        self, request: agent_pb2.GetInventoryRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.GetInventoryResponse:
        snap = await self._node.snapshot(refresh=request.refresh)
        return agent_pb2.GetInventoryResponse(inventory=self._inventory(snap))

    async def WatchInventory(
        self, request: agent_pb2.WatchInventoryRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[agent_pb2.WatchInventoryResponse]:
        interval = max(float(request.interval_s) or _DEFAULT_WATCH_S, _MIN_WATCH_S)
        clock, changes = self._node.clock, self._node.supervisor.changes
        version = changes.version
        last: agent_pb2.Inventory | None = None
        next_poll = clock.monotonic() + interval
        refresh = False
        while True:
            current = self._inventory(await self._node.snapshot(refresh=refresh))
            if current != last:
                last = current
                yield agent_pb2.WatchInventoryResponse(inventory=current)
            version = await changes.wait(version, max(next_poll - clock.monotonic(), 0.0))
            refresh = clock.monotonic() >= next_poll
            if refresh:
                next_poll = clock.monotonic() + interval

    async def ListModelFiles(
        self, request: agent_pb2.ListModelFilesRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.ListModelFilesResponse:
        models, errors = await self._node.model_files(list(request.directories))
        return agent_pb2.ListModelFilesResponse(
            models=[inventory_convert.model_facts_to_proto(m) for m in models],
            errors=[inventory_convert.model_error_to_proto(e) for e in errors],
        )

    async def HashModelFile(
        self, request: agent_pb2.HashModelFileRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.HashModelFileResponse:
        digest = await self._node.hash_file(request.path)
        return agent_pb2.HashModelFileResponse(path=request.path, sha256=digest)

    async def StartProcess(
        self, request: agent_pb2.StartProcessRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.StartProcessResponse:
        spec = process_convert.spec_from_proto(request.spec)
        if spec.device_ids:
            await self._node.report()  # the devices it is pinned to must be known first
        status = await self._node.supervisor.start(spec, wait_healthy=request.wait_healthy)
        return agent_pb2.StartProcessResponse(status=process_convert.status_to_proto(status))

    async def StopProcess(
        self, request: agent_pb2.StopProcessRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.StopProcessResponse:
        status = await self._node.supervisor.stop(request.name, request.grace_s or None)
        return agent_pb2.StopProcessResponse(status=process_convert.status_to_proto(status))

    async def RestartProcess(
        self, request: agent_pb2.RestartProcessRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.RestartProcessResponse:
        status = await self._node.supervisor.restart(request.name)
        return agent_pb2.RestartProcessResponse(status=process_convert.status_to_proto(status))

    async def ListProcesses(
        self, request: agent_pb2.ListProcessesRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.ListProcessesResponse:
        return agent_pb2.ListProcessesResponse(
            processes=[
                process_convert.status_to_proto(s) for s in self._node.supervisor.processes()
            ]
        )

    async def StreamLogs(
        self, request: agent_pb2.StreamLogsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[agent_pb2.StreamLogsResponse]:
        ring = self._node.supervisor.logs(request.name)
        history = ring.tail(request.tail)
        last = ring.last_seq
        for line in history:
            yield process_convert.log_line_to_proto(request.name, line)
        if request.follow:
            async for line in ring.follow(last):
                yield process_convert.log_line_to_proto(request.name, line)

    async def LoadModel(
        self, request: agent_pb2.LoadModelRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[agent_pb2.LoadModelResponse]:
        load = _load_request(request, self._node.load_defaults)
        fractions: asyncio.Queue[float] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def progress(fraction: float) -> None:
            loop.call_soon_threadsafe(fractions.put_nowait, fraction)

        task = self._node.begin_load(load, progress)
        yield _progress(0.0, "loading")
        sent = 0.0
        while not task.done():
            with contextlib.suppress(TimeoutError):
                fraction = await asyncio.wait_for(fractions.get(), _PROGRESS_POLL_S)
                if fraction - sent >= _PROGRESS_STEP or (fraction >= 1.0 > sent):
                    sent = fraction
                    yield _progress(fraction, "loading tensors")
        view = await asyncio.shield(task)
        yield agent_pb2.LoadModelResponse(loaded=_engine_to_proto(view))

    async def UnloadModel(
        self, request: agent_pb2.UnloadModelRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.UnloadModelResponse:
        await self._node.unload(request.model)
        return agent_pb2.UnloadModelResponse()

    async def ListEngines(
        self, request: agent_pb2.ListEnginesRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.ListEnginesResponse:
        return agent_pb2.ListEnginesResponse(
            engines=[_engine_to_proto(v) for v in self._node.engines()]
        )


def _progress(fraction: float, stage: str) -> agent_pb2.LoadModelResponse:
    return agent_pb2.LoadModelResponse(
        progress=agent_pb2.LoadProgress(fraction=fraction, stage=stage)
    )
