"""``tightwad up``: the whole stack on one host, in the foreground.

Turns its flags into a cluster file (one model, one route) and serves it the way
``tightwad-gateway`` does (:func:`tightwad.gateway.assemble.assemble`): the embedded llama.cpp
engines on loopback gRPC and the gateway over them;
prints the URL, a working ``curl`` and the dashboard's URL (:func:`banner`), and runs until
SIGINT/SIGTERM. Defaults: the fast test model (SmolLM2-135M, fetched into the cache) with
n-gram drafting.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, replace
from pathlib import Path

from tightwad.cli._foreground import run_until_signal
from tightwad.config import (
    DEFAULT_MAX_DRAFT_TOKENS,
    DRAFT_MODES,
    ClusterConfig,
    config_from_mapping,
    load_config,
)
from tightwad.errors import ConfigError, TightwadError
from tightwad.gateway.assemble import Overrides, Stack, assemble
from tightwad.logs import get_logger

__all__ = ["UpOptions", "add_up_arguments", "banner", "run_up"]

log = get_logger("tightwad.up")
DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True, slots=True)
class UpOptions:
    target: str | None = None
    draft: str = "ngram"
    model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8088
    threads: int = 0
    ctx_size: int = 4096
    max_sessions: int = 8
    api_key: str | None = None
    config: str | None = None
    pipeline: bool = False
    max_draft_tokens: int = DEFAULT_MAX_DRAFT_TOKENS


def add_up_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", metavar="GGUF", help=f"target model (default: {DEFAULT_MODEL})")
    p.add_argument(
        "--draft",
        default="ngram",
        metavar="GGUF|" + "|".join(m for m in DRAFT_MODES if m != "model"),
        help="a draft GGUF (model drafting) or a draft-free mode (default: ngram)",
    )
    p.add_argument("--model-name", help="the OpenAI model name to serve (default: file stem)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8088)
    p.add_argument("--threads", type=int, default=0, help="CPU threads per engine (0 = all)")
    p.add_argument("--ctx-size", type=int, default=4096, help="context per request")
    p.add_argument("--max-sessions", type=int, default=8, help="concurrent requests per model")
    p.add_argument("--max-draft-tokens", type=int, default=DEFAULT_MAX_DRAFT_TOKENS)
    p.add_argument("--pipeline", action="store_true", help="draft round n+1 during verify n")
    p.add_argument("--api-key", default=os.environ.get("TIGHTWAD_API_KEY") or None)
    p.add_argument("-c", "--config", help="cluster YAML (gateway settings are taken from it)")


def _options(ns: argparse.Namespace) -> UpOptions:
    return UpOptions(
        target=ns.target,
        draft=ns.draft,
        model_name=ns.model_name,
        host=ns.host,
        port=ns.port,
        threads=ns.threads,
        ctx_size=ns.ctx_size,
        max_sessions=ns.max_sessions,
        api_key=ns.api_key,
        config=ns.config,
        pipeline=ns.pipeline,
        max_draft_tokens=ns.max_draft_tokens,
    )


def _resolve_target(opts: UpOptions) -> Path:
    if opts.target:
        path = Path(opts.target).expanduser()
        if not path.is_file():
            raise ConfigError("--target", f"no such GGUF file: {path}")
        return path
    from tightwad.fetch_models import ensure_model

    return ensure_model(DEFAULT_MODEL)


def _draft_mode(opts: UpOptions) -> tuple[str, Path | None]:
    if opts.draft in DRAFT_MODES and opts.draft != "model":
        return opts.draft, None
    path = Path(opts.draft).expanduser()
    if not path.is_file():
        raise ConfigError(
            "--draft",
            f"{opts.draft!r} is neither a GGUF file nor one of ngram, prediction, hybrid, none",
        )
    return "model", path


def up_config(opts: UpOptions, target: Path, draft: Path | None, mode: str) -> ClusterConfig:
    """``tightwad up``'s flags as a cluster file: one model (+ its draft model), one route;
    the gateway section (and cluster settings) of ``-c FILE`` when given."""
    name = opts.model_name or (DEFAULT_MODEL if not opts.target else target.stem.lower())
    engine: dict[str, object] = {"ctx_size": opts.ctx_size, "max_sessions": opts.max_sessions}
    if opts.threads:
        engine["threads"] = opts.threads
    models: dict[str, object] = {name: {"path": str(target), "ctx_size": opts.ctx_size}}
    route: dict[str, object] = {
        "name": name,
        "target": name,
        "draft": mode,
        "max_draft_tokens": opts.max_draft_tokens,
        "pipeline": opts.pipeline,
    }
    if draft is not None:
        models[f"{name}-draft"] = {"path": str(draft), "ctx_size": opts.ctx_size}
        route["draft_model"] = f"{name}-draft"
    cfg = config_from_mapping(
        {"engine": engine, "models": models, "routes": [route]}, source="tightwad up"
    )
    if opts.config:
        file = load_config(opts.config)
        cfg = replace(cfg, gateway=file.gateway, cluster=file.cluster)
    return cfg


async def start_stack(opts: UpOptions) -> Stack:
    """Start the embedded engines and the gateway; returns once both serve."""
    target_path = _resolve_target(opts)
    mode, draft_path = _draft_mode(opts)
    cfg = up_config(opts, target_path, draft_path, mode)
    stack = await assemble(cfg, Overrides(host=opts.host, port=opts.port, api_key=opts.api_key))
    await stack.start()
    return stack


def banner(url: str, name: str, draft: str, *, api_key: bool) -> str:
    """What ``tightwad up`` prints once it serves: the API's URL, a working ``curl``, the
    dashboard's URL (it asks for the API key when one is set), status and metrics."""
    auth = f' -H "Authorization: Bearer {"$TIGHTWAD_API_KEY"}"' if api_key else ""
    asks = " (it asks for the API key once per browser session)" if api_key else ""
    return (
        f"Tightwad is serving {name!r} at {url}/v1 (drafting: {draft})\n"
        f"Try:\n  curl -s {url}/v1/chat/completions -H 'Content-Type: application/json'{auth} "
        f'-d \'{{"model": "{name}", "messages": [{{"role": "user", '
        f'"content": "Say hello"}}], "max_tokens": 32}}\'\n'
        f"Dashboard: {url}/ in a browser{asks}\n"
        f"Status: {url}/v1/tightwad/status   Metrics: {url}/metrics   Stop: Ctrl-C"
    )


