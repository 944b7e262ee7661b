"""``tightwadctl``: the operator's command line over the controller (and agents' logs).

Where it connects: ``--controller HOST:PORT``, else the cluster file's
``controller.dial_address`` (``-c``, ``$TIGHTWAD_CONFIG``, ``./configs/cluster.yaml``), else
the controller's default ``127.0.0.1:50051``. The token: ``--token``, else ``$TIGHTWAD_TOKEN``,
else the file's ``cluster.token``. A token is never printed. Mutual TLS: ``--tls-ca``,
``--tls-cert``, ``--tls-key`` (all three), else ``$TIGHTWAD_TLS_CA`` / ``_CERT`` / ``_KEY``,
else the file's ``cluster.tls``; none of them: plain text.

Exit codes: 0 done; 1 an error (its message), a refused plan, a deployment that failed;
2 usage; 3 the controller cannot be reached; 4 the token was refused; 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog

from tightwad import __version__
from tightwad.cli import render
from tightwad.cli.bench import run_bench
from tightwad.cli.client import ControllerClient, ControllerUnreachable, TokenRefused
from tightwad.config import (
    CONFIG_ENV_VAR,
    DEFAULT_CONFIG_PATH,
    ClusterConfig,
    ControllerConfig,
    TlsConfig,
    load_config,
)
from tightwad.controller.domain import Deployment, DeploymentSpec, DeploymentState, ServeMode
from tightwad.controller.ids import DeviceId, NodeId
from tightwad.controller.placement import Constraints
from tightwad.errors import ConfigError, InvalidRequestError, NotFoundError, TightwadError
from tightwad.logs import configure_logging
from tightwad.tls import CONFIG_KEYS, channel_credentials, read_tls_files

__all__ = [
    "EXIT_ERROR",
    "EXIT_TOKEN",
    "EXIT_UNREACHABLE",
    "TOKEN_ENV_VAR",
    "CtlContext",
    "build_parser",
    "deploy",
    "execute",
    "main",
    "resolve_context",
    "show_status",
    "stop",
    "swap",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_UNREACHABLE = 3
EXIT_TOKEN = 4
EXIT_INTERRUPTED = 130
TOKEN_ENV_VAR = "TIGHTWAD_TOKEN"
TLS_ENV_VARS = ("TIGHTWAD_TLS_CA", "TIGHTWAD_TLS_CERT", "TIGHTWAD_TLS_KEY")
_TLS_FLAGS = ("--tls-ca", "--tls-cert", "--tls-key")
DEFAULT_WAIT_S = 600.0
_TERMINAL = (DeploymentState.SERVING, DeploymentState.FAILED, DeploymentState.STOPPED)


@dataclass(frozen=True, slots=True)
class CtlContext:
    """Where and how to connect, resolved once from flags, environment and cluster file."""

    address: str
    token: str | None
    timeout: float
    json: bool
    config: ClusterConfig | None
    credentials: grpc.ChannelCredentials | None = None

    def client(self) -> ControllerClient:
        return ControllerClient(
            self.address, token=self.token, timeout=self.timeout, credentials=self.credentials
        )


# --- the parser ---------------------------------------------------------------------------


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ctx", type=int, default=0, help="context size (default: the model's)")
    p.add_argument("--kv", choices=["f16", "q8_0"], default="f16", help="KV cache type")
    p.add_argument("--pin", action="append", default=[], metavar="DEV", help="use this device")
    p.add_argument(
        "--exclude", action="append", default=[], metavar="DEV", help="never use this device"
    )
    p.add_argument(
        "--exclude-node", action="append", default=[], metavar="NODE", help="never use this node"
    )
    p.add_argument("--coordinator", metavar="NODE", help="the node that loads the model")


def _add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub.add_parser("status", help="controller, nodes and deployments at a glance")
    sub.add_parser("nodes", help="registered nodes and their state")
    sub.add_parser("gpus", help="every device of every node, with free memory")
    sub.add_parser("models", help="configured models and the GGUF files nodes reported")
    plan = sub.add_parser("plan", help="preview a placement (changes nothing)")
    plan.add_argument("model", help="a model name from the config, or a GGUF path")
    _add_model_options(plan)
    deploy = sub.add_parser("deploy", help="place and serve a model")
    deploy.add_argument("model")
    _add_model_options(deploy)
    deploy.add_argument("--mode", choices=["engine", "llama-server"], default="engine")
    deploy.add_argument("--wait", action="store_true", help="wait until it serves (or fails)")
    deploy.add_argument("--wait-timeout", type=float, default=DEFAULT_WAIT_S, metavar="S")
    swap = sub.add_parser("swap", help="serve another model on a deployment's devices")
    swap.add_argument("deployment", nargs="?", help="id or model (default: the only running one)")
    swap.add_argument("model")
    _add_model_options(swap)
    swap.add_argument("--mode", choices=["engine", "llama-server"], default="engine")
    stop = sub.add_parser("stop", help="stop a deployment")
    stop.add_argument("deployment", nargs="?", help="deployment id, or its model")
    stop.add_argument("--all", action="store_true", help="stop every running deployment")
    drain = sub.add_parser("drain", help="move work off a node (--undo to take it back)")
    drain.add_argument("node")
    drain.add_argument("--undo", action="store_true")
    logs = sub.add_parser("logs", help="a supervised process's output, from its node's agent")
    logs.add_argument("node")
    logs.add_argument("process", help="process name (see `tightwadctl nodes`)")
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("--tail", type=int, default=0, metavar="N", help="last N lines (0 = all)")
    events = sub.add_parser("events", help="the controller's event log")
    events.add_argument("-f", "--follow", action="store_true")
    events.add_argument("--since", type=int, default=0, metavar="ID", help="after event ID")
    certs = sub.add_parser("certs", help="cluster CA and per-host certificates for mutual TLS")
    certs.add_argument("certs_args", nargs=argparse.REMAINDER, help="init | issue (see --help)")
    bench = sub.add_parser("bench", help="benchmarks against a live gateway (see benchmarks/)")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tightwadctl",
        description="Operate a Tightwad cluster through its controller.",
        epilog="exit codes: 0 ok, 1 error or refused, 2 usage, 3 controller unreachable, "
        "4 token refused",
    )
    p.add_argument("--version", action="version", version=f"tightwadctl {__version__}")
    p.add_argument("--controller", metavar="HOST:PORT", help="default: controller in the config")
    p.add_argument(
        "--token",
        help=f"cluster token (default: ${TOKEN_ENV_VAR}, else cluster.token; visible in ps)",
    )
    p.add_argument(
        "-c", "--config", help=f"cluster file (default: ${CONFIG_ENV_VAR}, {DEFAULT_CONFIG_PATH})"
    )
    for flag, env, what in zip(
        _TLS_FLAGS, TLS_ENV_VARS, ("CA", "client certificate", "client key"), strict=True
    ):
        p.add_argument(
            flag, metavar="PEM", help=f"mutual TLS: {what} (default: ${env}, cluster.tls)"
        )
    p.add_argument("--json", action="store_true", help="one JSON document for scripts")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="per call deadline")
    p.add_argument("--log-level", default="warning")
    _add_commands(p.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return p


# --- context ------------------------------------------------------------------------------


def _config(path: str | None, env: Mapping[str, str]) -> ClusterConfig | None:
    """The cluster file if one was named or exists; None when there is none at all."""
    if not path and not env.get(CONFIG_ENV_VAR) and not DEFAULT_CONFIG_PATH.is_file():
        return None
    return load_config(path, env=env)


def context_from_args(args: argparse.Namespace, env: Mapping[str, str]) -> CtlContext:
    return resolve_context(
        env,
        config=args.config,
        controller=args.controller,
        token=args.token,
        tls_files=(args.tls_ca, args.tls_cert, args.tls_key),
        timeout=args.timeout,
        json=args.json,
    )


def resolve_context(
    env: Mapping[str, str],
    *,
    config: str | None = None,
    controller: str | None = None,
    token: str | None = None,
    tls_files: tuple[str | None, str | None, str | None] = (None, None, None),
    timeout: float = 10.0,
    json: bool = False,
) -> CtlContext:
    """Where and how to connect: each setting from its flag (the keyword), else the
    environment, else the cluster file, else the default (the module docstring's order)."""
    cfg = _config(config, env)
    address = controller or (
        cfg.controller.dial_address if cfg else ControllerConfig().dial_address
    )
    token = token or env.get(TOKEN_ENV_VAR) or (cfg.cluster.token if cfg else None)
    if timeout <= 0:
        raise InvalidRequestError(f"--timeout must be > 0, got {timeout:g}")
    credentials = _credentials(tls_files, env, cfg)
    return CtlContext(address, token or None, timeout, json, cfg, credentials)


def _credentials(
    flags: tuple[str | None, str | None, str | None],
    env: Mapping[str, str],
    cfg: ClusterConfig | None,
) -> grpc.ChannelCredentials | None:
    """Mutual TLS from the flags, else the environment, else ``cluster.tls``; files read now."""
    for values, names in (
        (list(flags), _TLS_FLAGS),
        ([env.get(name) for name in TLS_ENV_VARS], TLS_ENV_VARS),
    ):
        if any(values):
            if not all(values):
                missing = next(n for n, v in zip(names, values, strict=True) if not v)
                raise ConfigError(missing, "give all three of " + ", ".join(names) + " or none")
            tls = TlsConfig(*(Path(v) for v in values if v))
            keys = (names[0], names[1], names[2])
            return channel_credentials(read_tls_files(tls, keys=keys))
    if cfg is not None and cfg.cluster.tls is not None:
        return channel_credentials(read_tls_files(cfg.cluster.tls, keys=CONFIG_KEYS))
    return None


# --- output -------------------------------------------------------------------------------


def emit(text: str) -> None:
    print(text, flush=True)


def emit_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, sort_keys=True), flush=True)


