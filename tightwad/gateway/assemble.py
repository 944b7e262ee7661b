"""One way to assemble a serving stack: a cluster file (+ what the command line overrides) ->
the routes' engines and clients -> a :class:`~tightwad.gateway.server.GatewayServer`.

``tightwad-gateway``, ``tightwad proxy start`` and ``tightwad up`` all call :func:`assemble`;
each only turns its flags into a :class:`ClusterConfig` and :class:`Overrides`. So the same
file is served the same way by each (same routes, same listen address, same limits).

Listen address (one rule): the flag, else ``gateway.host`` / ``gateway.port`` (which default
to the seed's ``proxy.host`` / ``proxy.port`` when the file has a ``proxy`` section; see
``tightwad.config``). API key: the flag, else ``gateway.api_key`` (default
``proxy.auth_token``).
"""

from __future__ import annotations

from dataclasses import dataclass

from tightwad.config import ClusterConfig
from tightwad.gateway.routes import BuiltRoutes, build_routes
from tightwad.gateway.server import GatewayServer, route_limits, settings_from_config
from tightwad.tls import channel_credentials

__all__ = ["Overrides", "Stack", "assemble", "listen_address"]


@dataclass(frozen=True, slots=True)
class Overrides:
    """What a command line may set over the file (None: the file's value)."""

    host: str | None = None
    port: int | None = None
    api_key: str | None = None
    controller: str | None = None


@dataclass
class Stack:
    """The gateway (not started) and what was started for its routes."""

    gateway: GatewayServer
    built: BuiltRoutes

    async def start(self) -> str:
        """Serve; returns the base URL. On failure everything is stopped again."""
        try:
            return await self.gateway.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        try:
            await self.gateway.stop()
        finally:
            await self.built.close()

    @property
    def route_names(self) -> list[str]:
        return [*(s.name for s in self.built.specs), *self.built.backends]


def listen_address(cfg: ClusterConfig, overrides: Overrides = Overrides()) -> tuple[str, int]:
    g = cfg.gateway
    return (
        overrides.host or g.host,
        overrides.port if overrides.port is not None else g.port,
    )


async def assemble(cfg: ClusterConfig, overrides: Overrides = Overrides()) -> Stack:
    """Start what ``cfg``'s routes need (embedded engines, adapters, engine clients) and
    return the stack, not yet serving. With a controller (``overrides.controller`` or
    ``controller.address``) the models it places are followed live instead of loaded here."""
    controller = overrides.controller or cfg.controller.address
    built = await build_routes(cfg, controller=bool(controller))
    try:
        host, port = listen_address(cfg, overrides)
        api_key = overrides.api_key or cfg.gateway.api_key
        gateway = GatewayServer(
            built.specs,
            settings_from_config(cfg, api_key=api_key),
            host=host,
            port=port,
            drain_timeout_s=cfg.cluster.drain_timeout_s,
            controller=controller,
            token=cfg.cluster.token,
            credentials=channel_credentials(cfg.cluster.tls) if controller else None,
            passthrough=built.backends,
            limits=route_limits(cfg),
        )
    except BaseException:
        await built.close()
        raise
    return Stack(gateway=gateway, built=built)