def _banner(stack: Stack, opts: UpOptions, name: str) -> str:
    return banner(stack.gateway.url, name, opts.draft, api_key=opts.api_key is not None)


async def _offload_lines(stack: Stack) -> str:
    """Where each embedded model went: its offload plan's summary (``30/30 layers on Vulkan0
    (llvmpipe), 103.4 MiB; KV 48.0 MiB``), else llama.cpp's layers per device."""
    agent = stack.built.agent
    lines = []
    for engine in agent.registry.all() if agent is not None else ():
        summary = getattr(engine.cfg, "offload_summary", None)
        if summary is None:  # an HTTP backend: its server placed the model
            continue
        if not summary:
            devices = (await engine.info()).devices
            summary = " + ".join(f"{n} layers on {d}" for d, n in devices) or "no layers placed"
        lines.append(f"  {engine.cfg.model_id}: {summary}")
    return "\n".join(["Placement:", *lines]) if lines else ""


async def _serve(opts: UpOptions) -> int:
    stack = await start_stack(opts)
    name = next(iter(stack.gateway.backends))
    print(_banner(stack, opts, name), flush=True)
    if placement := await _offload_lines(stack):
        print(placement, flush=True)
    return await run_until_signal(stack.stop, "tightwad")


def run_up(ns: argparse.Namespace) -> int:
    opts = _options(ns)
    try:
        import uvloop

        return uvloop.run(_serve(opts))
    except TightwadError as exc:
        print(f"tightwad up: {exc}", flush=True)
        return 1
