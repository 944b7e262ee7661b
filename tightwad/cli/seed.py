"""The seed project's verbs on the ``tightwad`` umbrella, mapped onto this system: each
calls the ``tightwadctl`` operation it names (a function of :mod:`tightwad.cli.ctl`, not its
command line).

===========================  ================================================================
``tightwad status``          ``tightwadctl status``: controller, nodes, deployments
``tightwad start [-m M]``    ``tightwadctl deploy M`` (default: the config's default model)
``tightwad stop``            ``tightwadctl stop --all``
``tightwad swap MODEL``      ``tightwadctl swap MODEL`` (the running deployment)
``tightwad benchmark ...``   ``tightwadctl bench ...``
``tightwad proxy start``     the gateway over the config's routes, in the foreground (the
                             same assembly as ``tightwad-gateway -c FILE``)
``tightwad proxy status``    ``GET {gateway}/v1/tightwad/status``, summarised
``tightwad proxy stop``      explains how a foreground / systemd gateway is stopped
===========================  ================================================================

Every verb honours ``-c`` / ``$TIGHTWAD_CONFIG`` / ``configs/cluster.yaml`` the way
``tightwadctl`` does. When a verb needs a service that is not running, it says which one and
how to start it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from tightwad.cli import ctl
from tightwad.cli._foreground import run_until_signal
from tightwad.cli.bench import run_bench
from tightwad.cli.render import duration, table
from tightwad.config import (
    CONFIG_ENV_VAR,
    DEFAULT_CONFIG_PATH,
    ClusterConfig,
    ModelRef,
    load_config,
)
from tightwad.controller.domain import DeploymentSpec, ServeMode
from tightwad.errors import TightwadError
from tightwad.gateway.assemble import Overrides, Stack, assemble, listen_address

__all__ = ["SEED_COMMANDS", "add_seed_commands", "run_seed"]

SEED_COMMANDS = frozenset({"status", "start", "stop", "swap", "benchmark", "proxy"})
API_KEY_ENV_VAR = "TIGHTWAD_API_KEY"
_EXIT_ERROR = 1
_EXIT_UNREACHABLE = 3
_EXIT_AUTH = 4
_HTTP_TIMEOUT_S = 10.0


# --- parsers ------------------------------------------------------------------------------


def _config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c", "--config", help=f"cluster file (default: ${CONFIG_ENV_VAR}, {DEFAULT_CONFIG_PATH})"
    )


def add_seed_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The seed's verbs, added to the umbrella's subcommands."""
    status = sub.add_parser("status", help="cluster status (tightwadctl status)")
    _config_option(status)
    status.add_argument("--json", action="store_true")
    start = sub.add_parser("start", help="deploy a model (default: the config's default)")
    _config_option(start)
    start.add_argument("-m", "--model", help="model name from the config, or a GGUF path")
    start.add_argument("--mode", choices=["engine", "llama-server"], default="engine")
    start.add_argument("--wait", action="store_true", help="wait until it serves")
    stop = sub.add_parser("stop", help="stop every running deployment")
    _config_option(stop)
    swap = sub.add_parser("swap", help="serve another model on the running deployment")
    _config_option(swap)
    swap.add_argument("model")
    bench = sub.add_parser("benchmark", help="benchmarks (tightwadctl bench)")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    proxy = sub.add_parser("proxy", help="the speculative gateway of the config's proxy section")
    proxy_sub = proxy.add_subparsers(dest="proxy_command", required=True)
    for name, text in (
        ("start", "run the gateway in the foreground (Ctrl-C stops it)"),
        ("stop", "how to stop a running gateway"),
        ("status", "the running gateway's routes and totals"),
    ):
        p = proxy_sub.add_parser(name, help=text)
        _config_option(p)
        if name == "status":
            p.add_argument("--json", action="store_true")


# --- controller verbs ---------------------------------------------------------------------


def _config(path: str | None) -> ClusterConfig | None:
    if not path and not os.environ.get(CONFIG_ENV_VAR) and not DEFAULT_CONFIG_PATH.is_file():
        return None
    return load_config(path)


def _say(text: str) -> None:
    print(f"tightwad: {text}", file=sys.stderr, flush=True)


def _controller_hint(config_path: str | None) -> str:
    flag = f" -c {config_path}" if config_path else ""
    return (
        f"the controller is not running: start it with `tightwad-controller{flag}` (or "
        "`sudo systemctl start tightwad-controller`), and `tightwad-agent` on each host"
    )


