"""``tightwad config check [FILE]``: validate a cluster file and print a one-screen summary.

Exit 0 with the summary (and any warnings) on stdout, or exit 1 with exactly one line
``FILE: KEY.PATH (line N): reason`` on stderr. Without FILE the usual resolution applies
(``TIGHTWAD_CONFIG``, then ``configs/cluster.yaml``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping

from tightwad.config._loader import load_config, resolve_config_path
from tightwad.config._schema import (
    ClusterConfig,
    Endpoint,
    EngineAddress,
    GpuConfig,
    ModelRef,
    Route,
    RouteTarget,
)
from tightwad.errors import ConfigError

__all__ = ["check_main", "summarize"]


def check_main(argv: list[str], *, env: Mapping[str, str] | None = None) -> int:
    """Entry point of ``tightwad config check``; ``argv`` is what follows ``check``."""
    parser = argparse.ArgumentParser(
        prog="tightwad config check",
        description="Validate a Tightwad cluster file and summarize it.",
    )
    parser.add_argument(
        "file",
        nargs="?",
        help="cluster file (default: $TIGHTWAD_CONFIG, then configs/cluster.yaml)",
    )
    args = parser.parse_args(argv)
    try:
        config = load_config(resolve_config_path(args.file, env=env), env=env)
    except ConfigError as exc:
        where = exc.file or args.file or "<config>"
        print(f"{where}: {exc}", file=sys.stderr)
        return 1
    print("\n".join(summarize(config)))
    return 0


def summarize(config: ClusterConfig) -> list[str]:
    """The human summary, one string per line."""
    lines = [f"{config.source or '<mapping>'}: OK (cluster {config.cluster.name!r})"]
    lines += _models(config) + _pool(config) + _routes(config) + _services(config)
    if config.warnings:
        lines.append(f"warnings ({len(config.warnings)}):")
        lines += [f"  {w}" for w in config.warnings]
    return lines


def _models(config: ClusterConfig) -> list[str]:
    out = [f"models ({len(config.models)}):"]
    for model in config.models.values():
        mark = " (default)" if model.default else ""
        out.append(f"  {model.name}{mark}: {model.path} ctx {model.ctx_size}")
    return out


def _gpu(gpu: GpuConfig) -> str:
    port = f" rpc :{gpu.rpc_port}" if gpu.rpc_port is not None else ""
    return f"{gpu.name} {gpu.vram_gb:g} GB{port}"


def _pool(config: ClusterConfig) -> list[str]:
    out: list[str] = []
    coordinator = config.coordinator
    if coordinator is not None:
        gpus = ", ".join(_gpu(g) for g in coordinator.gpus) or "no GPUs"
        out.append(
            f"coordinator: {coordinator.host}:{coordinator.port} ({coordinator.backend}): {gpus}"
        )
    out.append(f"workers ({len(config.workers)}):")
    for worker in config.workers:
        gpus = ", ".join(_gpu(g) for g in worker.gpus) or "no GPUs"
        out.append(f"  {worker.name or worker.host} ({worker.bind_address}): {gpus}")
    count = len(config.all_gpus)
    out.append(f"GPUs: {count}, total VRAM {config.total_vram_gb:g} GB")
    return out


def _target(target: RouteTarget) -> str:
    if isinstance(target, ModelRef):
        return f"model {target.name}"
    if isinstance(target, EngineAddress):
        return f"engine grpc://{target}"
    assert isinstance(target, Endpoint)
    return f"{target.backend} {target.model_name} at {target.url}"


def _route(route: Route) -> str:
    draft: str = route.draft
    if route.drafters:
        draft += " from " + ", ".join(_target(d) for d in route.drafters)
    if route.draft != "none":
        draft += f", k <= {route.max_draft_tokens}"
    return f"  {route.name} -> {_target(route.target)} [draft: {draft}]"


def _routes(config: ClusterConfig) -> list[str]:
    routes = config.effective_routes()
    derived = "" if config.routes else ", derived from proxy/models"
    return [f"routes ({len(routes)}{derived}):", *(_route(r) for r in routes)]


def _services(config: ClusterConfig) -> list[str]:
    out: list[str] = []
    proxy = config.proxy
    if proxy is not None:
        out.append(
            f"proxy: {proxy.host}:{proxy.port} draft {_target(proxy.draft)} -> "
            f"target {_target(proxy.target)}"
        )
    gateway = config.gateway
    auth = "api key set" if gateway.api_key else "no api key"
    out.append(f"gateway: {gateway.host}:{gateway.port} ({auth})")
    out.append(
        f"controller: {config.controller.host}:{config.controller.port} "
        f"state {config.controller.state_path}"
    )
    token = "shared token set" if config.cluster.token else "no shared token"
    out.append(f"cluster auth: {token}, allow_public_bind={config.cluster.allow_public_bind}")
    return out
