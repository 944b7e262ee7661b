"""The CLI's client of the controller (and of an agent's logs): the only CLI module on the wire.

:class:`ControllerClient` wraps the generated stub. Every unary call has a deadline; streams
that follow (events, logs) run until the caller stops reading. Failures surface as
:mod:`tightwad.errors` types, two of them specific to a person at a terminal:

- :class:`ControllerUnreachable` — no connection could be made (refused, unknown host, a
  failed TLS handshake, or no answer before the deadline); ``reason`` says which, in gRPC's
  words plus a hint for a TLS mismatch. Raised before the first call, so a controller that
  answers ``UNAVAILABLE`` about something else is never mistaken for a missing one.
- :class:`TokenRefused` — the service (controller or agent) answered ``UNAUTHENTICATED``.

With ``credentials`` (the cluster's mutual TLS, :func:`tightwad.tls.channel_credentials`)
every channel, to the controller and to agents for logs, speaks TLS and presents them.

Replies and requests are converted with :mod:`tightwad.controller.cluster_wire` (both directions:
nodes, deployments, placements, events), so the CLI holds no wire conversion of its own.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tightwad.controller.cluster_wire import (
    NodeStatus,
    deployment_from_proto,
    event_from_proto,
    node_from_proto,
    placement_from_proto,
    spec_to_proto,
)
from tightwad.controller.domain import (
    Deployment,
    DeploymentSpec,
    Event,
)
from tightwad.controller.placement import Placement
from tightwad.engine.log_line import LogLine
from tightwad.errors import AuthenticationError, NotFoundError, UnavailableError
from tightwad.rpc import client_channel, failure_details, translate_rpc_error
from tightwad.v1 import agent_pb2, agent_pb2_grpc, controller_pb2, controller_pb2_grpc

__all__ = [
    "ClusterStatus",
    "ControllerClient",
    "ControllerUnreachable",
    "NodeStatus",
    "TokenRefused",
]

T = TypeVar("T")
_GRPC_PREAMBLE = re.compile(r"^failed to connect to all addresses; last error: \w+: \S+?:\d+: ")


class ControllerUnreachable(UnavailableError):
    """No connection to the controller at ``address``."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"cannot reach the controller at {address}: {reason}")
        self.address = address
        self.reason = reason


class TokenRefused(AuthenticationError):
    """``service`` ("the controller", "the agent of node a at ...") refused our token."""

    def __init__(self, service: str, details: str) -> None:
        super().__init__(f"{service} refused the token: {details}")
        self.service = service


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    nodes: tuple[NodeStatus, ...]
    deployments: tuple[Deployment, ...]
    controller_version: str
    uptime_s: float


