"""The schema of the cluster file, as tables: each YAML key and its parser.

Defaults are not written here: a table is built from its section's dataclass in ``_schema``
(:func:`tightwad.config._fields.table`), which holds each key's one default (REQUIRED where the
field has none). ``SECTIONS`` lists the top-level keys. Tables whose defaults depend on other
sections (gateway on proxy, models on engine, routes on model names) are functions.
"""

from __future__ import annotations

from collections.abc import Collection

from tightwad.config._document import Document, join
from tightwad.config._fields import (
    REQUIRED,
    Field,
    Parser,
    boolean,
    choice,
    describe,
    env_map,
    host,
    http_url,
    integer,
    list_of,
    local_path,
    network,
    network_list,
    number,
    path_list,
    port,
    read_section,
    section,
    size,
    str_list,
    string,
    suggest,
    table,
)
from tightwad.config._schema import (
    DRAFT_MODES,
    AgentHost,
    AgentsConfig,
    BinariesConfig,
    ClusterSettings,
    ControllerConfig,
    CoordinatorConfig,
    Endpoint,
    EngineAddress,
    EngineConfig,
    GatewayConfig,
    GpuConfig,
    ModelConfig,
    ModelRef,
    ProxyConfig,
    Route,
    RouteTarget,
    TlsConfig,
    WorkerConfig,
)
from tightwad.url_policy import UrlPolicy

__all__ = [
    "AGENTS",
    "BINARIES",
    "CLUSTER",
    "CONTROLLER",
    "COORDINATOR",
    "ENGINE",
    "PROXY",
    "SECTIONS",
    "SUPPORTED_VERSION",
    "WORKER",
    "gateway_table",
    "model_table",
    "route_table",
    "target_parser",
    "upstreams",
    "version",
]

SUPPORTED_VERSION = 1

#: coordinator.backend spellings -> canonical ggml backend
GPU_BACKENDS = {
    "cuda": "cuda",
    "hip": "hip",
    "rocm": "hip",
    "metal": "metal",
    "vulkan": "vulkan",
    "sycl": "sycl",
    "cpu": "cpu",
}
#: proxy.*.backend / route endpoint backend spellings -> canonical
HTTP_BACKEND_NAMES = {
    "llamacpp": "llamacpp",
    "llama-server": "llamacpp",
    "llama.cpp": "llamacpp",
    "ollama": "ollama",
    "openai": "openai",
}
FLASH_ATTN = {"on": "on", "off": "off", "auto": "auto"}


def _flash_attn(doc: Document, path: str, value: object) -> str:
    """Seed: ``true``/``false`` or ``auto``; also ``on``/``off``."""
    if isinstance(value, bool):
        return "on" if value else "off"
    parse: Parser[str] = choice(FLASH_ATTN)
    return parse(doc, path, value)


def gpu_layers(doc: Document, path: str, value: object) -> int | str:
    """``auto`` (as many layers as fit on this host's GPUs, planned at load) or an integer:
    that many layers off the CPU, ``-1`` all of them, ``0`` none."""
    if value == "auto":
        return "auto"
    if isinstance(value, str):
        raise doc.error(path, f"expected 'auto' or an integer >= -1, got {describe(value)}")
    parse: Parser[int] = integer(-1)
    return parse(doc, path, value)


def _always_true(doc: Document, path: str, value: object) -> bool:
    """``fallback_on_draft_failure``: the gateway always serves plainly when drafters fail."""
    if boolean(doc, path, value) is not True:
        raise doc.error(
            path,
            "only true is supported: a failed or slow drafter never fails a request, the "
            "route decodes plainly until the drafter is healthy again (remove the key or "
            "set it to true)",
        )
    return True


def version(doc: Document, path: str, value: object) -> int:
    number_ = integer()(doc, path, value)
    if number_ != SUPPORTED_VERSION:
        raise doc.error(path, f"unsupported version {number_} (this Tightwad reads version 1)")
    return number_


