"""Serving the gateway app: an aiohttp runner with handler cancellation on client disconnect,
and the routes' start-up (vocabulary checks) before the port opens."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from aiohttp import web

from tightwad.config import ClusterConfig
from tightwad.gateway.api import GATEWAY, GatewaySettings, create_app
from tightwad.gateway.dashboard import Dashboard, DashboardSettings, add_routes
from tightwad.gateway.engine_client import EngineClient
from tightwad.gateway.faults import fault_middleware
from tightwad.gateway.loop import RouteSpec, SpecBackend
from tightwad.gateway.security import RouteLimiter
from tightwad.gateway.types import Backend
from tightwad.logs import get_logger

if TYPE_CHECKING:
    from tightwad.gateway.routes import ControllerRoutes, WatchSettings

__all__ = ["GatewayServer", "RouteLimits", "route_limits", "settings_from_config"]

log = get_logger("tightwad.gateway")


def settings_from_config(cfg: ClusterConfig, *, api_key: str | None = None) -> GatewaySettings:
    g = cfg.gateway
    return GatewaySettings(
        api_key=api_key if api_key is not None else g.api_key,
        max_body_bytes=g.max_body_bytes,
        max_tokens_cap=g.max_tokens_cap,
        max_concurrency=g.max_concurrency,
        max_queue=g.queue_size,
        request_timeout_s=g.request_timeout_s,
        body_timeout_s=g.body_timeout_s,
        status_allow_networks=tuple(str(n) for n in g.metrics_allow),
        max_choices=g.max_choices,
    )


@dataclass(frozen=True, slots=True)
class RouteLimits:
    """One route's own limits (a route's ``max_concurrency`` / ``queue_size`` in the file);
    None: the gateway's (``GatewaySettings.max_concurrency`` / ``max_queue``)."""

    max_concurrency: int | None = None
    max_queue: int | None = None


def route_limits(cfg: ClusterConfig) -> dict[str, RouteLimits]:
    """The routes of ``cfg`` that set their own limits, by name."""
    return {
        r.name: RouteLimits(r.max_concurrency, r.queue_size)
        for r in cfg.effective_routes()
        if r.max_concurrency is not None or r.queue_size is not None
    }


@dataclass
class GatewayServer:
    """Routes + settings served on host:port. ``start`` -> base URL; ``stop`` closes all.

    ``stop`` drains: the port closes at once (new connections are refused, idle keep-alive
    ones closed), requests in flight (queued ones included) get ``drain_timeout_s`` to finish,
    then the rest are cancelled and the engine channels closed.

    With ``controller`` (its ``host:port``), the routes it publishes are followed live
    (:class:`tightwad.gateway.routes.ControllerRoutes`, with ``token``/``credentials``): the
    route table (``put``/``remove``) changes under the running app; ``specs`` stay static.

    ``limits``: routes with their own concurrency / queue limits (the rest get the settings').

    ``dashboard``: the web page on ``GET /`` (:mod:`tightwad.gateway.dashboard`), showing the
    cluster of ``controller`` too; None: its defaults.
    """

    specs: Sequence[RouteSpec]
    settings: GatewaySettings
    host: str = "127.0.0.1"
    port: int = 8088
    drain_timeout_s: float = 30.0
    controller: str | None = None
    token: str | None = None
    credentials: Any = None  # grpc.ChannelCredentials for the controller and its engines
    watch: WatchSettings | None = None
    # Routes that are not speculative loops (a text-only target: passthrough.py), by name;
    # started with the rest, closed by whoever built them (BuiltRoutes.close).
    passthrough: Mapping[str, Any] = field(default_factory=dict)
    limits: Mapping[str, RouteLimits] = field(default_factory=dict)
    dashboard: DashboardSettings | None = None

    def __post_init__(self) -> None:
        self._static: dict[str, Any] = {s.name: SpecBackend(s) for s in self.specs}
        self._static.update(self.passthrough)
        # The live route table: the app reads it on every request.
        self.backends: dict[str, Backend] = dict(self._static)
        self._limiters: dict[str, RouteLimiter] = {}
        self._runner: web.AppRunner | None = None
        self.watcher: ControllerRoutes | None = None
        self._watching: asyncio.Task[None] | None = None
        self.bound_port = 0
        self.page: Dashboard | None = None

    # -- the route table (RouteTable) ----------------------------------------------------

    def put(self, name: str, backend: Backend) -> None:
        """Serve ``name`` with ``backend`` from the next request on (in-flight ones keep the
        backend they started with). A route's queue limits outlive a replacement."""
        self.backends[name] = backend
        if name not in self._limiters:
            self._limiters[name] = self._limiter(name)

    def _limiter(self, name: str) -> RouteLimiter:
        own, s = self.limits.get(name, RouteLimits()), self.settings
        return RouteLimiter(
            name,
            own.max_concurrency if own.max_concurrency is not None else s.max_concurrency,
            own.max_queue if own.max_queue is not None else s.max_queue,
        )

    def remove(self, name: str) -> None:
        """Forget ``name`` (removed on purpose): the API answers 404 ``model_not_found`` for
        it. A route that is coming back is ``put`` as a
        :class:`~tightwad.gateway.faults.UnavailableRoute` instead (503, Retry-After)."""
        self.backends.pop(name, None)
        self._limiters.pop(name, None)

    async def start(self) -> str:
        for backend in self._static.values():
            await backend.start()
        app = self._app()
        self._limiters = app[GATEWAY].limiters
        for name in self._limiters:  # in place: the status page pairs routes and limiters
            self._limiters[name] = self._limiter(name)
        # keepalive_timeout also bounds a client that never finishes its headers (slow-loris).
        runner = web.AppRunner(
            app,
            handler_cancellation=True,
            access_log=None,
            keepalive_timeout=15.0,
            # After an early answer (413, 408) aiohttp reads and drops what the client still
            # sends, for this long (default 10 s), before closing: keep a slow body short.
            lingering_time=2.0,
            shutdown_timeout=self.drain_timeout_s,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.bound_port = sockets[0].getsockname()[1] if sockets else self.port
        log.info("gateway_started", url=self.url, routes=sorted(self.backends))
        if self.controller:
            from tightwad.gateway.routes import ControllerRoutes, WatchSettings

            self.watcher = ControllerRoutes(
                self.controller,
                self,
                token=self.token,
                credentials=self.credentials,
                static=self._static,
                settings=self.watch or WatchSettings(),
            )
            self._watching = asyncio.create_task(self.watcher.run())
        return self.url

    def _app(self) -> web.Application:
        """The API app over the live route table; sub-apps and extra routes go here."""
        app = create_app(self.backends, self.settings)
        app.middlewares.append(fault_middleware(self.backends))  # innermost: 503 Retry-After
        page = self.dashboard or DashboardSettings()
        if page.controller is None and self.controller:
            page = replace(
                page, controller=self.controller, token=self.token, credentials=self.credentials
            )
        self.page = add_routes(app, page)
        return app

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.bound_port or self.port}"

    async def stop(self) -> None:
        if self.watcher is not None and self._watching is not None:
            self.watcher.stop()
            try:
                async with asyncio.timeout(5.0):
                    await self._watching
            except TimeoutError:
                self._watching.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._watching
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.watcher is not None:
            await self.watcher.close()
        clients: dict[int, EngineClient] = {}
        for spec in self.specs:
            for c in (spec.target, *spec.drafters):
                clients[id(c)] = c
        for c in clients.values():
            await c.close()
