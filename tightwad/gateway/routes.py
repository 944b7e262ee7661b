"""From a cluster file to the gateway's routes: every target and drafter an Engine client.

The gateway speaks only the gRPC Engine service. A route's target or drafter is:

- ``grpc://host:port`` (:class:`~tightwad.config.EngineAddress`): a running Tightwad engine,
  dialled directly (the engine whose id is the route's name, else that agent's default one);
- a model of ``models`` (:class:`~tightwad.config.ModelRef`): loaded into an embedded
  :class:`~tightwad.engine.server.EngineServer` on loopback, with the ``engine`` section's defaults;
- an HTTP server (:class:`~tightwad.config.Endpoint`: llama-server, OpenAI-compatible):
  fronted by an adapter engine hosted by that same embedded engine server;
- an Ollama server, which shows no token ids: as a target, a
  :class:`~tightwad.gateway.passthrough.PassthroughBackend` (Ollama's own chat and completion
  APIs, its own token counts; in ``BuiltRoutes.backends``, not a RouteSpec); as a drafter, a
  :class:`~tightwad.gateway.text_draft.TextDrafter` (its text continuation, tokenized by the
  target, verified by the target: lossless).

With a controller (``controller.address`` or ``tightwad-gateway --controller``), the models it
places are not loaded here: :class:`ControllerRoutes` follows ``Controller.WatchRoutes`` and
adds, replaces and removes those routes live (see its docstring). Routes declared in the file
(``routes``, the seed's ``proxy``) stay static and win over a controller route of the same name.

Capabilities are honest: a target that cannot verify a draft in one pass (any HTTP server but
an OpenAI-compatible one that returns prompt logprobs) serves plainly (draft mode ``none``),
with a warning, whatever the file asked; the seed's ``proxy`` section (draft/target HTTP
servers) thus keeps working, as a plain route to its target.

With ``cluster.tls``, engines at ``grpc://`` addresses are dialled over mutual TLS with this
host's certificate (and the token). The embedded engine server listens on loopback only, inside this
process, and stays plain text + token: it never leaves the host.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from tightwad.config import ClusterConfig, Endpoint, EngineAddress, ModelRef, Route, RouteTarget
from tightwad.engine.adapters.base import AdapterConfig, HttpEngine
from tightwad.engine.adapters.ollama import OllamaClient
from tightwad.engine.engine_config import EngineConfig
from tightwad.engine.server import EngineServer
from tightwad.errors import ConfigError, NotFoundError
from tightwad.gateway.controller_routes import (
    ControllerRoutes,
    PublishedRoute,
    RouteTable,
    WatchSettings,
    _Counted,  # noqa: F401 - kept importable from here
)
from tightwad.gateway.engine_client import EngineClient
from tightwad.gateway.loop import RouteSpec
from tightwad.gateway.passthrough import OllamaUpstream, PassthroughBackend
from tightwad.gateway.text_draft import TextDrafter
from tightwad.logs import get_logger
from tightwad.tls import channel_credentials
from tightwad.url_policy import UrlPolicy

__all__ = [
    "BuiltRoutes",
    "ControllerRoutes",
    "PublishedRoute",
    "RouteTable",
    "WatchSettings",
    "build_routes",
]

log = get_logger("tightwad.gateway.routes")


@dataclass
class BuiltRoutes:
    """The route specs and what was started for them (the embedded engine server, if any);
    ``backends``: routes served by a text-only target (no Engine, no RouteSpec)."""

    specs: list[RouteSpec]
    agent: EngineServer | None = None
    clients: list[EngineClient] = field(default_factory=list)
    backends: dict[str, PassthroughBackend] = field(default_factory=dict)
    text_drafters: list[TextDrafter] = field(default_factory=list)

    async def close(self) -> None:
        for closable in [*self.backends.values(), *self.text_drafters]:
            with contextlib.suppress(Exception):
                await closable.close()
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
        self.agent: EngineServer | None = None
        self.passthrough: dict[str, PassthroughBackend] = {}
        self.text: dict[str, TextDrafter] = {}

    # -- pass 1: what must run locally ------------------------------------------------

    def local_id(self, ref: ModelRef, where: str) -> str:
        if ref.name not in self.cfg.models:
            raise ConfigError(where, f"no model {ref.name!r} in models")
        # With a controller, only routes the file declares get here (build_routes leaves the
        # per-model ones to ControllerRoutes, which dials the engine the controller placed).
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
                gpu_layers=e.n_gpu_layers,
                batch_size=e.batch_size,
                batch_steps=e.batch_steps,
                open_wait_s=e.open_wait_s,
                prefill_chunk=e.prefill_chunk,
            )
        return ref.name

    async def adapter_id(self, ep: Endpoint, where: str) -> str:
        key = f"{ep.backend}:{ep.url}:{ep.model_name}"
        if key not in self.adapters:
            self.adapters[key] = await _connect_adapter(
                ep, model_id=key, where=where, policy=self.cfg.upstreams
            )
        return key

    def _ollama(self, ep: Endpoint, where: str) -> OllamaClient:
        return OllamaClient(
            str(ep.url), ep.model_name, policy=self.cfg.upstreams, url_key=f"{where}.url"
        )

    async def passthrough_backend(self, route: Route, ep: Endpoint, where: str) -> None:
        backend = PassthroughBackend(route.name, OllamaUpstream(self._ollama(ep, where)))
        self.passthrough[route.name] = backend
        await backend.start()

    async def text_drafter(self, ep: Endpoint, where: str) -> TextDrafter:
        key = f"{ep.url}:{ep.model_name}"
        if key not in self.text:
            self.text[key] = TextDrafter(self._ollama(ep, where))
            await self.text[key].start()
        return self.text[key]

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
        credentials = channel_credentials(self.cfg.cluster.tls)
        named = EngineClient(address, route_name, token=token, credentials=credentials)
        try:
            await named.info()
        except NotFoundError:
            await named.close()
            named = self.remote.get((address, "")) or EngineClient(
                address, "", token=token, credentials=credentials
            )
            self.remote[(address, "")] = named
            return named
        self.remote[(address, route_name)] = named
        return named


async def _connect_adapter(
    ep: Endpoint, *, model_id: str, where: str, policy: UrlPolicy | None = None
) -> HttpEngine:
    cfg = AdapterConfig(
        model_id=model_id,
        url=str(ep.url),
        server_model=ep.model_name,
        url_policy=policy,
        url_key=f"{where}.url",
    )
    if ep.backend == "llamacpp":
        from tightwad.engine.adapters.llama_server import LlamaServerEngine

        return await LlamaServerEngine.connect(cfg)
    if ep.backend == "ollama":
        # Text only (no token ids): can_verify and can_draft are false, so a route with an
        # Ollama target serves plainly, and an Ollama drafter is refused at route start.
        from tightwad.engine.adapters.ollama import OllamaEngine

        return await OllamaEngine.connect(cfg)
    if ep.backend == "openai":
        from tightwad.engine.adapters.openai_compat import OpenAICompatEngine

        return await OpenAICompatEngine.connect(cfg)
    raise ConfigError(f"{where}.backend", f"unknown HTTP backend {ep.backend!r}")


async def _can_verify(b: _Builder, ref: RouteTarget, where: str) -> bool:
    """Whether a target can verify drafts in one pass, asked before anything is loaded."""
    if isinstance(ref, ModelRef):
        return True  # an embedded engine always can
    if isinstance(ref, Endpoint) and ref.backend == "ollama":
        return False  # text only: served by a PassthroughBackend
    if isinstance(ref, Endpoint):
        engine = b.adapters[await b.adapter_id(ref, where)]
        return engine.facts.can_verify
    client = await b._remote(ref, "")
    return (await client.info()).can_verify


def _declared_routes(cfg: ClusterConfig, controller: bool) -> tuple[Route, ...]:
    """The file's routes; with a controller, the models it places are its routes, not ours."""
    routes = cfg.effective_routes()
    if controller and not cfg.routes:
        return tuple(
            r for r in routes if not (isinstance(r.target, ModelRef) and r.name in cfg.models)
        )
    return routes