class ChannelFactory(Protocol):
    def __call__(
        self,
        address: str,
        *,
        token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> grpc.aio.Channel: ...


# --- the client ---------------------------------------------------------------------------


class ControllerClient:
    """Async client of ControllerService; ``async with`` closes its channels.

    ``timeout`` (seconds) bounds connecting and every unary call; ``credentials`` turn on
    mutual TLS (None: plain text). The token is sent either way.
    """

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        credentials: grpc.ChannelCredentials | None = None,
        channel_factory: ChannelFactory = client_channel,
    ) -> None:
        self.address = address
        self._token = token
        self._timeout = timeout
        self._credentials = credentials
        self._factory = channel_factory
        self._channel = channel_factory(address, token=token, credentials=credentials)
        self._stub = controller_pb2_grpc.ControllerServiceStub(self._channel)
        self._connected = False

    async def __aenter__(self) -> ControllerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    # --- plumbing --------------------------------------------------------------------------

    async def connect(self) -> None:
        """Wait until the channel is READY; ControllerUnreachable on failure or deadline."""
        if self._connected:
            return
        await _wait_ready(self._channel, self._timeout, self.address)
        self._connected = True

    async def _unary(self, what: str, call: Callable[[float], Awaitable[T]]) -> T:
        await self.connect()
        try:
            return await call(self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc, "the controller", f"controller {what}") from exc

    async def _stream(
        self, what: str, service: str, call: grpc.aio.UnaryStreamCall
    ) -> AsyncIterator[object]:
        try:
            async for item in call:
                yield item
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc, service, what) from exc
        finally:
            call.cancel()

    # --- reads -----------------------------------------------------------------------------

    async def status(self) -> ClusterStatus:
        r = await self._unary(
            "GetStatus",
            lambda t: self._stub.GetStatus(controller_pb2.GetStatusRequest(), timeout=t),
        )
        return ClusterStatus(
            nodes=tuple(node_from_proto(n) for n in r.nodes),
            deployments=tuple(deployment_from_proto(d) for d in r.deployments),
            controller_version=r.controller_version,
            uptime_s=r.uptime_s,
        )

    async def nodes(self) -> list[NodeStatus]:
        r = await self._unary(
            "ListNodes",
            lambda t: self._stub.ListNodes(controller_pb2.ListNodesRequest(), timeout=t),
        )
        return [node_from_proto(n) for n in r.nodes]

    async def deployments(self) -> list[Deployment]:
        req = controller_pb2.ListDeploymentsRequest()
        r = await self._unary(
            "ListDeployments", lambda t: self._stub.ListDeployments(req, timeout=t)
        )
        return [deployment_from_proto(d) for d in r.deployments]

    async def plan(self, spec: DeploymentSpec) -> Placement:
        req = controller_pb2.PlanPlacementRequest(request=spec_to_proto(spec))
        r = await self._unary("PlanPlacement", lambda t: self._stub.PlanPlacement(req, timeout=t))
        return placement_from_proto(r.placement)

    # --- changes ---------------------------------------------------------------------------

    async def deploy(self, spec: DeploymentSpec) -> Deployment:
        req = controller_pb2.DeployRequest(request=spec_to_proto(spec))
        r = await self._unary("Deploy", lambda t: self._stub.Deploy(req, timeout=t))
        return deployment_from_proto(r.deployment)

    async def swap(self, deployment_id: str, spec: DeploymentSpec) -> Deployment:
        req = controller_pb2.SwapRequest(deployment_id=deployment_id, request=spec_to_proto(spec))
        r = await self._unary("Swap", lambda t: self._stub.Swap(req, timeout=t))
        return deployment_from_proto(r.deployment)

    async def stop(self, deployment_id: str) -> Deployment:
        req = controller_pb2.StopDeploymentRequest(deployment_id=deployment_id)
        r = await self._unary("StopDeployment", lambda t: self._stub.StopDeployment(req, timeout=t))
        return deployment_from_proto(r.deployment)

    async def drain(self, node_id: str, *, drain: bool = True) -> NodeStatus:
        req = controller_pb2.DrainNodeRequest(node_id=node_id, drain=drain)
        r = await self._unary("DrainNode", lambda t: self._stub.DrainNode(req, timeout=t))
        return node_from_proto(r.node)

    # --- streams ---------------------------------------------------------------------------

    async def events(self, since: int = 0, *, follow: bool = False) -> AsyncIterator[Event]:
        """Events with ``event_id > since``; with ``follow``, then new ones until cancelled."""
        await self.connect()
        req = controller_pb2.WatchEventsRequest(since=since, follow=follow)
        call = self._stub.WatchEvents(req, timeout=None if follow else self._timeout)
        async for msg in self._stream("controller WatchEvents", "the controller", call):
            assert isinstance(msg, controller_pb2.WatchEventsResponse)
            yield event_from_proto(msg.event)

    async def logs(
        self, node_id: str, process: str, *, follow: bool = False, tail: int = 0
    ) -> AsyncIterator[LogLine]:
        """A process's log lines from its node's agent (address from ListNodes)."""
        node = await self._node(node_id)
        service = f"the agent of node {node_id} at {node.record.address}"
        channel = self._factory(
            node.record.address, token=self._token, credentials=self._credentials
        )
        try:
            await _wait_ready(channel, self._timeout, node.record.address, service)
            stub = agent_pb2_grpc.NodeServiceStub(channel)
            req = agent_pb2.StreamLogsRequest(name=process, follow=follow, tail=tail)
            call = stub.StreamLogs(req, timeout=None if follow else self._timeout)
            seq = 0
            async for msg in self._stream(f"{service}: StreamLogs {process}", service, call):
                assert isinstance(msg, agent_pb2.StreamLogsResponse)
                seq += 1
                yield LogLine(seq=seq, time=msg.time, stream=msg.stream, line=msg.line)
        finally:
            await channel.close()

    async def _node(self, node_id: str) -> NodeStatus:
        nodes = await self.nodes()
        found = next((n for n in nodes if n.record.node_id == node_id), None)
        if found is None:
            known = ", ".join(n.record.node_id for n in nodes) or "none"
            raise NotFoundError(f"no node {node_id!r} (known: {known})")
        return found


async def _wait_ready(
    channel: grpc.aio.Channel, limit_s: float, address: str, service: str = ""
) -> None:
    """Connect now; a refused or failing connection fails at once, silence at ``limit_s``."""
    try:
        async with asyncio.timeout(limit_s):
            state = channel.get_state(try_to_connect=True)
            while state is not grpc.ChannelConnectivity.READY:
                if state in (
                    grpc.ChannelConnectivity.TRANSIENT_FAILURE,
                    grpc.ChannelConnectivity.SHUTDOWN,
                ):
                    raise _unreachable(address, service, await _why_failed(channel))
                await channel.wait_for_state_change(state)
                state = channel.get_state(try_to_connect=True)
    except TimeoutError:
        raise _unreachable(address, service, f"no answer within {limit_s:g} s") from None


async def _why_failed(channel: grpc.aio.Channel) -> str:
    """What the failed connection ran into (refused, TLS handshake...), in gRPC's words.

    Channel states carry no reason, so ask once: a health Check (exempt from the token) that
    fails at once with the connection's last error.
    """
    try:
        await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=2.0, wait_for_ready=False
        )
    except grpc.aio.AioRpcError as exc:
        # The address is in our message already: keep what went wrong with it.
        return _GRPC_PREAMBLE.sub("", failure_details(exc)) or "connection failed"
    return "connection failed"


def _unreachable(address: str, service: str, reason: str) -> UnavailableError:
    if service:
        return UnavailableError(f"cannot reach {service}: {reason}")
    return ControllerUnreachable(address, reason)


def _translate(exc: grpc.aio.AioRpcError, service: str, what: str) -> Exception:
    if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return TokenRefused(service, exc.details() or exc.code().name)
    return translate_rpc_error(exc, what)
