"""The schema of the cluster file, as tables: each YAML key, its parser and its default.

``SECTIONS`` lists the top-level keys. Tables whose defaults depend on other
sections (gateway on proxy, models on engine, routes on model names) are functions.
"""

from __future__ import annotations

from collections.abc import Collection
from types import MappingProxyType

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
)
from tightwad.config._schema import (
    DEFAULT_MAX_DRAFT_TOKENS,
    DRAFT_MODES,
    AgentHost,
    AgentsConfig,
    ControllerConfig,
    Endpoint,
    EngineAddress,
    EngineConfig,
    GatewayConfig,
    GpuConfig,
    ModelRef,
    ProxyConfig,
    RouteTarget,
    TlsConfig,
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

_GPU = {
    "name": Field(string, REQUIRED),
    "vram_gb": Field(number(0), REQUIRED),
    "uuid": Field(string),
}
_WORKER_GPU = {**_GPU, "rpc_port": Field(port, REQUIRED)}

COORDINATOR = {
    "host": Field(host, "0.0.0.0"),
    "port": Field(port, 8080),
    "backend": Field(choice(GPU_BACKENDS), "cuda"),
    "gpus": Field(list_of(section(_GPU, GpuConfig)), ()),
    "extra_args": Field(str_list, ()),
    "env": Field(env_map, MappingProxyType({})),
}
WORKER = {
    "host": Field(host, REQUIRED),
    "name": Field(string),
    "gpus": Field(list_of(section(_WORKER_GPU, GpuConfig)), ()),
    "ssh_user": Field(string),
    "model_dir": Field(string),
    "rpc_bind": Field(host),
}
ENDPOINT = {
    "url": Field(http_url, REQUIRED),
    "model_name": Field(string, REQUIRED),
    "backend": Field(choice(HTTP_BACKEND_NAMES), "llamacpp"),
}
_endpoint = section(ENDPOINT, Endpoint)
PROXY = {
    "host": Field(host, "0.0.0.0"),
    "port": Field(port, 8088),
    "max_draft_tokens": Field(integer(1, 256), 8),
    "fallback_on_draft_failure": Field(_always_true, True),
    "draft": Field(_endpoint, REQUIRED),
    "target": Field(_endpoint, REQUIRED),
    "drafters": Field(list_of(_endpoint), ()),
    "auth_token": Field(string),
}
BINARIES = {
    "coordinator": Field(string, "llama-server"),
    "rpc_server": Field(string, "rpc-server"),
}
TLS = {
    "ca_file": Field(local_path, REQUIRED),
    "cert_file": Field(local_path, REQUIRED),
    "key_file": Field(local_path, REQUIRED),
}
CLUSTER = {
    "name": Field(string, "tightwad"),
    "token": Field(string),
    "private_network": Field(network),
    "private_interface": Field(string),
    "allow_public_bind": Field(boolean, False),
    "tls": Field(section(TLS, TlsConfig)),
    "drain_timeout_s": Field(number(positive=True), 30.0),
}
CONTROLLER = {
    "host": Field(host, "127.0.0.1"),
    "port": Field(port, 50051),
    "address": Field(_host_port),
    "state_path": Field(local_path, ControllerConfig().state_path),
    "heartbeat_interval_s": Field(number(positive=True), 2.0),
    "heartbeat_timeout_s": Field(number(positive=True), 10.0),
    "reconcile_interval_s": Field(number(positive=True), 5.0),
}
AGENT_HOST = {
    "name": Field(string, REQUIRED),
    "address": Field(host, REQUIRED),
    "port": Field(port),
    "model_dirs": Field(path_list),
    "binaries_dir": Field(local_path),
}
AGENTS = {
    "host": Field(host, "127.0.0.1"),
    "port": Field(port, 50061),
    "model_dirs": Field(path_list, AgentsConfig().model_dirs),
    "binaries_dir": Field(local_path),
    "hosts": Field(list_of(section(AGENT_HOST, AgentHost)), ()),
}
_engine = EngineConfig()
ENGINE = {
    "threads": Field(integer(1)),
    "ctx_size": Field(integer(1), 8192),
    "batch_size": Field(integer(1), 512),
    "max_sessions": Field(integer(1), 4),
    "n_gpu_layers": Field(gpu_layers, _engine.n_gpu_layers),
    "batch_steps": Field(boolean, _engine.batch_steps),
    "open_wait_s": Field(number(positive=True), _engine.open_wait_s),
    "prefill_chunk": Field(integer(1), _engine.prefill_chunk),
}


def gateway_table(proxy: ProxyConfig | None) -> dict[str, Field]:
    """Gateway keys; host, port and api_key default to the seed proxy's when there is one."""
    base = GatewayConfig()
    return {
        "host": Field(host, proxy.host if proxy else base.host),
        "port": Field(port, proxy.port if proxy else base.port),
        "api_key": Field(string, proxy.auth_token if proxy else None),
        "max_body_bytes": Field(size, base.max_body_bytes),
        "max_tokens_cap": Field(integer(1), base.max_tokens_cap),
        "max_concurrency": Field(integer(1), base.max_concurrency),
        "queue_size": Field(integer(0), base.queue_size),
        "request_timeout_s": Field(number(positive=True), base.request_timeout_s),
        "body_timeout_s": Field(number(positive=True), base.body_timeout_s),
        "metrics_allow": Field(network_list, base.metrics_allow),
        "max_choices": Field(integer(1, 128), base.max_choices),
    }


def model_table(engine: EngineConfig) -> dict[str, Field]:
    """Model keys; ``ctx_size`` defaults to ``engine.ctx_size``."""
    return {
        "path": Field(string, REQUIRED),
        "ctx_size": Field(integer(1), engine.ctx_size),
        "predict": Field(integer(-1), 4096),
        "flash_attn": Field(_flash_attn, "on"),
        "default": Field(boolean, False),
    }


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
    return {
        "name": Field(string, REQUIRED),
        "target": Field(ref, REQUIRED),
        "draft": Field(choice({m.value: m for m in DRAFT_MODES})),
        "draft_model": Field(ref),
        "drafters": Field(list_of(ref), ()),
        "max_draft_tokens": Field(integer(1, 256), DEFAULT_MAX_DRAFT_TOKENS),
        "fallback_on_draft_failure": Field(_always_true, True),
        "max_concurrency": Field(integer(1)),
        "queue_size": Field(integer(0)),
        "pipeline": Field(boolean),
        "adaptive": Field(boolean),
        "ngram_max_n": Field(integer(1, 64)),
        "copy_min_match": Field(integer(1, 256)),
        "draft_timeout_s": Field(number(positive=True)),
        "target_timeout_s": Field(number(positive=True)),
        "drafter_cooldown_s": Field(number(0)),
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