def emit_json_line(doc: Any) -> None:
    print(json.dumps(doc, sort_keys=True), flush=True)


def _error(text: str) -> None:
    print(f"tightwadctl: {text}", file=sys.stderr, flush=True)


# --- commands -----------------------------------------------------------------------------

ArgsCommand = Callable[[ControllerClient, CtlContext, argparse.Namespace], Awaitable[int]]
Command = Callable[[ControllerClient, CtlContext], Awaitable[int]]
"""An operation on a connected controller client, run by :func:`execute`."""


async def cmd_status(c: ControllerClient, ctx: CtlContext, args: argparse.Namespace) -> int:
    return await show_status(c, ctx)


async def show_status(c: ControllerClient, ctx: CtlContext) -> int:
    """The controller, its nodes and deployments, as text or one JSON document."""
    s = await c.status()
    if ctx.json:
        emit_json(render.status_dict(s, ctx.address))
    else:
        emit(render.status_text(s, ctx.address, time.time()))
    return EXIT_OK


async def cmd_nodes(c: ControllerClient, ctx: CtlContext, args: argparse.Namespace) -> int:
    nodes = await c.nodes()
    if ctx.json:
        emit_json([render.node_dict(n) for n in nodes])
    else:
        emit(render.nodes_table(nodes, time.time()))
    return EXIT_OK


