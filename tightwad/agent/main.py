"""``tightwad-agent``: run this host's agent (Engine + Node services) until SIGINT/SIGTERM.

    tightwad-agent [-c CONFIG] [--name NAME] [--listen HOST:PORT] [--model PATH [--model-id ID]]
                   [--ctx-size N] [--threads N] [--max-sessions N] [--check] [--version]
                   [--controller HOST:PORT [--advertise HOST:PORT]] [--log-level LEVEL]
    tightwad-agent --engine-only --listen HOST:PORT --model PATH [--devices RPC[h:p],...]
                   [--tensor-split a,b] [--gpu-layers N] ...   (see tightwad.agent.engine_host)

``--controller`` registers the agent with the controller (hello, then heartbeats with its
inventory); ``--advertise`` is the address the controller and gateway dial it on (default:
the listen address). ``--engine-only`` runs an engine host: one engine, no Node service, no
supervisor; the agent's supervisor starts those itself for pooled models.

Settings come from the cluster file (``agents`` section, the entry named ``--name``, default
the hostname); with no file anywhere, the single-host defaults. With ``cluster.tls`` it serves
and dials the controller over mutual TLS (a missing certificate file: exit 2, naming the key).
SIGINT/SIGTERM stop it gracefully: health NOT_SERVING, new calls refused, in-flight calls
(engine sessions) given ``cluster.drain_timeout_s`` to finish, every child process stopped,
exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import tightwad
from tightwad.agent.binaries import BinaryLocator
from tightwad.agent.node_service import LoadDefaults
from tightwad.agent.processes import BindPolicy, SupervisorSettings
from tightwad.agent.server import AgentServer, AgentSettings
from tightwad.config import ClusterConfig, default_config, load_config, resolve_config_path
from tightwad.engine.engine_config import EngineConfig
from tightwad.errors import ConfigError, TightwadError
from tightwad.logs import configure_logging, get_logger

__all__ = ["build_parser", "main", "settings_from_config"]

log = get_logger("tightwad.agent.main")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tightwad-agent",
        description="Run this host's Tightwad agent: inventory, llama.cpp processes, engines.",
    )
    p.add_argument("-c", "--config", help="cluster file (default: $TIGHTWAD_CONFIG, ./configs)")
    p.add_argument("--name", help="this agent's name in agents.hosts (default: the hostname)")
    p.add_argument("--listen", help="gRPC listen address HOST:PORT (default: from the config)")
    p.add_argument("--model", type=Path, help="GGUF to load into the embedded engine at start")
    p.add_argument("--model-id", help="model id the engine answers to (default: file stem)")
    p.add_argument("--ctx-size", type=int, help="context per session (default: config engine)")
    p.add_argument("--threads", type=int, help="CPU threads (default: config, else all)")
    p.add_argument("--max-sessions", type=int, help="sessions at once (default: config)")
    p.add_argument("--controller", help="controller address HOST:PORT to register with")
    p.add_argument("--advertise", help="address the cluster dials this agent on")
    p.add_argument("--engine-only", action="store_true", help="run an engine host (see above)")
    p.add_argument("--check", action="store_true", help="report what this host offers; exit")
    p.add_argument("--version", action="version", version=f"tightwad-agent {tightwad.__version__}")
    p.add_argument("--log-level", default="info", help="debug, info, warning, error")
    return p


def _load(path: str | None) -> ClusterConfig:
    try:
        resolve_config_path(path)
    except ConfigError:
        if path is None:
            return default_config()
        raise
    return load_config(path)


def _engine(ns: argparse.Namespace, cfg: ClusterConfig) -> tuple[EngineConfig, ...]:
    if ns.model is None:
        return ()
    model = Path(ns.model).expanduser()
    return (
        EngineConfig(
            model_id=ns.model_id or model.stem,
            path=model,
            ctx_size=ns.ctx_size or cfg.engine.ctx_size,
            max_sessions=ns.max_sessions or cfg.engine.max_sessions,
            threads=ns.threads or cfg.engine.threads or 0,
            gpu_layers=cfg.engine.n_gpu_layers,
            batch_size=cfg.engine.batch_size,
            batch_steps=cfg.engine.batch_steps,
            open_wait_s=cfg.engine.open_wait_s,
            prefill_chunk=cfg.engine.prefill_chunk,
        ),
    )


def settings_from_config(cfg: ClusterConfig, ns: argparse.Namespace) -> AgentSettings:
    """The agent's settings: the cluster file, then the command line on top."""
    name = ns.name or socket.gethostname()
    agent = cfg.agents.resolve(name)
    bind = BindPolicy(
        cluster_address=agent.address,
        allow_public_bind=cfg.cluster.allow_public_bind,
        private_network=cfg.cluster.private_network,
    )
    return AgentSettings(
        listen=ns.listen or f"{agent.host}:{agent.port}",
        token=cfg.cluster.token,
        engines=_engine(ns, cfg),
        name=name,
        model_dirs=tuple(Path(d).expanduser() for d in agent.model_dirs),
        binaries=BinaryLocator(
            explicit_dir=agent.binaries_dir,
            rpc_server_name=cfg.binaries.rpc_server,
            llama_server_name=cfg.binaries.coordinator,
        ),
        supervisor=SupervisorSettings(bind=bind),
        stop_grace_s=cfg.cluster.drain_timeout_s,
        # Register when told where the controller is: --controller, or controller.address in the
        # cluster file (the address agents and clients dial).
        controller=ns.controller or cfg.controller.address,
        advertise=ns.advertise,
        load_defaults=LoadDefaults(
            ctx_size=ns.ctx_size or cfg.engine.ctx_size,
            max_sessions=ns.max_sessions or cfg.engine.max_sessions,
            batch_size=cfg.engine.batch_size,
            threads=ns.threads or cfg.engine.threads or 0,
            batch_steps=cfg.engine.batch_steps,
            open_wait_s=cfg.engine.open_wait_s,
            prefill_chunk=cfg.engine.prefill_chunk,
        ),
        tls=cfg.cluster.tls,
    )


async def serve(settings: AgentSettings) -> int:
    """Run until SIGINT/SIGTERM, then stop gracefully. Returns the exit status."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = AgentServer(settings)
    try:
        address = await server.start()
        print(f"tightwad-agent {settings.name} listening on {address}", flush=True)
        await stop.wait()
        log.info("agent_signal_received")
    finally:
        await server.stop(grace=settings.stop_grace_s)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0


def _run(settings: AgentSettings) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio works too
        return asyncio.run(serve(settings))
    return uvloop.run(serve(settings))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--engine-only" in args:
        from tightwad.agent import engine_host

        return engine_host.main([a for a in args if a != "--engine-only"])
    ns = build_parser().parse_args(args)
    configure_logging(ns.log_level)
    try:
        cfg = _load(ns.config)
        settings = settings_from_config(cfg, ns)
        if ns.check:
            from tightwad.agent.check import run_check

            return run_check(settings)
        return _run(settings)
    except TightwadError as exc:
        print(f"tightwad-agent: {exc}", file=sys.stderr, flush=True)
        return 2 if isinstance(exc, ConfigError) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
