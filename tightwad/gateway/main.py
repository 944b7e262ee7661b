"""``tightwad-gateway``: serve a cluster file's routes as one OpenAI-compatible endpoint.

    tightwad-gateway [-c CONFIG] [--host HOST] [--port PORT] [--api-key KEY]
                     [--log-level LEVEL] [--version]

Routes come from the file (``routes``, else the seed's ``proxy``, else one plain route per
model; with a controller, ``--controller`` or ``controller.address``, the routes it publishes,
followed live): see :mod:`tightwad.gateway.routes`. Listen address and API key: the flags, else the
``gateway`` section (for a seed file with only a ``proxy`` section, its host, port and
``auth_token``). Prints ``tightwad-gateway listening on URL`` once it serves; SIGINT/SIGTERM
stop it gracefully: the port closes (new requests are refused), requests in flight get
``cluster.drain_timeout_s`` to finish, then engine sessions are ended and embedded engines
closed; exit 0. A bad file exits 2 with the key path and the reason; any other start failure
exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence

import tightwad
from tightwad.config import ClusterConfig, GatewayConfig, load_config
from tightwad.errors import ConfigError, TightwadError
from tightwad.gateway.server import GatewayServer, settings_from_config
from tightwad.logs import configure_logging, get_logger
from tightwad.tls import channel_credentials

__all__ = ["build_parser", "main"]

log = get_logger("tightwad.gateway.main")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tightwad-gateway",
        description="Serve the cluster file's routes as one OpenAI-compatible HTTP endpoint.",
    )
    p.add_argument("-c", "--config", help="cluster file (default: $TIGHTWAD_CONFIG, ./configs)")
    p.add_argument("--host", help="listen host (default: gateway.host)")
    p.add_argument("--port", type=int, help="listen port, 0 = any free one (default: gateway.port)")
    p.add_argument(
        "--api-key",
        default=os.environ.get("TIGHTWAD_API_KEY"),
        help="bearer token clients must send (default: $TIGHTWAD_API_KEY, gateway.api_key)",
    )
    p.add_argument(
        "--controller",
        help="controller HOST:PORT whose published routes to follow (default: controller.address)",
    )
    p.add_argument("--log-level", default="info", help="debug, info, warning, error")
    p.add_argument(
        "--version", action="version", version=f"tightwad-gateway {tightwad.__version__}"
    )
    return p


def listen_address(cfg: ClusterConfig, ns: argparse.Namespace) -> tuple[str, int]:
    host, port = cfg.gateway.host, cfg.gateway.port
    seed_only = cfg.proxy is not None and not cfg.routes and cfg.gateway == GatewayConfig()
    if seed_only and cfg.proxy is not None:
        host, port = cfg.proxy.host, cfg.proxy.port
    return (ns.host or host, ns.port if ns.port is not None else port)


def _api_key(cfg: ClusterConfig, ns: argparse.Namespace) -> str | None:
    if ns.api_key:
        return str(ns.api_key)
    if cfg.gateway.api_key:
        return cfg.gateway.api_key
    return cfg.proxy.auth_token if cfg.proxy is not None else None


async def serve(cfg: ClusterConfig, ns: argparse.Namespace) -> int:
    """Run until SIGINT/SIGTERM, then stop gracefully. Returns the exit status."""
    from tightwad.gateway.routes import build_routes

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    host, port = listen_address(cfg, ns)
    built = None
    gateway: GatewayServer | None = None
    try:
        controller = ns.controller or cfg.controller.address
        built = await build_routes(cfg, controller=bool(controller))
        settings = settings_from_config(cfg, api_key=_api_key(cfg, ns))
        gateway = GatewayServer(
            built.specs,
            settings,
            host=host,
            port=port,
            drain_timeout_s=cfg.cluster.drain_timeout_s,
            controller=controller,
            token=cfg.cluster.token,
            credentials=channel_credentials(cfg.cluster.tls) if controller else None,
            passthrough=built.backends,
        )
        start = asyncio.ensure_future(gateway.start())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({start, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not start.done():
            start.cancel()
            log.info("gateway_signal_received")
            return 0
        stopped.cancel()
        url = start.result()
        print(f"tightwad-gateway listening on {url}", flush=True)
        for name in [*(spec.name for spec in built.specs), *built.backends]:
            backend = gateway.backends[name]
            info = backend.info()
            print(
                f"  route {name!r}: target {info.target} (draft: {info.draft_mode})",
                flush=True,
            )
        await stop.wait()
        log.info("gateway_draining", deadline_s=cfg.cluster.drain_timeout_s)
    finally:
        if gateway is not None:
            await gateway.stop()
        if built is not None:
            await built.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0


def _run(cfg: ClusterConfig, ns: argparse.Namespace) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio works too
        return asyncio.run(serve(cfg, ns))
    return uvloop.run(serve(cfg, ns))


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    configure_logging(ns.log_level)
    try:
        cfg = load_config(ns.config)
        return _run(cfg, ns)
    except TightwadError as exc:
        print(f"tightwad-gateway: {exc}", file=sys.stderr, flush=True)
        return 2 if isinstance(exc, ConfigError) else 1
    except KeyboardInterrupt:  # a signal before the handlers were installed
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