async def cmd_gpus(c: ControllerClient, ctx: CtlContext, args: argparse.Namespace) -> int:
    nodes = await c.nodes()
    if ctx.json:
        emit_json(
            [render.device_dict(n.record.node_id, d) for n in nodes for d in n.record.devices]
        )
    else:
        emit(render.gpus_table(nodes))
    return EXIT_OK


async def cmd_models(c: ControllerClient, ctx: CtlContext, args: argparse.Namespace) -> int:
    nodes = await c.nodes()
    rows = render.model_rows(nodes, ctx.config.models if ctx.config else {})
    if ctx.json:
        emit_json([render.model_dict(r) for r in rows])
    else:
        emit(render.models_table(rows))
    return EXIT_OK


def spec_from_args(args: argparse.Namespace) -> DeploymentSpec:
    if args.ctx < 0:
        raise InvalidRequestError(f"--ctx must be >= 0, got {args.ctx}")
    mode = getattr(args, "mode", "engine")
    return DeploymentSpec(
        model=args.model,
        ctx_size=args.ctx,
        kv_type=args.kv,
        constraints=Constraints(
            pin_device_ids=frozenset(DeviceId(d) for d in args.pin),
            exclude_device_ids=frozenset(DeviceId(d) for d in args.exclude),
            exclude_node_ids=frozenset(NodeId(n) for n in args.exclude_node),
            coordinator=NodeId(args.coordinator) if args.coordinator else None,
        ),
        serve_mode=ServeMode.LLAMA_SERVER if mode == "llama-server" else ServeMode.ENGINE,
    )


async def cmd_plan(c: ControllerClient, ctx: CtlContext, args: argparse.Namespace) -> int:
    placement = await c.plan(spec_from_args(args))
    if ctx.json:
        emit_json(render.placement_dict(placement))
    else:
        emit(render.placement_text(placement))
    return EXIT_OK if placement.fits else EXIT_ERROR


