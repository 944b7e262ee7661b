"""From a cluster file to the gateway's routes: every target and drafter an Engine client.

The gateway speaks only the gRPC Engine service. A route's target or drafter is:

- ``grpc://host:port`` (:class:`~tightwad.config.EngineAddress`): a running Tightwad engine,
  dialled directly (the engine whose id is the route's name, else that agent's default one);
- a model of ``models`` (:class:`~tightwad.config.ModelRef`): loaded into an embedded agent
  on loopback, with the ``engine`` section's defaults;
- an HTTP server (:class:`~tightwad.config.Endpoint`: llama-server, Ollama, OpenAI-compatible):
  fronted by an adapter engine hosted by that same embedded agent.

Capabilities are honest: a target that cannot verify a draft in one pass (any HTTP server but
an OpenAI-compatible one that returns prompt logprobs) serves plainly (draft mode ``none``),
with a warning, whatever the file asked; the seed's ``proxy`` section (draft/target HTTP
servers) thus keeps working, as a plain route to its target.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from tightwad.agent.adapters._base import AdapterConfig, HttpEngine
from tightwad.agent.engine.core import EngineConfig
from tightwad.agent.server import AgentServer, AgentSettings
from tightwad.config import ClusterConfig, Endpoint, EngineAddress, ModelRef, Route, RouteTarget
from tightwad.errors import ConfigError, NotFoundError
from tightwad.gateway.engine_client import EngineClient
from tightwad.gateway.loop import RouteSpec
from tightwad.logs import get_logger

__all__ = ["BuiltRoutes", "build_routes"]

log = get_logger("tightwad.gateway.routes")


@dataclass
class BuiltRoutes:
    """The route specs and what was started for them (the embedded agent, if any)."""

    specs: list[RouteSpec]
    agent: AgentServer | None = None
    clients: list[EngineClient] = field(default_factory=list)

    async def close(self) -> None:
        for c in self.clients:
            with contextlib.suppress(Exception):
                await c.close()
        if self.agent is not None:
            await self.agent.stop(grace=1.0)
            self.agent = None


class _Builder:
    def __init__(self, cfg: ClusterConfig) -> None:
        self.cfg = cfg
        self.local: dict[str, EngineConfig] = {}
        self.adapters: dict[str, HttpEngine] = {}
        self.remote: dict[tuple[str, str], EngineClient] = {}
        self.agent: AgentServer | None = None

    # -- pass 1: what must run locally ------------------------------------------------

    def local_id(self, ref: ModelRef, where: str) -> str:
        if ref.name not in self.cfg.models:
            raise ConfigError(where, f"no model {ref.name!r} in models")
        # TODO(controller): when a controller is configured and publishes this route
        # (Controller.WatchRoutes), dial the engine it placed instead of loading it here.
        if ref.name not in self.local:
            m = self.cfg.models[ref.name]
            path = Path(m.path).expanduser()
            if not path.is_file():
                raise ConfigError(
                    f"models.{ref.name}.path",
                    f"no GGUF file at {path} on this host (the gateway loads models it is "
                    "routed to when no controller places them)",
                )
            e = self.cfg.engine
            self.local[ref.name] = EngineConfig(
                model_id=ref.name,
                path=path,
                ctx_size=min(m.ctx_size, e.ctx_size),
                max_sessions=e.max_sessions,
                threads=e.threads or 0,
                gpu_layers=max(0, e.n_gpu_layers),
                batch_size=e.batch_size,
            )
        return ref.name

    async def adapter_id(self, ep: Endpoint, where: str) -> str:
        key = f"{ep.backend}:{ep.url}:{ep.model_name}"
        if key not in self.adapters:
            self.adapters[key] = await _connect_adapter(ep, model_id=key, where=where)
        return key

    # -- pass 2: clients ----------------------------------------------------------------

    async def client(self, ref: RouteTarget, route: Route, where: str) -> EngineClient:
        if isinstance(ref, EngineAddress):
            return await self._remote(ref, route.name)
        assert self.agent is not None
        if isinstance(ref, ModelRef):
            model = self.local_id(ref, where)
        else:
            model = await self.adapter_id(ref, where)
        key = (self.agent.address, model)
        if key not in self.remote:
            self.remote[key] = EngineClient(self.agent.address, model, token=self.cfg.cluster.token)
        return self.remote[key]

    async def _remote(self, addr: EngineAddress, route_name: str) -> EngineClient:
        address = f"{addr.host}:{addr.port}"
        token = self.cfg.cluster.token
        if (address, route_name) in self.remote:
            return self.remote[(address, route_name)]
        named = EngineClient(address, route_name, token=token)
        try:
            await named.info()
        except NotFoundError:
            await named.close()
            named = self.remote.get((address, "")) or EngineClient(address, "", token=token)
            self.remote[(address, "")] = named
            return named
        self.remote[(address, route_name)] = named
        return named


async def _connect_adapter(ep: Endpoint, *, model_id: str, where: str) -> HttpEngine:
    cfg = AdapterConfig(model_id=model_id, url=str(ep.url), server_model=ep.model_name)
    if ep.backend == "llamacpp":
        from tightwad.agent.adapters.llama_server import LlamaServerEngine

        return await LlamaServerEngine.connect(cfg)
    if ep.backend == "ollama":
        # TODO(adapters): the Ollama adapter (/api/generate raw mode, plain target only).
        raise ConfigError(
            f"{where}.backend",
            "Ollama endpoints are not supported yet; front the model with llama-server or an "
            "OpenAI-compatible server",
        )
    if ep.backend == "openai":
        from tightwad.agent.adapters.openai_compat import OpenAICompatEngine

        return await OpenAICompatEngine.connect(cfg)
    raise ConfigError(f"{where}.backend", f"unknown HTTP backend {ep.backend!r}")


async def _can_verify(b: _Builder, ref: RouteTarget, where: str) -> bool:
    """Whether a target can verify drafts in one pass, asked before anything is loaded."""
    if isinstance(ref, ModelRef):
        return True  # an embedded engine always can
    if isinstance(ref, Endpoint):
        engine = b.adapters[await b.adapter_id(ref, where)]
        return engine.facts.can_verify
    client = await b._remote(ref, "")
    return (await client.info()).can_verify


async def build_routes(cfg: ClusterConfig) -> BuiltRoutes:
    """Start what the effective routes need and return their specs. On failure, everything
    started so far is stopped again."""
    routes = cfg.effective_routes()
    if not routes:
        raise ConfigError(
            "routes", "nothing to serve: add routes, a proxy section or models to the file"
        )
    b = _Builder(cfg)
    try:
        plan: list[tuple[Route, str, tuple[RouteTarget, ...]]] = []
        for i, route in enumerate(routes):
            where = f"routes.{i}" if cfg.routes else "proxy"
            mode: str = route.draft
            drafters = route.drafters if mode in ("model", "hybrid") else ()
            if mode != "none" and not await _can_verify(b, route.target, f"{where}.target"):
                log.warning(
                    "route_serves_plainly",
                    route=route.name,
                    asked=mode,
                    reason="the target cannot verify drafts in one pass",
                )
                mode, drafters = "none", ()
            if isinstance(route.target, ModelRef):
                b.local_id(route.target, f"{where}.target")
            for j, d in enumerate(drafters):
                if isinstance(d, ModelRef):
                    b.local_id(d, f"{where}.drafters.{j}")
                elif isinstance(d, Endpoint):
                    await b.adapter_id(d, f"{where}.drafters.{j}")
            plan.append((route, mode, drafters))
        if b.local or b.adapters:
            b.agent = AgentServer(
                AgentSettings(
                    listen="127.0.0.1:0",
                    token=cfg.cluster.token,
                    engines=tuple(b.local.values()),
                    node_service=False,
                )
            )
            for engine in b.adapters.values():
                b.agent.registry.add(engine)
            await b.agent.start()
        specs = []
        for i, (route, mode, drafters) in enumerate(plan):
            where = f"routes.{i}" if cfg.routes else "proxy"
            target = await b.client(route.target, route, f"{where}.target")
            dclients = tuple(
                [await b.client(d, route, f"{where}.drafters.{j}") for j, d in enumerate(drafters)]
            )
            specs.append(
                RouteSpec(
                    name=route.name,
                    target=target,
                    draft_mode=mode,  # type: ignore[arg-type]
                    drafters=dclients,
                    max_draft_tokens=route.max_draft_tokens,
                )
            )
    except BaseException:
        for c in b.remote.values():
            with contextlib.suppress(Exception):
                await c.close()
        if b.agent is not None:
            await b.agent.stop(grace=0.5)
        else:
            for engine in b.adapters.values():
                with contextlib.suppress(Exception):
                    await engine.close()
        raise
    return BuiltRoutes(specs=specs, agent=b.agent, clients=list(b.remote.values()))
