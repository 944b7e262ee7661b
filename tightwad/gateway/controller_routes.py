"""Routes the controller publishes, followed live by the gateway (``Controller.WatchRoutes``),
and the state of those it knows but does not serve (``Controller.ListDeployments``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from tightwad.clock import Clock, SystemClock
from tightwad.errors import TightwadError, UnavailableError
from tightwad.gateway.engine_client import EngineClient
from tightwad.gateway.faults import DEFAULT_RETRY_AFTER_S, UnavailableRoute
from tightwad.gateway.loop import RouteSpec, SpecBackend
from tightwad.gateway.types import Backend, GenerationEvent, GenerationRequest, RouteInfo
from tightwad.logs import get_logger
from tightwad.rpc import client_channel
from tightwad.v1 import controller_pb2, controller_pb2_grpc

__all__ = ["ControllerRoutes", "PublishedRoute", "RouteTable", "WatchSettings"]

log = get_logger("tightwad.gateway.routes")


# --- routes the controller publishes ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PublishedRoute:
    """A route as ``Controller.WatchRoutes`` publishes it."""

    model: str
    engine_address: str = ""
    http_url: str = ""
    can_verify: bool = False


@dataclass(frozen=True, slots=True)
class WatchSettings:
    """Backoff between subscriptions (``retry_base_s * 2**failures``, capped); ``idle_s``: a
    stream silent that long is resubscribed (a frozen controller or a half-open connection
    cannot hold the gateway, and a route that failed to start is retried); ``start_timeout_s``
    bounds a new route's start-up; ``drain_timeout_s`` how long a replaced route's in-flight
    requests may run on its old engine before its clients are closed anyway."""

    retry_base_s: float = 0.5
    retry_cap_s: float = 15.0
    # Retry-After of a route that is coming back (the controller gives no estimate yet).
    retry_after_s: float = DEFAULT_RETRY_AFTER_S
    states_timeout_s: float = 3.0
    idle_s: float = 30.0
    start_timeout_s: float = 30.0
    drain_timeout_s: float = 600.0


class RouteTable(Protocol):
    """Where the gateway looks a model up (:class:`tightwad.gateway.server.GatewayServer`)."""

    def put(self, name: str, backend: Backend) -> None: ...

    def remove(self, name: str) -> None: ...


class _Counted:
    """A route's backend counting its in-flight requests, so a replaced or removed route's
    engine clients are closed only once the requests that started on it have finished."""

    def __init__(self, backend: SpecBackend) -> None:
        self.backend = backend
        self.active = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def info(self) -> RouteInfo:
        return self.backend.info()

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        self.active += 1
        self.idle.clear()
        return self._generate(request)

    async def _generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        try:
            async for event in self.backend.generate(request):
                yield event
        finally:
            self.active -= 1
            if not self.active:
                self.idle.set()

    async def close(self) -> None:
        spec = self.backend.spec
        for client in {id(c): c for c in (spec.target, *spec.drafters)}.values():
            with contextlib.suppress(Exception):
                await client.close()


def _published(msg: controller_pb2.Route) -> PublishedRoute:
    return PublishedRoute(msg.model, msg.engine_address, msg.http_url, msg.can_verify)


class ControllerRoutes:
    """Follows the controller's routes: ``Controller.WatchRoutes`` sends the current set, then
    the whole set again on every change.

    Guarantees:

    - a published Engine route is served once its engine answers (its vocabulary read); a
      changed one is replaced: requests already running finish on the old engine clients,
      new ones use the new clients; a route no longer published whose deployment the
      controller still has (re-planning, starting, degraded, failed) stays listed as an
      :class:`~tightwad.gateway.faults.UnavailableRoute` (503 naming the state, Retry-After),
      as does a deployment not yet published; only a route whose deployment is stopped or
      gone is removed (the API then answers 404 ``model_not_found``);
    - a route of the cluster file (``static``) is never touched: the file wins, said once in
      a ``controller_route_shadowed`` log line;
    - when the controller is unreachable or the stream breaks, the last known routes keep
      serving while it resubscribes with exponential backoff (reset once a set arrives);
    - every wait has a deadline (``WatchSettings``); after ``stop``, ``run`` returns and
      ``close`` closes every engine client it opened.
    """

    def __init__(
        self,
        address: str,
        table: RouteTable,
        *,
        token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        static: Collection[str] = (),
        settings: WatchSettings = WatchSettings(),
        clock: Clock | None = None,
        client_factory: Callable[[str, str], EngineClient] | None = None,
        states: Callable[[], Awaitable[Mapping[str, tuple[str, str]]]] | None = None,
    ) -> None:
        self.address = address
        self.table = table
        self.token = token
        self.credentials = credentials
        self.static = frozenset(static)
        self.settings = settings
        self.clock = clock or SystemClock()
        self._client = client_factory or self._engine_client
        self._states = states or self._deployment_states
        self.unavailable: dict[str, UnavailableRoute] = {}
        self.routes: dict[str, tuple[PublishedRoute, _Counted]] = {}
        self.subscriptions = 0
        self._shadowed: set[str] = set()
        self._failed: set[PublishedRoute] = set()
        self._retiring: dict[asyncio.Task[None], _Counted] = {}
        self._stopping = asyncio.Event()

    def _engine_client(self, address: str, model: str) -> EngineClient:
        return EngineClient(address, model, token=self.token, credentials=self.credentials)

    # -- the loop -----------------------------------------------------------------------

    async def run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                if await self._follow():
                    failures = 0
            except (grpc.aio.AioRpcError, TightwadError, OSError) as exc:
                if self._stopping.is_set():
                    break
                delay = min(self.settings.retry_cap_s, self.settings.retry_base_s * 2**failures)
                failures += 1
                log.warning(
                    "controller_routes_unreachable",
                    controller=self.address,
                    error=_describe(exc),
                    retry_in_s=delay,
                    serving=sorted(self.routes),
                )
                await self._pause(delay)

    async def _pause(self, seconds: float) -> None:
        """Sleep on the clock, cut short by ``stop``."""
        sleep = asyncio.ensure_future(self.clock.sleep(seconds))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({sleep, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleep, stopping):
                task.cancel()

    async def _follow(self) -> bool:
        """One subscription, until it goes idle or ``stop`` (True if a set arrived); raises
        when it breaks."""
        channel = client_channel(self.address, token=self.token, credentials=self.credentials)
        got = False
        try:
            stub = controller_pb2_grpc.ControllerServiceStub(channel)
            call = stub.WatchRoutes(controller_pb2.WatchRoutesRequest())
            stream = call.__aiter__()
            stopping = asyncio.ensure_future(self._stopping.wait())
            try:
                while True:
                    nxt = asyncio.ensure_future(anext(stream))
                    nxt.add_done_callback(_retrieve)  # never "exception was never retrieved"
                    done, _ = await asyncio.wait(
                        {nxt, stopping},
                        timeout=self.settings.idle_s,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    if nxt not in done:
                        nxt.cancel()
                        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                            await nxt
                        call.cancel()
                        if not done:
                            log.debug("controller_routes_idle", controller=self.address)
                        return got
                    try:
                        msg = nxt.result()
                    except StopAsyncIteration:
                        raise UnavailableError("the controller closed the route stream") from None
                    if not got:
                        self.subscriptions += 1
                        log.info(
                            "controller_routes_subscribed",
                            controller=self.address,
                            routes=sorted(r.model for r in msg.routes),
                        )
                    got = True
                    await self.apply([_published(r) for r in msg.routes])
            finally:
                stopping.cancel()
        finally:
            await channel.close()

    def stop(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        """Remove its routes and close every engine client it opened (after ``run``)."""
        retiring = dict(self._retiring)
        for task in retiring:
            task.cancel()
        for task, backend in retiring.items():
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await backend.close()  # a drain cancelled before it ran closed nothing
        for name, (_, backend) in list(self.routes.items()):
            self.table.remove(name)
            await backend.close()
        self.routes.clear()
        for name in self.unavailable:
            self.table.remove(name)
        self.unavailable.clear()

    # -- applying a set -----------------------------------------------------------------

    async def apply(self, published: Sequence[PublishedRoute]) -> None:
        """Make the served controller routes match ``published`` (the whole current set)."""
        wanted: dict[str, PublishedRoute] = {}
        for route in published:
            if route.model in self.static:
                if route.model not in self._shadowed:
                    self._shadowed.add(route.model)
                    log.warning(
                        "controller_route_shadowed",
                        route=route.model,
                        engine=route.engine_address or route.http_url,
                        reason="the cluster file declares a route of this name; the file wins",
                    )
                continue
            wanted[route.model] = route
        gone = [n for n in self.routes if n not in wanted]
        for name in gone:
            _, old = self.routes.pop(name)
            log.info("controller_route_unpublished", route=name)
            self._retire(name, old)
        for name, route in wanted.items():
            current = self.routes.get(name)
            if current is not None and current[0] == route:
                continue
            backend = await self._start(route)
            if backend is None:
                continue
            self.routes[name] = (route, backend)
            self.table.put(name, backend)
            self.unavailable.pop(name, None)
            log.info(
                "controller_route_replaced" if current else "controller_route_added",
                route=name,
                engine=route.engine_address,
                draft_mode=backend.backend.spec.draft_mode,
            )
            if current is not None:
                self._retire(name, current[1])
        await self._mark_unavailable(gone)

    async def _mark_unavailable(self, gone: Sequence[str]) -> None:
        """Routes known but not served: 503 while their deployment exists (re-planning,
        pending, starting, degraded, failed), 404 once it is stopped (or stopping) or gone.
        When the controller cannot say (``ListDeployments`` fails), unpublished routes are
        removed, as they were before states were asked."""
        try:
            states: Mapping[str, tuple[str, str]] = await self._states()
        except (grpc.aio.AioRpcError, TightwadError, OSError, TimeoutError) as exc:
            log.warning("controller_states_unknown", controller=self.address, error=_describe(exc))
            states = {}
        for name in sorted((set(gone) | set(self.unavailable) | set(states)) - self.static):
            if name in self.routes:
                continue
            state, detail = states.get(name, ("gone", ""))
            if state in _REMOVED:
                if self.unavailable.pop(name, None) is not None or name in gone:
                    self.table.remove(name)
                    log.info("controller_route_removed", route=name, state=state)
                continue
            stand_in = UnavailableRoute(
                name, state, detail=detail, retry_after_s=self.settings.retry_after_s
            )
            self.unavailable[name] = stand_in
            self.table.put(name, stand_in)  # type: ignore[arg-type]
            log.info("controller_route_unavailable", route=name, state=state)

    async def _deployment_states(self) -> dict[str, tuple[str, str]]:
        """model -> (deployment state, its message) from ``Controller.ListDeployments``; a
        model with several deployments shows the one closest to serving."""
        channel = client_channel(self.address, token=self.token, credentials=self.credentials)
        try:
            stub = controller_pb2_grpc.ControllerServiceStub(channel)
            reply = await stub.ListDeployments(
                controller_pb2.ListDeploymentsRequest(), timeout=self.settings.states_timeout_s
            )
        finally:
            await channel.close()
        out: dict[str, tuple[str, str]] = {}
        for d in reply.deployments:
            name = controller_pb2.DeploymentState.Name(d.state)
            state = name.removeprefix("DEPLOYMENT_STATE_").lower()
            if _RANK.get(state, 9) < _RANK.get(out.get(d.request.model, ("", ""))[0], 9):
                out[d.request.model] = (state, d.message)
        return out

    async def _start(self, route: PublishedRoute) -> _Counted | None:
        if not route.engine_address:
            if route not in self._failed:
                self._failed.add(route)
                log.warning(
                    "controller_route_unsupported",
                    route=route.model,
                    http_url=route.http_url,
                    reason="the gateway serves Engine routes; deploy it with serve mode engine",
                )
            return None
        client = self._client(route.engine_address, route.model)
        # A target that verifies in one pass gets the draft-free n-gram proposer (lossless;
        # the loop stops drafting where it does not pay); any other serves plainly.
        spec = RouteSpec(
            name=route.model, target=client, draft_mode="ngram" if route.can_verify else "none"
        )
        backend = SpecBackend(spec)
        try:
            async with asyncio.timeout(self.settings.start_timeout_s):
                await backend.start()
        except (TightwadError, TimeoutError) as exc:
            await client.close()
            log.warning(
                "controller_route_failed",
                route=route.model,
                engine=route.engine_address,
                error=_describe(exc),
                retry="at the next route set or resubscription",
            )
            return None
        self._failed.discard(route)
        return _Counted(backend)

    def _retire(self, name: str, backend: _Counted) -> None:
        task = asyncio.create_task(self._drain(name, backend))
        self._retiring[task] = backend
        task.add_done_callback(lambda t: self._retiring.pop(t, None))

    async def _drain(self, name: str, backend: _Counted) -> None:
        try:
            async with asyncio.timeout(self.settings.drain_timeout_s):
                await backend.idle.wait()
        except TimeoutError:
            log.warning("controller_route_drain_timeout", route=name, in_flight=backend.active)
        finally:
            await backend.close()


#: what a route whose deployment is in this state is: removed on purpose (404)
_REMOVED = frozenset({"stopped", "stopping", "gone"})
#: deployment states, closest to serving first (for a model with several deployments)
_RANK = {
    "serving": 0,
    "degraded": 1,
    "starting": 2,
    "pending": 3,
    "failed": 4,
    "stopping": 5,
    "stopped": 6,
    "unspecified": 7,
}


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc) or type(exc).__name__
