"""The cluster file: one YAML schema read by every component (agent, controller, gateway, CLI).

Public surface::

    load_config(path=None, *, env=None) -> ClusterConfig   # -c PATH, $TIGHTWAD_CONFIG, ./configs
    config_from_mapping(data, *, env=None, source=None) -> ClusterConfig
    default_config() -> ClusterConfig                        # single host, all on loopback
    resolve_config_path(path=None, *, env=None) -> Path
    check_main(argv) -> int                                  # `tightwad config check [FILE]`

Every problem is a :class:`tightwad.errors.ConfigError` whose ``str()`` is
``KEY.PATH (line N): reason`` (``key_path``, ``line``, ``reason``, ``file`` attributes).
The seed's sections (``proxy``, ``coordinator``, ``workers``, ``models``, ``binaries``) load
unchanged; Tightwad's (``cluster``, ``controller``, ``agents``, ``gateway``, ``engine``,
``routes``) are optional. ``configs/tightwad.example.yaml`` documents every key.
"""

from tightwad.config._check import check_main, summarize
from tightwad.config._loader import (
    CONFIG_ENV_VAR,
    DEFAULT_CONFIG_PATH,
    config_from_mapping,
    default_config,
    load_config,
    resolve_config_path,
)
from tightwad.config._schema import (
    DEFAULT_MAX_DRAFT_TOKENS,
    DRAFT_MODES,
    HTTP_BACKENDS,
    AgentHost,
    AgentsConfig,
    AgentSettings,
    BinariesConfig,
    ClusterConfig,
    ClusterSettings,
    ConfigWarning,
    ControllerConfig,
    CoordinatorConfig,
    DraftMode,
    Endpoint,
    EngineAddress,
    EngineConfig,
    GatewayConfig,
    GpuConfig,
    HttpBackend,
    HttpUrl,
    IPNetwork,
    ModelConfig,
    ModelRef,
    ProxyConfig,
    Route,
    RouteTarget,
    TlsConfig,
    WorkerConfig,
)
from tightwad.errors import ConfigError

__all__ = [
    "CONFIG_ENV_VAR",
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_MAX_DRAFT_TOKENS",
    "DRAFT_MODES",
    "HTTP_BACKENDS",
    "AgentHost",
    "AgentSettings",
    "AgentsConfig",
    "BinariesConfig",
    "ClusterConfig",
    "ClusterSettings",
    "ConfigError",
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
    "check_main",
    "config_from_mapping",
    "default_config",
    "load_config",
    "resolve_config_path",
    "summarize",
]
