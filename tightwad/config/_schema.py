"""The values of a cluster file: frozen dataclasses, one per section, defaults filled in.

Each key's default is written here once (the tables of ``_tables`` take theirs from these
fields). Nothing here parses or validates; ``_build`` (with ``_tables`` and ``_rules``) produces
these from a checked YAML document and guarantees their invariants (ports in 1..65535,
sizes >= 0, references that resolve, at most one default model, unique names). Code that
builds them by hand should go through :func:`tightwad.config.config_from_mapping` to get the
same guarantees.

Sections (YAML key -> class):

    cluster     -> ClusterSettings    name, shared gRPC token, private network, TLS
    controller  -> ControllerConfig   listen address, SQLite state, heartbeats
    agents      -> AgentsConfig       per-host agent defaults + AgentHost overrides
    gateway     -> GatewayConfig      OpenAI HTTP front: auth, limits, metrics allow-list
    engine      -> EngineConfig       defaults for embedded llama.cpp engines
    routes      -> Route              OpenAI model name -> target (+ drafters)
    upstreams   -> UrlPolicy          which HTTP backends may be reached (see below)
    proxy       -> ProxyConfig        seed: speculative proxy (draft/target HTTP servers)
    coordinator -> CoordinatorConfig  seed: host running llama-server over the RPC pool
    workers     -> WorkerConfig       seed: hosts running ggml-rpc-server, one per GPU
    models      -> ModelConfig        seed: GGUF files by name
    binaries    -> BinariesConfig     seed: llama-server / rpc-server executables

``upstreams`` (:class:`tightwad.url_policy.UrlPolicy`), applied to every HTTP backend URL
(``proxy.*``, HTTP route targets and drafters) when the file is loaded, when an adapter is
built, and on every address an adapter dials (DNS-rebinding safe):

    allowed_schemes  [http, https]  the URL schemes allowed (only http and https exist)
    allow_private    true           loopback, RFC 1918, link-local, CGNAT, ULA addresses
    allow_public     true           globally routable addresses (false: never leave the LAN)
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from tightwad.engine import engine_config
from tightwad.url_policy import UrlPolicy

__all__ = [
    "DEFAULT_MAX_DRAFT_TOKENS",
    "DRAFT_MODES",
    "HTTP_BACKENDS",
    "ROUTE_TUNING",
    "AgentHost",
    "AgentSettings",
    "AgentsConfig",
    "BinariesConfig",
    "ClusterConfig",
    "ClusterSettings",
    "ConfigWarning",
    "ControllerConfig",
    "CoordinatorConfig",
    "DraftMode",
    "Endpoint",
    "EngineAddress",
    "EngineConfig",
    "GatewayConfig",
    "GpuConfig",
    "HttpBackend",
    "HttpUrl",
    "IPNetwork",
    "ModelConfig",
    "ModelRef",
    "ProxyConfig",
    "Route",
    "RouteTarget",
    "TlsConfig",
    "WorkerConfig",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class DraftMode(enum.StrEnum):
    """What proposes a route's drafts (a ``str``: compares and serialises as its value)."""

    MODEL = "model"  # the route's drafters (draft models)
    NGRAM = "ngram"  # lookup in prompt + output so far
    PREDICTION = "prediction"  # the request's OpenAI ``prediction``
    HYBRID = "hybrid"  # prediction / n-gram when they match, drafters otherwise
    NONE = "none"  # plain decoding


DRAFT_MODES: tuple[DraftMode, ...] = tuple(DraftMode)
#: Route keys passed to the loop as they are (RouteSpec fields of the same name)
ROUTE_TUNING = (
    "pipeline",
    "adaptive",
    "ngram_max_n",
    "copy_min_match",
    "draft_timeout_s",
    "target_timeout_s",
    "drafter_cooldown_s",
)
#: the upper bound on one round's draft when neither the file nor a flag says otherwise
DEFAULT_MAX_DRAFT_TOKENS = 64
HttpBackend = Literal["llamacpp", "ollama", "openai"]
HTTP_BACKENDS: tuple[HttpBackend, ...] = ("llamacpp", "ollama", "openai")
FlashAttn = Literal["on", "off", "auto"]

_EMPTY: Mapping[str, str] = MappingProxyType({})
_ENGINE_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {f.name: f.default for f in fields(engine_config.EngineConfig)}
)
_STATE_PATH = Path("~/.local/state/tightwad/controller.sqlite").expanduser()
_MODEL_DIRS = (Path("~/models").expanduser(),)