def _show_deployment(ctx: CtlContext, dep: Deployment, verb: str) -> None:
    if ctx.json:
        emit_json(render.deployment_dict(dep))
        return
    emit(f"{verb} {dep.deployment_id}: {dep.spec.model} {dep.state.value.upper()} {dep.message}")
    if dep.placement is not None and dep.placement.fits:
        emit(render.placement_text(dep.placement))


async def _wait(c: ControllerClient, ctx: CtlContext, dep: Deployment, limit: float) -> int:
    """Follow the deployment's events until it serves, fails or stops (or ``limit`` s pass)."""
    progress = (lambda s: print(s, file=sys.stderr, flush=True)) if ctx.json else emit
    current = dep
    try:
        async with asyncio.timeout(limit):
            async for event in c.events(0, follow=True):
                if event.deployment_id != dep.deployment_id:
                    continue
                progress(render.event_line(event))
                current = await _find(c, dep.deployment_id)
                if current.state in _TERMINAL:
                    break
    except TimeoutError:
        current = await _find(c, dep.deployment_id)
        _show_deployment(ctx, current, "still")
        _error(f"{dep.deployment_id} is {current.state.value.upper()} after {limit:g} s")
        return EXIT_ERROR
    _show_deployment(ctx, current, "deployment")
    return EXIT_OK if current.state is DeploymentState.SERVING else EXIT_ERROR


async def _find(c: ControllerClient, deployment_id: str) -> Deployment:
    found = next((d for d in await c.deployments() if d.deployment_id == deployment_id), None)
    if found is None:
        raise NotFoundError(f"no deployment {deployment_id!r}")
    return found


async def cmd_deploy(c: ControllerClient, ctx: CtlContext, args: argparse.Namespace) -> int:
    return await deploy(
        c, ctx, spec_from_args(args), wait=args.wait, wait_timeout=args.wait_timeout
    )


async def deploy(
    c: ControllerClient,
    ctx: CtlContext,
    spec: DeploymentSpec,
    *,
    wait: bool = False,
    wait_timeout: float = DEFAULT_WAIT_S,
) -> int:
    """Place and serve ``spec``; with ``wait``, follow it until it serves or fails."""
    dep = await c.deploy(spec)
    if wait and dep.state not in _TERMINAL:
        if not ctx.json:
            emit(f"deploying {dep.deployment_id}: {dep.spec.model} (waiting to serve)")
        return await _wait(c, ctx, dep, wait_timeout)
    _show_deployment(ctx, dep, "deployed")
    return EXIT_OK


def _running(deps: list[Deployment]) -> list[Deployment]:
    return [d for d in deps if d.desired_running]


