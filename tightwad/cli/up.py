"""``tightwad up``: the whole stack on one host, in the foreground.

Starts a local agent (the embedded llama.cpp engines on loopback gRPC) and the gateway over it,
prints the URL and a working ``curl``, and runs until SIGINT/SIGTERM. Defaults: the fast test
model (SmolLM2-135M, fetched into the cache) with n-gram drafting.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from tightwad.agent.server import AgentServer, AgentSettings
from tightwad.cli._foreground import run_until_signal
from tightwad.config import ClusterConfig, load_config
from tightwad.engine.engine_config import EngineConfig
from tightwad.errors import ConfigError, TightwadError
from tightwad.gateway.api import GatewaySettings
from tightwad.gateway.engine_client import EngineClient
from tightwad.gateway.loop import DRAFT_MODES, RouteSpec
from tightwad.gateway.server import GatewayServer, settings_from_config
from tightwad.logs import get_logger

__all__ = ["UpOptions", "add_up_arguments", "run_up"]

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
    max_draft_tokens: int = 64


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
    p.add_argument("--max-draft-tokens", type=int, default=64)
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


@dataclass
class Stack:
    agent: AgentServer
    gateway: GatewayServer

    async def stop(self) -> None:
        await self.gateway.stop()
        await self.agent.stop(grace=2.0)


async def start_stack(opts: UpOptions) -> Stack:
    """Start the agent and the gateway; returns once both serve (used by tests too)."""
    cfg: ClusterConfig | None = load_config(opts.config) if opts.config else None
    target_path = _resolve_target(opts)
    mode, draft_path = _draft_mode(opts)
    name = opts.model_name or (DEFAULT_MODEL if not opts.target else target_path.stem.lower())
    engines = [
        EngineConfig(
            model_id=name,
            path=target_path,
            ctx_size=opts.ctx_size,
            max_sessions=opts.max_sessions,
            threads=opts.threads,
        )
    ]
    if draft_path is not None:
        engines.append(
            EngineConfig(
                model_id=f"{name}-draft",
                path=draft_path,
                ctx_size=opts.ctx_size,
                max_sessions=opts.max_sessions,
                threads=opts.threads,
            )
        )
    agent = AgentServer(AgentSettings(listen="127.0.0.1:0", engines=tuple(engines)))
    await agent.start()
    try:
        target = EngineClient(agent.address, name)
        drafters = (EngineClient(agent.address, f"{name}-draft"),) if draft_path else ()
        spec = RouteSpec(
            name=name,
            target=target,
            draft_mode=mode,  # type: ignore[arg-type]
            drafters=drafters,
            pipeline=opts.pipeline,
            max_draft_tokens=opts.max_draft_tokens,
        )
        settings = (
            settings_from_config(cfg, api_key=opts.api_key)
            if cfg is not None
            else GatewaySettings(api_key=opts.api_key)
        )
        gateway = GatewayServer([spec], settings, host=opts.host, port=opts.port)
        await gateway.start()
    except BaseException:
        await agent.stop(grace=0.5)
        raise
    return Stack(agent=agent, gateway=gateway)


def _banner(stack: Stack, opts: UpOptions, name: str) -> str:
    url = stack.gateway.url
    auth = f' -H "Authorization: Bearer {"$TIGHTWAD_API_KEY"}"' if opts.api_key else ""
    return (
        f"Tightwad is serving {name!r} at {url}/v1 (drafting: {opts.draft})\n"
        f"Try:\n  curl -s {url}/v1/chat/completions -H 'Content-Type: application/json'{auth} "
        f'-d \'{{"model": "{name}", "messages": [{{"role": "user", '
        f'"content": "Say hello"}}], "max_tokens": 32}}\'\n'
        f"Status: {url}/v1/tightwad/status   Metrics: {url}/metrics   Stop: Ctrl-C"
    )


async def _serve(opts: UpOptions) -> int:
    stack = await start_stack(opts)
    name = next(iter(stack.gateway.backends))
    print(_banner(stack, opts, name), flush=True)
    return await run_until_signal(stack.stop, "tightwad")


def run_up(ns: argparse.Namespace) -> int:
    opts = _options(ns)
    try:
        import uvloop

        return uvloop.run(_serve(opts))
    except TightwadError as exc:
        print(f"tightwad up: {exc}", flush=True)
        return 1