def _run_ctl(args: argparse.Namespace, command: ctl.Command) -> int:
    """``command`` on a controller client resolved as ``tightwadctl`` resolves it (``-c``,
    the environment, the file); when the controller is down, say how to start it."""
    code = ctl.execute(
        lambda: ctl.resolve_context(
            os.environ, config=args.config, json=getattr(args, "json", False)
        ),
        command,
    )
    if code == _EXIT_UNREACHABLE:
        _say(_controller_hint(args.config))
    return code


def start_spec(args: argparse.Namespace) -> DeploymentSpec:
    """What ``tightwad start`` deploys: ``-m``, else the config's default model, with the
    model's own context size."""
    model = args.model
    if model is None:
        cfg = _config(args.config)
        default = cfg.default_model() if cfg else None
        if default is None:
            where = cfg.source if cfg and cfg.source else "the cluster file"
            raise TightwadError(
                f"no model to start: give -m MODEL, or add a `models:` section to {where} "
                "(the one with `default: true` is started)"
            )
        model = default.name
    mode = ServeMode.LLAMA_SERVER if args.mode == "llama-server" else ServeMode.ENGINE
    return DeploymentSpec(model=model, ctx_size=0, serve_mode=mode)


def _controller_verb(args: argparse.Namespace) -> ctl.Command:
    """The ``tightwadctl`` operation behind ``status``, ``start``, ``stop`` and ``swap``."""
    if args.command == "status":
        return lambda c, ctx: ctl.show_status(c, ctx)
    if args.command == "start":
        spec = start_spec(args)
        return lambda c, ctx: ctl.deploy(c, ctx, spec, wait=args.wait)
    if args.command == "stop":
        return lambda c, ctx: ctl.stop(c, ctx, None)
    spec = DeploymentSpec(model=args.model, ctx_size=0)
    return lambda c, ctx: ctl.swap(c, ctx, None, spec)


# --- proxy verbs --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GatewayAddress:
    url: str
    api_key: str | None


def gateway_address(cfg: ClusterConfig | None, env: Mapping[str, str]) -> GatewayAddress:
    """Where the proxy listens: the gateway's listen address (one rule, see
    :func:`tightwad.gateway.assemble.listen_address`)."""
    if cfg is None:
        host, port, key = "127.0.0.1", 8088, None
    else:
        (host, port), key = listen_address(cfg), cfg.gateway.api_key
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return GatewayAddress(f"http://{host}:{port}", env.get(API_KEY_ENV_VAR) or key)


def _start_hint(config_path: str | None) -> str:
    flag = f" -c {config_path}" if config_path else ""
    return (
        f"start it with `tightwad proxy start{flag}` (or `sudo systemctl start "
        "tightwad-gateway`; `tightwad up` runs a whole single-host stack)"
    )


async def _get_status(gw: GatewayAddress) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {gw.api_key}"} if gw.api_key else {}
    timeout = aiohttp.ClientTimeout(total=_HTTP_TIMEOUT_S)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"{gw.url}/v1/tightwad/status", headers=headers) as resp,
    ):
        body = await resp.json(content_type=None)
        if resp.status != 200:
            message = body.get("error", {}).get("message", "") if isinstance(body, dict) else ""
            raise _GatewayRefused(resp.status, message or resp.reason or "")
        if not isinstance(body, dict):
            raise TightwadError(f"the gateway at {gw.url} answered something that is not JSON")
        return body