def _host_port(doc: Document, path: str, value: object) -> str:
    """``host:port`` (IPv6 as ``[::1]:50051``)."""
    text = string(doc, path, value)
    name, sep, digits = text.rpartition(":")
    if not sep or not name or not digits.isdigit():
        raise doc.error(path, f"expected host:port, got {text!r}")
    port(doc, path, int(digits))
    return text


# --- section tables (the schema) -----------------------------------------------------------
# A table names each YAML key's parser; its default is the dataclass field's (``_schema``),
# REQUIRED where the field has none.

_GPU = table(GpuConfig, {"name": string, "vram_gb": number(0), "uuid": string})
_WORKER_GPU = {**_GPU, "rpc_port": Field(port, REQUIRED)}  # required of a worker's GPU

COORDINATOR = table(
    CoordinatorConfig,
    {
        "host": host,
        "port": port,
        "backend": choice(GPU_BACKENDS),
        "gpus": list_of(section(_GPU, GpuConfig)),
        "extra_args": str_list,
        "env": env_map,
    },
)
WORKER = table(
    WorkerConfig,
    {
        "host": host,
        "name": string,
        "gpus": list_of(section(_WORKER_GPU, GpuConfig)),
        "ssh_user": string,
        "model_dir": string,
        "rpc_bind": host,
    },
)
ENDPOINT = table(
    Endpoint, {"url": http_url, "model_name": string, "backend": choice(HTTP_BACKEND_NAMES)}
)
_endpoint = section(ENDPOINT, Endpoint)
PROXY = table(
    ProxyConfig,
    {
        "host": host,
        "port": port,
        "max_draft_tokens": integer(1, 256),
        "fallback_on_draft_failure": _always_true,
        "draft": _endpoint,
        "target": _endpoint,
        "drafters": list_of(_endpoint),
        "auth_token": string,
    },
)
BINARIES = table(BinariesConfig, {"coordinator": string, "rpc_server": string})
TLS = table(TlsConfig, {"ca_file": local_path, "cert_file": local_path, "key_file": local_path})
CLUSTER = table(
    ClusterSettings,
    {
        "name": string,
        "token": string,
        "private_network": network,
        "private_interface": string,
        "allow_public_bind": boolean,
        "tls": section(TLS, TlsConfig),
        "drain_timeout_s": number(positive=True),
    },
)
CONTROLLER = table(
    ControllerConfig,
    {
        "host": host,
        "port": port,
        "address": _host_port,
        "state_path": local_path,
        "heartbeat_interval_s": number(positive=True),
        "heartbeat_timeout_s": number(positive=True),
        "reconcile_interval_s": number(positive=True),
    },
)
AGENT_HOST = table(
    AgentHost,
    {
        "name": string,
        "address": host,
        "port": port,
        "model_dirs": path_list,
        "binaries_dir": local_path,
    },
)
AGENTS = table(
    AgentsConfig,
    {
        "host": host,
        "port": port,
        "model_dirs": path_list,
        "binaries_dir": local_path,
        "hosts": list_of(section(AGENT_HOST, AgentHost)),
    },
)
ENGINE = table(
    EngineConfig,
    {
        "threads": integer(1),
        "ctx_size": integer(1),
        "batch_size": integer(1),
        "max_sessions": integer(1),
        "n_gpu_layers": gpu_layers,
        "batch_steps": boolean,
        "open_wait_s": number(positive=True),
        "prefill_chunk": integer(1),
    },
)


def gateway_table(proxy: ProxyConfig | None) -> dict[str, Field]:
    """Gateway keys; host, port and api_key default to the seed proxy's when there is one."""
    fields = table(
        GatewayConfig,
        {
            "host": host,
            "port": port,
            "api_key": string,
            "max_body_bytes": size,
            "max_tokens_cap": integer(1),
            "max_concurrency": integer(1),
            "queue_size": integer(0),
            "request_timeout_s": number(positive=True),
            "body_timeout_s": number(positive=True),
            "metrics_allow": network_list,
            "max_choices": integer(1, 128),
        },
    )
    if proxy is not None:
        fields["host"] = Field(host, proxy.host)
        fields["port"] = Field(port, proxy.port)
        fields["api_key"] = Field(string, proxy.auth_token)
    return fields