@dataclass(frozen=True, slots=True)
class HttpUrl:
    """An ``http``/``https`` URL, checked; ``str()`` gives it back as written."""

    text: str
    scheme: Literal["http", "https"]
    host: str
    port: int

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class ConfigWarning:
    """Something legal but risky (e.g. an unauthenticated service on all interfaces)."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line is not None else ""
        return f"{self.path}{where}: {self.message}"


# --- references a route can point at -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A model of the ``models`` section, served by a Tightwad engine the controller places."""

    name: str


@dataclass(frozen=True, slots=True)
class EngineAddress:
    """A running Tightwad Engine (gRPC), written ``grpc://host:port`` in the file."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An HTTP inference server (seed's ``ServerEndpoint``).

    ``backend``: ``llamacpp`` (stock llama-server; ``llama-server`` is accepted as an alias),
    ``ollama`` or ``openai`` (any OpenAI-compatible API). HTTP servers cannot verify drafts in
    one pass, so as a target they serve plainly; as a drafter they propose tokens.
    """

    url: HttpUrl
    model_name: str
    backend: HttpBackend = "llamacpp"


RouteTarget = ModelRef | EngineAddress | Endpoint


# --- seed sections -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GpuConfig:
    """One GPU as declared by hand. ``rpc_port`` is set for worker GPUs only."""

    name: str
    vram_gb: float
    rpc_port: int | None = None
    uuid: str | None = None


@dataclass(frozen=True, slots=True)
class CoordinatorConfig:
    """The host that loads the model with the RPC devices plus its own GPUs."""

    host: str = "0.0.0.0"
    port: int = 8080
    backend: str = "cuda"
    gpus: tuple[GpuConfig, ...] = ()
    extra_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """A host lending its GPUs through one ``ggml-rpc-server`` per GPU."""

    host: str
    gpus: tuple[GpuConfig, ...] = ()
    name: str | None = None
    ssh_user: str | None = None
    model_dir: str | None = None
    rpc_bind: str | None = None

    @property
    def bind_address(self) -> str:
        """Where this worker's rpc-servers listen: ``rpc_bind``, else ``host``."""
        return self.rpc_bind or self.host

    @property
    def rpc_addresses(self) -> tuple[str, ...]:
        """``host:port`` of each rpc-server, in GPU order (llama.cpp's ``--rpc`` list)."""
        return tuple(f"{self.host}:{gpu.rpc_port}" for gpu in self.gpus)


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """A GGUF file. ``path`` is as seen from the coordinator host (may be a Windows path)."""

    name: str
    path: str
    ctx_size: int = 8192
    predict: int = 4096
    flash_attn: FlashAttn = "on"
    default: bool = False


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """Seed's speculative proxy. Without ``routes`` it becomes one route (effective_routes)."""

    draft: Endpoint
    target: Endpoint
    host: str = "0.0.0.0"
    port: int = 8088
    max_draft_tokens: int = 8  # the seed's own default, kept for seed files
    fallback_on_draft_failure: bool = True  # always true: a failed drafter never fails a request
    drafters: tuple[Endpoint, ...] = ()
    auth_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class BinariesConfig:
    """Executable names or paths (resolved on the host that runs them)."""

    coordinator: str = "llama-server"
    rpc_server: str = "rpc-server"