async def build_routes(cfg: ClusterConfig, *, controller: bool = False) -> BuiltRoutes:
    """Start what the effective routes need and return their specs. On failure, everything
    started so far is stopped again. With ``controller``, the per-model routes derived from
    ``models`` are left to the controller, and an empty set is fine."""
    routes = _declared_routes(cfg, controller)
    if not routes and controller:
        return BuiltRoutes(specs=[])
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
            elif _is_ollama(route.target):
                await b.passthrough_backend(route, route.target, f"{where}.target")
                continue
            elif isinstance(route.target, Endpoint):  # a plain route connects it here
                await b.adapter_id(route.target, f"{where}.target")
            for j, d in enumerate(drafters):
                if isinstance(d, ModelRef):
                    b.local_id(d, f"{where}.drafters.{j}")
                elif _is_ollama(d):
                    await b.text_drafter(d, f"{where}.drafters.{j}")
                elif isinstance(d, Endpoint):
                    await b.adapter_id(d, f"{where}.drafters.{j}")
            plan.append((route, mode, drafters))
        if b.local or b.adapters:
            b.agent = EngineServer(
                "127.0.0.1:0", token=cfg.cluster.token, engines=tuple(b.local.values())
            )
            for engine in b.adapters.values():
                b.agent.add(engine)
            await b.agent.start()
        specs = []
        for i, (route, mode, drafters) in enumerate(plan):
            where = f"routes.{i}" if cfg.routes else "proxy"
            target = await b.client(route.target, route, f"{where}.target")
            dclients = tuple(
                [
                    await b.client(d, route, f"{where}.drafters.{j}")
                    for j, d in enumerate(drafters)
                    if not _is_ollama(d)
                ]
            )
            text_drafters = tuple(
                [
                    await b.text_drafter(d, f"{where}.drafters.{j}")
                    for j, d in enumerate(drafters)
                    if _is_ollama(d)
                ]
            )
            specs.append(
                RouteSpec(
                    name=route.name,
                    target=target,
                    draft_mode=mode,  # type: ignore[arg-type]
                    drafters=dclients,
                    text_drafters=text_drafters,
                    max_draft_tokens=route.max_draft_tokens,
                    **route.tuning(),  # type: ignore[arg-type]
                )
            )
    except BaseException:
        for closable in [*b.passthrough.values(), *b.text.values(), *b.remote.values()]:
            with contextlib.suppress(Exception):
                await closable.close()
        if b.agent is not None:
            await b.agent.stop(grace=0.5)
        else:
            for engine in b.adapters.values():
                with contextlib.suppress(Exception):
                    await engine.close()
        raise
    return BuiltRoutes(
        specs=specs,
        agent=b.agent,
        clients=list(b.remote.values()),
        backends=b.passthrough,
        text_drafters=list(b.text.values()),
    )


def _is_ollama(ref: RouteTarget) -> bool:
    return isinstance(ref, Endpoint) and ref.backend == "ollama"
