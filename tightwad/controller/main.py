"""``tightwad-controller``: run the controller (registry, placement, orchestration).

Prints ``tightwad-controller listening on HOST:PORT`` once it serves. SIGINT/SIGTERM stop it
gracefully: new calls refused, calls in flight given ``cluster.drain_timeout_s`` to finish,
the state file closed; exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from tightwad import __version__
from tightwad.config import load_config
from tightwad.controller.server import ControllerServer
from tightwad.errors import TightwadError
from tightwad.logs import configure_logging, get_logger

__all__ = ["main"]

log = get_logger("tightwad.controller")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tightwad-controller",
        description="Cluster state, placement and orchestration for Tightwad agents.",
    )
    p.add_argument("-c", "--config", help="cluster file (default: $TIGHTWAD_CONFIG, ./configs)")
    p.add_argument("--listen", help="HOST:PORT to serve on (default: controller.host:port)")
    p.add_argument("--state", type=Path, help="SQLite state file (default: controller.state_path)")
    p.add_argument("--log-level", default="info")
    p.add_argument("--version", action="version", version=f"tightwad-controller {__version__}")
    return p


async def _serve(server: ControllerServer) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        address = await server.start()
        print(f"tightwad-controller listening on {address}", flush=True)
        await stop.wait()
        log.info("controller_stopping", deadline_s=server.config.cluster.drain_timeout_s)
    finally:
        await server.stop(grace=server.config.cluster.drain_timeout_s)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        config = load_config(args.config)
        server = ControllerServer(config, listen=args.listen, state_path=args.state)
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency
            asyncio.run(_serve(server))
        else:
            uvloop.run(_serve(server))
    except TightwadError as exc:
        print(f"tightwad-controller: {exc.message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