class _GatewayRefused(TightwadError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def status_summary(body: Mapping[str, Any], url: str) -> str:
    """The gateway's status document as a header, a routes table and a totals line."""
    routes = body.get("routes", [])
    t = body.get("totals", {})
    rows = [
        [
            r.get("name", "?"),
            "READY" if r.get("ready") else "NOT READY",
            r.get("target", "-") or "-",
            f"{r.get('draft_mode', '-')}" + (f" ({r['draft']})" if r.get("draft") else ""),
            "yes" if r.get("can_verify") else "no",
            r.get("in_flight", 0),
            r.get("queued", 0),
        ]
        for r in routes
    ]
    headers = ["ROUTE", "STATE", "TARGET", "DRAFT", "VERIFIES", "IN FLIGHT", "QUEUED"]
    return "\n".join(
        [
            f"gateway at {url}: up {duration(float(body.get('uptime_s', 0)))}, "
            f"{len(routes)} route(s)",
            table(headers, rows) if rows else "no routes",
            f"requests {t.get('requests', 0)}, errors {t.get('errors', 0)}, "
            f"completion tokens {t.get('completion_tokens', 0)}, "
            f"acceptance {float(t.get('acceptance_rate', 0.0)):.0%} "
            f"({t.get('accepted', 0)}/{t.get('drafted', 0)} drafted)",
        ]
    )


async def proxy_status(args: argparse.Namespace) -> int:
    gw = gateway_address(_config(args.config), os.environ)
    try:
        body = await _get_status(gw)
    except aiohttp.ClientConnectionError:
        _say(f"no gateway answers at {gw.url}: {_start_hint(args.config)}")
        return _EXIT_UNREACHABLE
    except TimeoutError:
        _say(f"the gateway at {gw.url} did not answer within {_HTTP_TIMEOUT_S:g} s")
        return _EXIT_UNREACHABLE
    except _GatewayRefused as exc:
        if exc.status == 401:
            _say(
                f"the gateway at {gw.url} refused the API key: set {API_KEY_ENV_VAR} to "
                "gateway.api_key (or proxy.auth_token)"
            )
            return _EXIT_AUTH
        _say(f"the gateway at {gw.url} refused the status request ({exc.message})")
        return _EXIT_ERROR
    if args.json:
        print(json.dumps(body, indent=2, sort_keys=True), flush=True)
    else:
        print(status_summary(body, gw.url), flush=True)
    return 0


async def _answers(url: str) -> bool:
    timeout = aiohttp.ClientTimeout(total=3.0)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"{url}/healthz") as resp,
        ):
            return resp.status < 500
    except (aiohttp.ClientError, TimeoutError):
        return False


async def proxy_stop(args: argparse.Namespace) -> int:
    gw = gateway_address(_config(args.config), os.environ)
    if not await _answers(gw.url):
        print(f"no gateway is running at {gw.url}: nothing to stop", flush=True)
        return 0
    print(
        f"a gateway is running at {gw.url}. `tightwad proxy start` runs in the foreground: "
        "stop it with Ctrl-C in its terminal (or send it SIGTERM); under systemd: "
        "`sudo systemctl stop tightwad-gateway`.",
        flush=True,
    )
    return _EXIT_ERROR


# --- proxy start ---------------------------------------------------------------------------


def proxy_overrides(cfg: ClusterConfig, env: Mapping[str, str]) -> Overrides:
    """``tightwad proxy start``'s flags as overrides: only the API key from the environment.
    Routes to models of the file follow the controller (``tightwad start`` deploys them)."""
    needs_controller = any(
        isinstance(t, ModelRef) for r in cfg.effective_routes() for t in (r.target, *r.drafters)
    )
    return Overrides(
        api_key=env.get(API_KEY_ENV_VAR) or None,
        controller=cfg.controller.dial_address if needs_controller else None,
    )


async def build_proxy(cfg: ClusterConfig, env: Mapping[str, str]) -> Stack:
    """The stack ``tightwad proxy start`` serves (not started): the same as
    ``tightwad-gateway -c FILE`` (:func:`tightwad.gateway.assemble.assemble`)."""
    return await assemble(cfg, proxy_overrides(cfg, env))


async def _serve_proxy(cfg: ClusterConfig) -> int:
    stack = await build_proxy(cfg, os.environ)
    url = await stack.start()
    names = ", ".join(sorted(stack.gateway.backends)) or "the controller's routes"
    print(
        f"Tightwad proxy serving {names} at {url}/v1\nStatus: tightwad proxy status   Stop: Ctrl-C",
        flush=True,
    )
    return await run_until_signal(stack.stop, "tightwad proxy")


def proxy_start(args: argparse.Namespace) -> int:
    cfg = _config(args.config)
    if cfg is None:
        raise TightwadError(
            f"no cluster file: give -c PATH, set {CONFIG_ENV_VAR}, or create "
            f"{DEFAULT_CONFIG_PATH} (`tightwad up` serves a single host without one)"
        )
    return asyncio.run(_serve_proxy(cfg))


# --- dispatch -----------------------------------------------------------------------------


def _run_proxy(args: argparse.Namespace) -> int:
    if args.proxy_command == "start":
        return proxy_start(args)
    if args.proxy_command == "stop":
        return asyncio.run(proxy_stop(args))
    return asyncio.run(proxy_status(args))


def run_seed(args: argparse.Namespace) -> int:
    """Run one of :data:`SEED_COMMANDS`; errors are printed, the exit code returned."""
    try:
        if args.command == "proxy":
            return _run_proxy(args)
        if args.command == "benchmark":
            rest = list(args.bench_args)
            return run_bench(rest[1:] if rest[:1] == ["--"] else rest)
        return _run_ctl(args, _controller_verb(args))
    except TightwadError as exc:
        _say(exc.message)
        return _EXIT_ERROR
    except KeyboardInterrupt:
        return 130