# --- Tightwad sections ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Optional mTLS for every gRPC service: CA bundle, this host's cert and key."""

    ca_file: Path
    cert_file: Path
    key_file: Path


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """Identity, shared auth and the private network of the cluster."""

    name: str = "tightwad"
    token: str | None = field(default=None, repr=False)
    private_network: IPNetwork | None = None
    private_interface: str | None = None
    allow_public_bind: bool = False
    tls: TlsConfig | None = None
    # SIGTERM/SIGINT: how long every component lets in-flight work finish before it exits.
    drain_timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    """The controller: single writer of cluster state."""

    host: str = "127.0.0.1"
    port: int = 50051
    address: str | None = None
    state_path: Path = _STATE_PATH
    heartbeat_interval_s: float = 2.0
    heartbeat_timeout_s: float = 10.0
    reconcile_interval_s: float = 5.0

    @property
    def dial_address(self) -> str:
        """``host:port`` clients dial: ``address``, else the listen address (wildcard->loopback)."""
        if self.address:
            return self.address
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class AgentHost:
    """One host's agent: how to reach it, and what it overrides from ``agents``' defaults."""

    name: str
    address: str
    port: int | None = None
    model_dirs: tuple[Path, ...] | None = None
    binaries_dir: Path | None = None


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """An agent's settings with host overrides applied (see AgentsConfig.resolve)."""

    name: str
    address: str
    host: str
    port: int
    model_dirs: tuple[Path, ...]
    binaries_dir: Path | None

    @property
    def dial_address(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass(frozen=True, slots=True)
class AgentsConfig:
    """Defaults for every agent (``host`` is the listen address) plus per-host entries."""

    host: str = "127.0.0.1"
    port: int = 50061
    model_dirs: tuple[Path, ...] = _MODEL_DIRS
    binaries_dir: Path | None = None
    hosts: tuple[AgentHost, ...] = ()

    def resolve(self, name: str) -> AgentSettings:
        """The settings of agent ``name``; a name not in ``hosts`` gets the defaults."""
        entry = next((h for h in self.hosts if h.name == name), None)
        if entry is None:
            entry = AgentHost(name=name, address="127.0.0.1")
        return AgentSettings(
            name=entry.name,
            address=entry.address,
            host=self.host,
            port=entry.port if entry.port is not None else self.port,
            model_dirs=entry.model_dirs if entry.model_dirs is not None else self.model_dirs,
            binaries_dir=entry.binaries_dir or self.binaries_dir,
        )


_LOOPBACK: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """The OpenAI-compatible HTTP front. Limits are per route unless a route overrides them."""

    host: str = "127.0.0.1"
    port: int = 8088
    api_key: str | None = field(default=None, repr=False)
    max_body_bytes: int = 8 * 1024 * 1024
    max_tokens_cap: int = 8192
    max_concurrency: int = 4
    queue_size: int = 64
    request_timeout_s: float = 600.0
    body_timeout_s: float = 30.0
    metrics_allow: tuple[IPNetwork, ...] = _LOOPBACK
    max_choices: int = 8  # the largest ``n`` (choices) one request may ask for


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Defaults for embedded llama.cpp engines. ``threads=None``: llama.cpp decides.

    ``n_gpu_layers``: ``"auto"`` (the default: as many layers as fit on the GPUs ggml sees on
    the host that loads the engine, planned by :func:`tightwad.engine.offload.plan_for_config`;
    no GPU, every layer on the CPU) or llama.cpp's number (``-1`` all, ``0`` none)."""

    threads: int | None = None
    ctx_size: int = 8192
    # Tokens one forward pass takes at most (llama.cpp's n_batch); with ``batch_steps`` it is
    # the step's token budget that the sessions' steps and prefill chunks share.
    batch_size: int = 512
    # Concurrent sessions per engine (as llama-server's slots: eight chat tabs all start at
    # once). The KV cache holds ``ctx_size * max_sessions`` cells, allocated at load: f16 K+V
    # is 2 * layers * kv_heads * head_dim * 2 bytes a cell (28 KiB for Qwen2.5-1.5B, 128 KiB
    # for Llama-3-8B: 1.75 / 8 GiB at 8 x 8192); lower either when the model does not fit.
    max_sessions: int = 8
    n_gpu_layers: int | Literal["auto"] = "auto"
    # The engine's own defaults (tightwad.engine.engine_config.EngineConfig, where they are
    # explained): one forward pass for all sessions, the wait of an Open for a free session,
    # and the prefill chunk (a multiple of which a cached prefix is reused up to).
    batch_steps: bool = _ENGINE_DEFAULTS["batch_steps"]
    open_wait_s: float = _ENGINE_DEFAULTS["open_wait_s"]
    prefill_chunk: int = _ENGINE_DEFAULTS["prefill_chunk"]


@dataclass(frozen=True, slots=True)
class Route:
    """An OpenAI model name and how it is served.

    ``drafters`` are tried fastest-healthy-first; ``draft`` picks the proposer: ``model`` (the
    drafters), ``ngram`` (lookup in prompt + output), ``prediction`` (the request's OpenAI
    ``prediction``), ``hybrid`` (prediction/n-gram when they match, drafters otherwise),
    ``none`` (plain decoding). ``max_concurrency``/``queue_size``: this route's own limits
    (None: the gateway's). ``fallback_on_draft_failure`` is always true (a failed drafter
    never fails a request; the file refuses false).
    """

    name: str
    target: RouteTarget
    draft: DraftMode = DraftMode.NONE
    drafters: tuple[RouteTarget, ...] = ()
    max_draft_tokens: int = DEFAULT_MAX_DRAFT_TOKENS
    fallback_on_draft_failure: bool = True
    max_concurrency: int | None = None
    queue_size: int | None = None
    # The loop's tuning (None: the loop's own default, tightwad.gateway.loop.RouteSpec).
    pipeline: bool | None = None
    adaptive: bool | None = None
    ngram_max_n: int | None = None
    copy_min_match: int | None = None
    draft_timeout_s: float | None = None
    target_timeout_s: float | None = None
    drafter_cooldown_s: float | None = None

    def tuning(self) -> dict[str, object]:
        """The loop settings this route sets (RouteSpec keyword arguments)."""
        names = ROUTE_TUNING
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    @property
    def draft_model(self) -> RouteTarget | None:
        """The first drafter, or None."""
        return self.drafters[0] if self.drafters else None


# --- the whole file ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """A validated cluster file. ``source``/``warnings`` do not take part in equality."""

    version: int = 1
    cluster: ClusterSettings = ClusterSettings()
    controller: ControllerConfig = ControllerConfig()
    agents: AgentsConfig = AgentsConfig()
    gateway: GatewayConfig = GatewayConfig()
    engine: EngineConfig = EngineConfig()
    routes: tuple[Route, ...] = ()
    proxy: ProxyConfig | None = None
    coordinator: CoordinatorConfig | None = None
    workers: tuple[WorkerConfig, ...] = ()
    models: Mapping[str, ModelConfig] = field(default_factory=lambda: MappingProxyType({}))
    binaries: BinariesConfig = BinariesConfig()
    upstreams: UrlPolicy = field(default_factory=UrlPolicy)
    source: str | None = field(default=None, compare=False)
    warnings: tuple[ConfigWarning, ...] = field(default=(), compare=False)

    @property
    def all_gpus(self) -> tuple[GpuConfig, ...]:
        """Coordinator GPUs first, then each worker's, in file order (the split order)."""
        local = self.coordinator.gpus if self.coordinator else ()
        return local + tuple(g for w in self.workers for g in w.gpus)

    @property
    def total_vram_gb(self) -> float:
        return sum(g.vram_gb for g in self.all_gpus)

    @property
    def rpc_addresses(self) -> tuple[str, ...]:
        return tuple(a for w in self.workers for a in w.rpc_addresses)

    def tensor_split(self) -> tuple[float, ...]:
        """Proportions of declared VRAM per GPU (all_gpus order); empty when there is none."""
        total = self.total_vram_gb
        if total <= 0:
            return ()
        return tuple(round(g.vram_gb / total, 2) for g in self.all_gpus)

    def default_model(self) -> ModelConfig | None:
        """The model marked ``default: true``, else the first one, else None."""
        marked = [m for m in self.models.values() if m.default]
        return marked[0] if marked else next(iter(self.models.values()), None)

    def effective_routes(self) -> tuple[Route, ...]:
        """What the gateway serves.

        ``routes`` when the file has them. Otherwise the seed's ``proxy`` becomes one route
        named after ``proxy.target.model_name`` (target = proxy.target, drafters = proxy.draft
        then proxy.drafters, draft = ``model``), followed by one plain route per model of
        ``models`` whose name is not taken.
        """
        if self.routes:
            return self.routes
        derived: list[Route] = []
        if self.proxy is not None:
            derived.append(_proxy_route(self.proxy))
        taken = {r.name for r in derived}
        derived.extend(
            Route(name=name, target=ModelRef(name)) for name in self.models if name not in taken
        )
        return tuple(derived)

    def route(self, name: str) -> Route | None:
        """The effective route called ``name``, or None."""
        return next((r for r in self.effective_routes() if r.name == name), None)


def _proxy_route(proxy: ProxyConfig) -> Route:
    return Route(
        name=proxy.target.model_name,
        target=proxy.target,
        draft=DraftMode.MODEL,
        drafters=(proxy.draft, *proxy.drafters),
        max_draft_tokens=proxy.max_draft_tokens,
        fallback_on_draft_failure=proxy.fallback_on_draft_failure,
    )
