"""The dashboard's HTTP surface on the gateway app.

Owns :class:`Dashboard` (the page's state: the rolling :class:`History`, the target engines'
batch occupancy (:class:`~tightwad.gateway.dashboard.occupancy.EngineOccupancy`, read while a
page looks), the controller's :class:`~tightwad.gateway.dashboard.feed.ClusterFeed` when one is
set) and :func:`add_routes`:

    GET  /                          the page (index.html)                  open
    GET  /dashboard/static/{file}   its script and styles, from the package open
    GET  /dashboard/api/snapshot    routes now (JSON)                      bearer + allow-list
    GET  /dashboard/api/live        routes every push_s, cluster, events   bearer + allow-list
                                    (Server-Sent Events)
    POST /dashboard/api/chat        the playground (SSE; playground.py)    bearer

Only the page's own files are open: they hold no data and the page has to load to ask for the
key. Every data endpoint goes through the gateway's auth middleware like any other route (the
page sends ``Authorization: Bearer`` on its fetches and reads the streams with ``fetch``, since
``EventSource`` cannot send headers); the two status endpoints also honour the operator
allow-list of ``/v1/tightwad/status``. Guarantees: one sampler per app (started and stopped
with it) feeds the history from the metrics, however many pages are open; a page's stream ends
when it leaves, and it unsubscribes from the cluster feed.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from tightwad.gateway.api import GATEWAY, error_response
from tightwad.gateway.dashboard.history import History, RouteTotals, registry_counts
from tightwad.gateway.dashboard.occupancy import EngineOccupancy
from tightwad.gateway.dashboard.views import route_view
from tightwad.gateway.metrics import route_status
from tightwad.gateway.sse import SSEWriter
from tightwad.logs import get_logger

if TYPE_CHECKING:
    from tightwad.gateway.dashboard.feed import ClusterFeed, Message

__all__ = ["DASHBOARD", "Dashboard", "DashboardSettings", "add_routes"]

log = get_logger(__name__)

STATIC = Path(__file__).parent / "static"
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css",
          ".svg": "image/svg+xml"}  # fmt: skip
_SHELL_PREFIX = "/dashboard/static/"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class DashboardSettings:
    """How often pages get news, and how much history the charts keep.

    ``controller``/``token``/``credentials``: the controller to show (None: no cluster view).
    """

    push_s: float = 1.0
    interval_s: float = 2.0
    window_s: float = 600.0
    # How often the target engines are asked for their batch occupancy while a page looks.
    occupancy_s: float = 2.0
    controller: str | None = None
    token: str | None = field(default=None, repr=False)
    credentials: Any = None


class Dashboard:
    """One gateway app's dashboard state."""

    def __init__(self, settings: DashboardSettings | None = None) -> None:
        self.settings = settings or DashboardSettings()
        s = self.settings
        self.history = History(interval_s=s.interval_s, window_s=s.window_s)
        self.occupancy = EngineOccupancy()
        self._viewed = -math.inf  # monotonic time of the last snapshot a page got
        self.feed: ClusterFeed | None = None
        if s.controller:
            from tightwad.gateway.dashboard.feed import ClusterFeed

            self.feed = ClusterFeed(s.controller, token=s.token, credentials=s.credentials)

    def sample(self, app: web.Application) -> None:
        """Bring the history up to date with the gateway's metrics."""
        gateway = app[GATEWAY]
        names = list(gateway.routes)
        self.history.sample(registry_counts(gateway.metrics.registry, names))
        self.history.forget(names)

    def snapshot(self, app: web.Application) -> dict[str, Any]:
        """The routes table now: one :func:`route_view` per route of the live table."""
        gateway = app[GATEWAY]
        self._viewed = time.monotonic()
        routes = []
        for name, backend in list(gateway.routes.items()):
            limiter = gateway.limiters.get(name)
            running, waiting = (limiter.running, limiter.waiting) if limiter else (0, 0)
            entry = with_occupancy(
                route_status(name, backend, running, waiting), self.occupancy.latest.get(name)
            )
            totals = self.history.totals.get(name) or RouteTotals()
            routes.append(
                route_view(
                    entry,
                    tok_s=self.history.tokens_per_second(name),
                    series=self.history.series(name),
                    totals=totals.as_json(),
                    errors=totals.errors,
                )
            )
        return {
            "time": round(time.time(), 3),
            "uptime_s": round(time.time() - gateway.started, 1),
            "auth": gateway.settings.api_key is not None,
            "controller": self.settings.controller,
            "routes": routes,
        }

    async def _sampler(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup context: sample the metrics for the app's whole life."""

        async def run() -> None:
            asked = -math.inf
            while True:
                try:
                    self.sample(app)
                    now = time.monotonic()
                    looked = now - self._viewed < 5 * max(self.settings.push_s, 1.0)
                    if looked and now - asked >= self.settings.occupancy_s:
                        asked = now
                        await self.occupancy.refresh(app[GATEWAY].routes)
                except Exception:
                    log.exception("dashboard_sample_failed")
                await asyncio.sleep(self.settings.interval_s / 2)

        task = asyncio.create_task(run(), name="dashboard_sampler")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if self.feed is not None:
                await self.feed.close()


DASHBOARD = web.AppKey("tightwad_dashboard", Dashboard)


def with_occupancy(entry: dict[str, Any], batch: dict[str, Any] | None) -> dict[str, Any]:
    """``entry`` with the engine's batch occupancy as ``details["batch"]`` when the route's
    own status does not carry one (the route's own numbers win)."""
    details = entry.get("details")
    if batch is None or not isinstance(details, dict) or details.get("batch") is not None:
        return entry
    return {**entry, "details": {**details, "batch": batch}}


# --- the page's own files (open) -------------------------------------------------------------


def _shell_file(path: str) -> Path | None:
    if path == "/":
        return STATIC / "index.html"
    if not path.startswith(_SHELL_PREFIX):
        return None
    name = path[len(_SHELL_PREFIX) :]
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    return STATIC / name


@web.middleware
async def shell_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Serve the page's own files (GET/HEAD ``/`` and ``/dashboard/static/*``) before the auth
    middleware; everything else goes on unchanged."""
    if request.method not in ("GET", "HEAD"):
        return await handler(request)
    target = _shell_file(request.path)
    if target is None:
        return await handler(request)
    if target.suffix not in _TYPES or not target.is_file():
        return error_response(
            404, f"Invalid URL (GET {request.path})", "invalid_request_error", code="unknown_url"
        )
    return web.Response(
        body=target.read_bytes(),
        headers={
            "Content-Type": f"{_TYPES[target.suffix]}; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": (
                "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                "script-src 'self'; connect-src 'self'; frame-ancestors 'none'"
            ),
        },
    )


# --- data (behind the auth middleware) -------------------------------------------------------


def _operator(request: web.Request) -> web.Response | None:
    if request.app[GATEWAY].allow.allows(request.remote):
        return None
    return error_response(
        403, "Your address may not read this endpoint.", "permission_error", code="forbidden"
    )


async def _snapshot(request: web.Request) -> web.Response:
    refused = _operator(request)
    if refused is not None:
        return refused
    dashboard = request.app[DASHBOARD]
    dashboard.sample(request.app)
    return web.json_response(dashboard.snapshot(request.app))


async def _live(request: web.Request) -> web.StreamResponse:
    """``routes`` every ``push_s``; ``cluster`` and ``event`` messages as the controller sends
    them. Each frame is ``data: {"type": ..., "data": ...}``."""
    refused = _operator(request)
    if refused is not None:
        return refused
    app, dashboard = request.app, request.app[DASHBOARD]
    writer = SSEWriter(request)
    await writer.prepare()
    queue: asyncio.Queue[Message] | None = None
    if dashboard.feed is not None:
        queue = dashboard.feed.subscribe()
    loop = asyncio.get_running_loop()
    next_push = loop.time()
    try:
        while True:
            wait = next_push - loop.time()
            if wait <= 0:
                dashboard.sample(app)
                await writer.send({"type": "routes", "data": dashboard.snapshot(app)})
                next_push = loop.time() + dashboard.settings.push_s
                continue
            if queue is None:
                await asyncio.sleep(wait)
                continue
            try:
                kind, payload = await asyncio.wait_for(queue.get(), wait)
            except TimeoutError:
                continue
            await writer.send({"type": kind, "data": payload})
    except ConnectionResetError:
        log.debug("dashboard_page_left")
    finally:
        if queue is not None and dashboard.feed is not None:
            dashboard.feed.unsubscribe(queue)
    return writer.response


def add_routes(app: web.Application, settings: DashboardSettings | None = None) -> Dashboard:
    """Mount the dashboard on the gateway ``app`` (built by ``create_app``, not yet frozen)."""
    from tightwad.gateway.dashboard.playground import chat

    dashboard = Dashboard(settings)
    app[DASHBOARD] = dashboard
    app.middlewares.insert(0, shell_middleware)
    app.router.add_get("/dashboard/api/snapshot", _snapshot)
    app.router.add_get("/dashboard/api/live", _live)
    app.router.add_post("/dashboard/api/chat", chat)
    app.cleanup_ctx.append(dashboard._sampler)
    return dashboard