def model_table(engine: EngineConfig) -> dict[str, Field]:
    """Model keys (``name`` is the mapping's key); ``ctx_size`` defaults to ``engine.ctx_size``."""
    fields = table(
        ModelConfig,
        {
            "path": string,
            "ctx_size": integer(1),
            "predict": integer(-1),
            "flash_attn": _flash_attn,
            "default": boolean,
        },
    )
    fields["ctx_size"] = Field(integer(1), engine.ctx_size)
    return fields


_SCHEMES = {"http": "http", "https": "https"}
_UPSTREAMS = {
    "allowed_schemes": Field(list_of(choice(_SCHEMES)), ("http", "https")),
    "allow_private": Field(boolean, True),
    "allow_public": Field(boolean, True),
}


def upstreams(doc: Document, path: str, value: object) -> UrlPolicy:
    """The ``upstreams`` section: the URL policy of every HTTP backend."""
    fields = read_section(doc, path, value, _UPSTREAMS)
    if not fields["allowed_schemes"]:
        raise doc.error(join(path, "allowed_schemes"), "must allow at least one of http, https")
    if not fields["allow_private"] and not fields["allow_public"]:
        raise doc.error(
            join(path, "allow_public"),
            "cannot be false when allow_private is false too: no backend could be reached",
        )
    return UrlPolicy(
        schemes=frozenset(fields["allowed_schemes"]),
        allow_private=fields["allow_private"],
        allow_public=fields["allow_public"],
    )


def route_table(models: Collection[str]) -> dict[str, Field]:
    ref = target_parser(models)
    fields = table(
        Route,
        {
            "name": string,
            "target": ref,
            "draft": choice({m.value: m for m in DRAFT_MODES}),
            "drafters": list_of(ref),
            "max_draft_tokens": integer(1, 256),
            "fallback_on_draft_failure": _always_true,
            "max_concurrency": integer(1),
            "queue_size": integer(0),
            "pipeline": boolean,
            "adaptive": boolean,
            "ngram_max_n": integer(1, 64),
            "copy_min_match": integer(1, 256),
            "draft_timeout_s": number(positive=True),
            "target_timeout_s": number(positive=True),
            "drafter_cooldown_s": number(0),
        },
    )
    # Read, not Route fields: no ``draft`` means "model" with drafters, else "none" (see
    # _build), and ``draft_model`` is the first drafter.
    fields["draft"] = Field(fields["draft"].parse)
    return {
        **{k: fields[k] for k in ("name", "target", "draft")},
        "draft_model": Field(ref),
        **{k: v for k, v in fields.items() if k not in ("name", "target", "draft")},
    }


#: top-level keys, in the order they are read (later sections may depend on earlier ones)
SECTIONS = (
    "version",
    "cluster",
    "controller",
    "agents",
    "engine",
    "models",
    "proxy",
    "gateway",
    "routes",
    "coordinator",
    "workers",
    "binaries",
    "upstreams",
)


# --- references ----------------------------------------------------------------------------


def target_parser(models: Collection[str]) -> Parser[RouteTarget]:
    """A model name, ``grpc://host:port`` (a Tightwad engine), or an HTTP endpoint mapping."""

    def parse(doc: Document, path: str, value: object) -> RouteTarget:
        if isinstance(value, dict):
            return _endpoint(doc, path, value)
        text = string(doc, path, value)
        if text.startswith("grpc://"):
            return engine_address(doc, path, text)
        if "://" in text:
            raise doc.error(
                path,
                f"{text!r}: an HTTP server is written as a mapping {{url, model_name, backend}}, "
                "a Tightwad engine as grpc://host:port",
            )
        if text in models:
            return ModelRef(text)
        known = ", ".join(models) or "none defined"
        raise doc.error(
            path, f"unknown model {text!r}{suggest(text, tuple(models))} (models: {known})"
        )

    return parse


def engine_address(doc: Document, path: str, text: str) -> EngineAddress:
    address = _host_port(doc, path, text.removeprefix("grpc://"))
    name, _, digits = address.rpartition(":")
    return EngineAddress(name.strip("[]"), int(digits))
