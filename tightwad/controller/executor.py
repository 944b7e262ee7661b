"""Carries out node actions of a sync through the agents' ``NodeService``.

Every call has a deadline; statuses come back as our error tree (``translate_rpc_error``).
A started process counts as done only once it is running and healthy (its agent waits for
that); one that settled in backoff or a crash loop is an ``UnavailableError`` (retried with
backoff), one that could not be spawned at all a ``ModelLoadError`` (permanent).

Idempotent by construction: starting a process that already exists (ALREADY_EXISTS) or
stopping/unloading one that is gone (NOT_FOUND) counts as done. What an action did is recorded
in the registry at once (``Registry.observe``), ahead of the agent's next heartbeat, so the
next sync does not start it twice.

rpc-servers are bound to the agent's cluster address (``ProcessSpec.host``): llama.cpp's RPC
protocol has no authentication, so never a public interface unless the cluster file says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from tightwad.controller.cluster_wire import process_from_proto
from tightwad.controller.domain import ProcessView
from tightwad.controller.reconcile import (
    StartEngineHost,
    StartLlamaServer,
    StartRpcServer,
    StopProcess,
    UnloadEngine,
)
from tightwad.controller.registry import Registry
from tightwad.errors import ConflictError, ModelLoadError, NotFoundError, UnavailableError
from tightwad.logs import get_logger
from tightwad.rpc import client_channel, translate_rpc_error
from tightwad.v1 import agent_pb2, agent_pb2_grpc

__all__ = ["Executor", "ExecutorTimeouts"]

log = get_logger("tightwad.controller.executor")


@dataclass(frozen=True, slots=True)
class ExecutorTimeouts:
    start_process_s: float = 120.0
    stop_process_s: float = 60.0
    call_s: float = 30.0


class Executor:
    """One channel per agent address, reused; ``close()`` closes them all."""

    def __init__(
        self,
        registry: Registry,
        *,
        token: str | None,
        credentials: grpc.ChannelCredentials | None = None,
        timeouts: ExecutorTimeouts = ExecutorTimeouts(),
        allow_public_bind: bool = False,
    ) -> None:
        self._registry = registry
        self._token = token
        self._credentials = credentials
        self._timeouts = timeouts
        self._allow_public_bind = allow_public_bind
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _stub(self, address: str) -> agent_pb2_grpc.NodeServiceStub:
        channel = self._channels.get(address)
        if channel is None:
            channel = client_channel(address, token=self._token, credentials=self._credentials)
            self._channels[address] = channel
        return agent_pb2_grpc.NodeServiceStub(channel)

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()

    async def start_rpc_server(self, a: StartRpcServer) -> ProcessView:
        node = self._registry.get(a.node_id)
        spec = agent_pb2.ProcessSpec(
            name=a.name,
            kind=agent_pb2.PROCESS_KIND_RPC_SERVER,
            device_ids=[a.device_id],
            host=a.host,
            port=a.port,
            allow_public_bind=self._allow_public_bind,
        )
        return await self._start(node.node_id, node.address, spec)

    async def start_llama_server(self, a: StartLlamaServer) -> ProcessView:
        node = self._registry.get(a.node_id)
        spec = agent_pb2.ProcessSpec(
            name=a.name, kind=agent_pb2.PROCESS_KIND_LLAMA_SERVER, args=list(a.args)
        )
        return await self._start(node.node_id, node.address, spec)

    async def start_engine_host(self, a: StartEngineHost) -> ProcessView:
        """Start the engine host and wait until its engine is loaded and serving."""
        node = self._registry.get(a.node_id)
        spec = agent_pb2.ProcessSpec(
            name=a.name, kind=agent_pb2.PROCESS_KIND_ENGINE_HOST, args=list(a.args)
        )
        return await self._start(node.node_id, node.address, spec)

    async def _start(self, node_id: str, address: str, spec: agent_pb2.ProcessSpec) -> ProcessView:
        what = f"start {spec.name} on node {node_id}"
        try:
            reply = await self._stub(address).StartProcess(
                agent_pb2.StartProcessRequest(spec=spec, wait_healthy=True),
                timeout=self._timeouts.start_process_s,
            )
        except grpc.aio.AioRpcError as exc:
            err = translate_rpc_error(exc, what)
            if not isinstance(err, ConflictError):
                raise err from exc
            listed = await self._stub(address).ListProcesses(
                agent_pb2.ListProcessesRequest(), timeout=self._timeouts.call_s
            )
            status = next((p for p in listed.processes if p.name == spec.name), None)
            if status is None:
                raise err from exc
            view = process_from_proto(status)
        else:
            view = process_from_proto(reply.status)
        self._registry.observe(node_id, process=view)  # type: ignore[arg-type]
        log.info("process_started", node=node_id, name=spec.name, state=view.state)
        if view.state != "running" or not view.healthy:
            why = f"{what}: it is {view.state.replace('_', ' ')}: {view.message}"
            if view.state == "failed":  # it could not be spawned: no retry will help
                raise ModelLoadError(why)
            raise UnavailableError(why)
        return view

    async def stop_process(self, a: StopProcess) -> None:
        node = self._registry.get(a.node_id)
        try:
            reply = await self._stub(node.address).StopProcess(
                agent_pb2.StopProcessRequest(name=a.name), timeout=self._timeouts.stop_process_s
            )
        except grpc.aio.AioRpcError as exc:
            err = translate_rpc_error(exc, f"stop {a.name} on node {a.node_id}")
            if not isinstance(err, NotFoundError):
                raise err from exc
            self._registry.observe(a.node_id, removed_process=a.name)
            return
        self._registry.observe(a.node_id, process=process_from_proto(reply.status))

    async def unload_engine(self, a: UnloadEngine) -> None:
        node = self._registry.get(a.node_id)
        try:
            await self._stub(node.address).UnloadModel(
                agent_pb2.UnloadModelRequest(model=a.model), timeout=self._timeouts.call_s
            )
        except grpc.aio.AioRpcError as exc:
            err = translate_rpc_error(exc, f"unload {a.model} on node {a.node_id}")
            if not isinstance(err, NotFoundError):
                raise err from exc
        self._registry.observe(a.node_id, removed_engine=a.model)
