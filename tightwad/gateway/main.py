"""``tightwad-gateway``: serve a cluster file's routes as one OpenAI-compatible endpoint.

    tightwad-gateway [-c CONFIG] [--host HOST] [--port PORT] [--api-key KEY]
                     [--log-level LEVEL] [--version]

Routes come from the file (``routes``, else the seed's ``proxy``, else one plain route per
model; with a controller, ``--controller`` or ``controller.address``, the routes it publishes,
followed live): see :mod:`tightwad.gateway.routes`; assembled by
:func:`tightwad.gateway.assemble.assemble`, as ``tightwad proxy start`` does. Listen address and
API key: the flags, else the ``gateway`` section (whose host, port and api_key default to the
seed ``proxy`` section's host, port and ``auth_token``). Prints ``tightwad-gateway listening
on URL`` once it serves; SIGINT/SIGTERM stop it gracefully: the port closes (new requests
are refused), requests in flight get ``cluster.drain_timeout_s`` to finish, then engine
sessions are ended and embedded engines closed; exit 0. A bad file exits 2 with the key path
and the reason; any other start failure exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence

import tightwad
from tightwad.config import ClusterConfig, load_config
from tightwad.errors import ConfigError, TightwadError
from tightwad.gateway.assemble import Overrides, Stack, assemble
from tightwad.logs import configure_logging, get_logger

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


def overrides(ns: argparse.Namespace) -> Overrides:
    """The flags, as overrides of the file (see :mod:`tightwad.gateway.assemble`)."""
    return Overrides(
        host=ns.host, port=ns.port, api_key=ns.api_key or None, controller=ns.controller
    )


async def serve(cfg: ClusterConfig, ns: argparse.Namespace) -> int:
    """Run until SIGINT/SIGTERM, then stop gracefully. Returns the exit status."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stack: Stack | None = None
    try:
        stack = await assemble(cfg, overrides(ns))
        start = asyncio.ensure_future(stack.gateway.start())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({start, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not start.done():
            start.cancel()
            log.info("gateway_signal_received")
            return 0
        stopped.cancel()
        url = start.result()
        print(f"tightwad-gateway listening on {url}", flush=True)
        for name in stack.route_names:
            info = stack.gateway.backends[name].info()
            print(
                f"  route {name!r}: target {info.target} (draft: {info.draft_mode})",
                flush=True,
            )
        await stop.wait()
        log.info("gateway_draining", deadline_s=cfg.cluster.drain_timeout_s)
    finally:
        if stack is not None:
            await stack.stop()
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
