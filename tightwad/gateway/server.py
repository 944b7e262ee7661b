"""Serving the gateway app: an aiohttp runner with handler cancellation on client disconnect,
and the routes' start-up (vocabulary checks) before the port opens."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aiohttp import web

from tightwad.config import ClusterConfig
from tightwad.gateway.api import GatewaySettings, create_app
from tightwad.gateway.engine_client import EngineClient
from tightwad.gateway.loop import RouteSpec, SpecBackend
from tightwad.logs import get_logger

__all__ = ["GatewayServer", "settings_from_config"]

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
        status_allow_networks=tuple(str(n) for n in g.metrics_allow),
    )


@dataclass
class GatewayServer:
    """Routes + settings served on host:port. ``start`` -> base URL; ``stop`` closes all."""

    specs: Sequence[RouteSpec]
    settings: GatewaySettings
    host: str = "127.0.0.1"
    port: int = 8088

    def __post_init__(self) -> None:
        self.backends: dict[str, SpecBackend] = {s.name: SpecBackend(s) for s in self.specs}
        self._runner: web.AppRunner | None = None
        self.bound_port = 0

    async def start(self) -> str:
        for backend in self.backends.values():
            await backend.start()
        routes: Mapping[str, SpecBackend] = self.backends
        app = create_app(routes, self.settings)
        # keepalive_timeout also bounds a client that never finishes its headers (slow-loris).
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, keepalive_timeout=15.0
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.bound_port = sockets[0].getsockname()[1] if sockets else self.port
        log.info("gateway_started", url=self.url, routes=sorted(self.backends))
        return self.url

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.bound_port or self.port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        clients: dict[int, EngineClient] = {}
        for spec in self.specs:
            for c in (spec.target, *spec.drafters):
                clients[id(c)] = c
        for c in clients.values():
            await c.close()
