"""ControllerService: thin — convert the request, call the Controller, convert the reply.

Long-lived streams (``Register``, ``WatchRoutes``, ``WatchEvents``) end with OK as soon as
:meth:`ControllerServicer.end_streams` is called: they never finish on their own, so a graceful
stop would otherwise wait its whole deadline for them (cancelling their tasks is not enough:
gRPC only counts a call as done once its status is sent).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import grpc

from tightwad import __version__
from tightwad.controller.cluster_wire import (
    deployment_to_proto,
    engine_from_proto,
    event_to_proto,
    join_from_proto,
    node_to_proto,
    placement_to_proto,
    process_from_proto,
    route_to_proto,
    spec_from_proto,
)
from tightwad.controller.core import Controller
from tightwad.controller.ids import DeploymentId, NodeId
from tightwad.engine.facts_wire import device_from_proto, host_from_proto
from tightwad.errors import InvalidRequestError
from tightwad.v1 import controller_pb2 as pb
from tightwad.v1 import controller_pb2_grpc

__all__ = ["ControllerServicer"]

T = TypeVar("T")


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class ControllerServicer(controller_pb2_grpc.ControllerServiceServicer):
    def __init__(self, controller: Controller) -> None:
        self._c = controller
        self._sessions: dict[NodeId, object] = {}
        self._closing = asyncio.Event()

    def end_streams(self) -> None:
        """Shutdown: end every long-lived stream, and any opened later, now (clients reconnect
        to the next controller); unary calls in flight keep their drain time."""
        self._closing.set()

    async def _until_closing(self, source: AsyncIterator[T]) -> AsyncIterator[T]:
        """The items of ``source`` until it ends or :meth:`end_streams` is called."""
        closing = asyncio.ensure_future(self._closing.wait())
        item: asyncio.Future[T] | None = None
        try:
            while not self._closing.is_set():
                item = asyncio.ensure_future(anext(source))
                # Whatever ends this generator (a cancelled handler, a closed stream), the
                # read's outcome never goes unretrieved ("Task exception was never retrieved").
                item.add_done_callback(_retrieve)
                await asyncio.wait({item, closing}, return_when=asyncio.FIRST_COMPLETED)
                if not item.done():
                    return
                try:
                    value = item.result()
                except StopAsyncIteration:
                    return
                item = None
                yield value
        finally:
            for pending in (item, closing):
                if pending is not None and not pending.done():
                    pending.cancel()
                    await asyncio.gather(pending, return_exceptions=True)

    async def Register(
        self, request_iterator: AsyncIterator[pb.RegisterRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.RegisterResponse]:
        c = self._c
        node_id: NodeId | None = None
        session = object()
        try:
            async for req in self._until_closing(aiter(request_iterator)):
                kind = req.WhichOneof("message")
                now = c.clock.time()
                if node_id is None:
                    if kind != "hello":
                        raise InvalidRequestError("the first message of Register must be hello")
                    node = c.registry.join(join_from_proto(req.hello), now)
                    node_id = node.node_id
                    self._sessions[node_id] = session
                    c.kick()
                    interval = int(c.config.controller.heartbeat_interval_s * 1000)
                    yield pb.RegisterResponse(
                        welcome=pb.Welcome(node_id=node_id, heartbeat_interval_ms=interval)
                    )
                elif kind == "heartbeat":
                    hb = req.heartbeat
                    if hb.HasField("inventory"):
                        inv = hb.inventory
                        c.registry.heartbeat(
                            node_id,
                            now,
                            host=host_from_proto(inv.host) if inv.HasField("host") else None,
                            devices=[device_from_proto(d) for d in inv.devices],
                            processes=[process_from_proto(p) for p in inv.processes],
                            engines=[engine_from_proto(e) for e in inv.engines],
                            snapshot_time=hb.time,
                        )
                    else:
                        c.registry.heartbeat(node_id, now)
                    yield pb.RegisterResponse(heartbeat_ack_time=now)
                else:
                    raise InvalidRequestError("hello sent twice on one Register stream")
        finally:
            if node_id is not None and self._sessions.get(node_id) is session:
                del self._sessions[node_id]
                c.registry.disconnect(node_id, c.clock.time())

    async def ListNodes(
        self, request: pb.ListNodesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListNodesResponse:
        return pb.ListNodesResponse(nodes=self._nodes())

    def _nodes(self) -> list[pb.Node]:
        states = self._c.node_states()
        return [node_to_proto(n, states[n.node_id]) for n in self._c.registry.nodes()]

    async def DrainNode(
        self, request: pb.DrainNodeRequest, context: grpc.aio.ServicerContext
    ) -> pb.DrainNodeResponse:
        node = self._c.drain(NodeId(request.node_id), request.drain)
        return pb.DrainNodeResponse(node=node_to_proto(node, self._c.node_states()[node.node_id]))

    async def PlanPlacement(
        self, request: pb.PlanPlacementRequest, context: grpc.aio.ServicerContext
    ) -> pb.PlanPlacementResponse:
        spec = spec_from_proto(request.request, self._default_ctx(request.request.model))
        placement, _ = self._c.plan(spec)
        return pb.PlanPlacementResponse(placement=placement_to_proto(placement))

    def _default_ctx(self, model: str) -> int:
        cfg = self._c.config.models.get(model)
        return cfg.ctx_size if cfg else self._c.config.engine.ctx_size

    async def Deploy(
        self, request: pb.DeployRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeployResponse:
        spec = spec_from_proto(request.request, self._default_ctx(request.request.model))
        return pb.DeployResponse(deployment=deployment_to_proto(self._c.deploy(spec)))

    async def Swap(
        self, request: pb.SwapRequest, context: grpc.aio.ServicerContext
    ) -> pb.SwapResponse:
        spec = spec_from_proto(request.request, self._default_ctx(request.request.model))
        dep = self._c.swap(DeploymentId(request.deployment_id), spec)
        return pb.SwapResponse(deployment=deployment_to_proto(dep))

    async def StopDeployment(
        self, request: pb.StopDeploymentRequest, context: grpc.aio.ServicerContext
    ) -> pb.StopDeploymentResponse:
        dep = self._c.stop_deployment(DeploymentId(request.deployment_id))
        return pb.StopDeploymentResponse(deployment=deployment_to_proto(dep))

    async def ListDeployments(
        self, request: pb.ListDeploymentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListDeploymentsResponse:
        return pb.ListDeploymentsResponse(
            deployments=[deployment_to_proto(d) for d in self._c.deployments()]
        )

    async def GetStatus(
        self, request: pb.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetStatusResponse:
        return pb.GetStatusResponse(
            nodes=self._nodes(),
            deployments=[deployment_to_proto(d) for d in self._c.deployments()],
            controller_version=__version__,
            uptime_s=self._c.clock.time() - self._c.started,
        )

    async def WatchEvents(
        self, request: pb.WatchEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchEventsResponse]:
        events = self._c.events.follow(request.since, follow=request.follow)
        async for event in self._until_closing(events):
            yield pb.WatchEventsResponse(event=event_to_proto(event))

    async def WatchRoutes(
        self, request: pb.WatchRoutesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchRoutesResponse]:
        async for routes in self._until_closing(self._c.watch_routes()):
            yield pb.WatchRoutesResponse(routes=[route_to_proto(r) for r in routes])