async def resolve_deployment(c: ControllerClient, ref: str | None) -> Deployment:
    """An id, a unique id prefix or model name of a running deployment, or (None) the only
    running deployment."""
    deps = await c.deployments()
    exact = next((d for d in deps if d.deployment_id == ref), None)
    if exact is not None:
        return exact
    running = _running(deps)
    if ref is None:
        matches = running
    else:
        matches = [d for d in running if d.spec.model == ref or d.deployment_id.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    listing = ", ".join(f"{d.deployment_id} ({d.spec.model})" for d in running) or "none"
    what = "a running deployment" if ref is None else f"a running deployment {ref!r}"
    if not matches:
        raise NotFoundError(f"no {what.removeprefix('a ')}; running: {listing}")
    raise InvalidRequestError(f"{what} is ambiguous; name one of: {listing}")


async def cmd_swap(c: ControllerClient, ctx: CtlContext, args: argparse.Namespace) -> int:
    return await swap(c, ctx, args.deployment, spec_from_args(args))


async def swap(c: ControllerClient, ctx: CtlContext, ref: str | None, spec: DeploymentSpec) -> int:
    """Serve ``spec`` on the devices of deployment ``ref`` (see :func:`resolve_deployment`)."""
    old = await resolve_deployment(c, ref)
    dep = await c.swap(old.deployment_id, spec)
    _show_deployment(ctx, dep, "swapped")
    return EXIT_OK


async def cmd_stop(c: ControllerClient, ctx: CtlContext, args: argparse.Namespace) -> int:
    if args.all == (args.deployment is not None):
        raise InvalidRequestError("name a DEPLOYMENT (id or model) or give --all, not both")
    return await stop(c, ctx, None if args.all else args.deployment)


async def stop(c: ControllerClient, ctx: CtlContext, ref: str | None) -> int:
    """Stop deployment ``ref`` (see :func:`resolve_deployment`), or every running one when
    ``ref`` is None."""
    targets = _running(await c.deployments()) if ref is None else [await resolve_deployment(c, ref)]
    stopped = [await c.stop(d.deployment_id) for d in targets]
    if ctx.json:
        emit_json([render.deployment_dict(d) for d in stopped])
    elif not stopped:
        emit("no running deployments: nothing to stop")
    else:
        for d in stopped:
            emit(f"stopping {d.deployment_id}: {d.spec.model} {d.state.value.upper()}")
    return EXIT_OK


async def cmd_drain(c: ControllerClient, ctx: CtlContext, args: argparse.Namespace) -> int:
    node = await c.drain(args.node, drain=not args.undo)
    if ctx.json:
        emit_json(render.node_dict(node))
    else:
        verb = "undrained" if args.undo else "draining"
        emit(f"{verb} {node.record.node_id}: {node.state.value.upper()}")
    return EXIT_OK


async def cmd_events(c: ControllerClient, ctx: CtlContext, args: argparse.Namespace) -> int:
    if args.follow:
        async for event in c.events(args.since, follow=True):
            if ctx.json:
                emit_json_line(render.event_dict(event))
            else:
                emit(render.event_line(event))
        return EXIT_OK
    events = [e async for e in c.events(args.since)]
    if ctx.json:
        emit_json([render.event_dict(e) for e in events])
    else:
        emit(render.events_table(events))
    return EXIT_OK


async def cmd_logs(c: ControllerClient, ctx: CtlContext, args: argparse.Namespace) -> int:
    if args.tail < 0:
        raise InvalidRequestError(f"--tail must be >= 0, got {args.tail}")
    lines = c.logs(args.node, args.process, follow=args.follow, tail=args.tail)
    if ctx.json and not args.follow:
        emit_json([render.log_dict(args.node, args.process, ln) async for ln in lines])
        return EXIT_OK
    async for line in lines:
        if ctx.json:
            emit_json_line(render.log_dict(args.node, args.process, line))
        else:
            emit(render.log_line(line))
    return EXIT_OK


COMMANDS: dict[str, ArgsCommand] = {
    "status": cmd_status,
    "nodes": cmd_nodes,
    "gpus": cmd_gpus,
    "models": cmd_models,
    "plan": cmd_plan,
    "deploy": cmd_deploy,
    "swap": cmd_swap,
    "stop": cmd_stop,
    "drain": cmd_drain,
    "events": cmd_events,
    "logs": cmd_logs,
}


# --- entry point --------------------------------------------------------------------------


def unreachable_message(address: str, reason: str = "") -> str:
    why = f": {reason}" if reason else ""
    return (
        f"cannot reach the controller at {address}{why} (is tightwad-controller running? "
        "--controller / controller.port in the config)"
    )


def token_message(service: str) -> str:
    return (
        f"{service} refused the token (UNAUTHENTICATED): set --token or {TOKEN_ENV_VAR} "
        "to cluster.token"
    )


def execute(
    make_context: Callable[[], CtlContext],
    command: Callable[[ControllerClient, CtlContext], Awaitable[int]],
) -> int:
    """Resolve the context, run ``command`` on a connected client and return its exit code;
    errors are printed (never a token) and mapped to the exit codes of the module docstring."""
    try:
        ctx = make_context()
        return asyncio.run(_with_client(ctx, command))
    except ControllerUnreachable as exc:
        _error(unreachable_message(exc.address, exc.reason))
        return EXIT_UNREACHABLE
    except TokenRefused as exc:
        _error(token_message(exc.service))
        return EXIT_TOKEN
    except TightwadError as exc:
        _error(exc.message)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


async def _with_client(
    ctx: CtlContext, command: Callable[[ControllerClient, CtlContext], Awaitable[int]]
) -> int:
    async with ctx.client() as client:
        return await command(client, ctx)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":
        return run_bench([*args.bench_args, *extra])
    if args.command == "certs":
        from tightwad.cli.certs import certs_main

        return certs_main([*args.certs_args, *extra])
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not structlog.is_configured():  # under `tightwad`, the umbrella already did
        configure_logging(args.log_level)
    run = COMMANDS[args.command]
    return execute(lambda: context_from_args(args, os.environ), lambda c, ctx: run(c, ctx, args))


if __name__ == "__main__":
    sys.exit(main())
