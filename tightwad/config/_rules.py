"""Cross-section rules of a cluster file, and the warnings for risky but legal settings.

Rules: one default model, unique route and agent names, one rpc port per (host, port),
rpc-servers on a private address unless ``cluster.allow_public_bind``, heartbeat timeout above
the interval, every HTTP backend URL allowed by ``upstreams``. Warnings: services listening
beyond loopback without authentication.
"""

from __future__ import annotations

import ipaddress

from tightwad.config._document import Document, join
from tightwad.config._schema import (
    ClusterConfig,
    ConfigWarning,
    ControllerConfig,
    Endpoint,
)
from tightwad.errors import ConfigError

__all__ = ["check", "warnings_for"]

# --- cross-section rules -------------------------------------------------------------------


def check(doc: Document, config: ClusterConfig) -> None:
    _check_one_default(doc, config)
    _check_unique(doc, "routes", [r.name for r in config.routes], "name", "route")
    _check_unique(doc, "agents.hosts", [h.name for h in config.agents.hosts], "name", "agent")
    _check_rpc_ports(doc, config)
    _check_rpc_binds(doc, config)
    _check_controller(doc, config.controller)
    _check_engine(doc, config)
    _check_upstream_urls(doc, config)
    cluster = config.cluster
    if cluster.private_network is not None and cluster.private_interface is not None:
        raise doc.error(
            "cluster.private_interface",
            "set cluster.private_network or private_interface, not both",
        )


def _check_upstream_urls(doc: Document, config: ClusterConfig) -> None:
    """Every HTTP backend URL (proxy servers, HTTP route targets and drafters) passes the
    ``upstreams`` policy; host names are checked again on each connection."""
    endpoints: list[tuple[str, object]] = []
    if config.proxy is not None:
        p = config.proxy
        endpoints += [("proxy.draft", p.draft), ("proxy.target", p.target)]
        endpoints += [(join("proxy.drafters", i), d) for i, d in enumerate(p.drafters)]
    for i, route in enumerate(config.routes):
        path = join("routes", i)
        endpoints.append((join(path, "target"), route.target))
        named_first = doc.line(join(path, "draft_model")) is not None
        for j, d in enumerate(route.drafters):
            if named_first and j == 0:
                endpoints.append((join(path, "draft_model"), d))
            else:
                endpoints.append((join(join(path, "drafters"), j - named_first), d))
    for path, ep in endpoints:
        if not isinstance(ep, Endpoint):
            continue
        key = join(path, "url")
        try:
            config.upstreams.check_url(str(ep.url), key=key)
        except ConfigError as exc:
            raise doc.error(key, exc.reason) from None


def _check_one_default(doc: Document, config: ClusterConfig) -> None:
    first: str | None = None
    for name, model in config.models.items():
        if not model.default:
            continue
        if first is not None:
            raise doc.error(
                f"models.{name}.default",
                f"only one model can be the default; models.{first} already is",
            )
        first = name


def _check_unique(doc: Document, path: str, names: list[str], key: str, what: str) -> None:
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in seen:
            raise doc.error(
                f"{path}[{index}].{key}",
                f"duplicate {what} name {name!r} (also {path}[{seen[name]}])",
            )
        seen[name] = index


def _check_rpc_ports(doc: Document, config: ClusterConfig) -> None:
    used: dict[tuple[str, int], str] = {}
    for w, worker in enumerate(config.workers):
        for g, gpu in enumerate(worker.gpus):
            here = f"workers[{w}].gpus[{g}]"
            assert gpu.rpc_port is not None  # required by the worker GPU table
            first = used.setdefault((worker.host.lower(), gpu.rpc_port), here)
            if first != here:
                raise doc.error(
                    f"{here}.rpc_port",
                    f"rpc port {gpu.rpc_port} on host {worker.host} is already used by {first}",
                )


def _check_rpc_binds(doc: Document, config: ClusterConfig) -> None:
    cluster = config.cluster
    for w, worker in enumerate(config.workers):
        key = f"workers[{w}].{'rpc_bind' if worker.rpc_bind else 'host'}"
        address = worker.bind_address
        exposed = _exposure(address)
        if exposed and not cluster.allow_public_bind:
            raise doc.error(
                key,
                f"rpc-server would listen on {address} ({exposed}); llama.cpp RPC has no "
                "authentication: use a private address, or set cluster.allow_public_bind: true",
            )
        ip = _ip(address)
        net = cluster.private_network
        if net is not None and ip is not None and not _is_wildcard(address) and ip not in net:
            raise doc.error(key, f"{address} is outside cluster.private_network {net}")


def _check_controller(doc: Document, controller: ControllerConfig) -> None:
    if controller.heartbeat_timeout_s <= controller.heartbeat_interval_s:
        raise doc.error(
            "controller.heartbeat_timeout_s",
            f"must be greater than heartbeat_interval_s ({controller.heartbeat_interval_s:g})",
            line_of="controller.heartbeat_timeout_s"
            if doc.line("controller.heartbeat_timeout_s")
            else "controller",
        )


def _check_engine(doc: Document, config: ClusterConfig) -> None:
    """A prefill chunk is decoded in one batch: it must fit in ``batch_size``."""
    engine = config.engine
    if engine.prefill_chunk <= engine.batch_size:
        return
    written = doc.data.get("engine") if isinstance(doc.data, dict) else None
    if (
        not isinstance(written, dict)
        or written.get("batch_size") is None
        or (written.get("prefill_chunk") is not None)
    ):
        raise doc.error(
            "engine.prefill_chunk",
            f"must not be larger than engine.batch_size ({engine.batch_size}): a prefill "
            f"chunk is decoded in one batch, got {engine.prefill_chunk}",
        )
    raise doc.error(
        "engine.batch_size",
        f"must be at least engine.prefill_chunk ({engine.prefill_chunk}): a prefill chunk is "
        f"decoded in one batch, got {engine.batch_size}",
    )


# --- addresses -----------------------------------------------------------------------------


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return None


def _is_wildcard(address: str) -> bool:
    return address in ("0.0.0.0", "::", "[::]", "*")


def _is_loopback(address: str) -> bool:
    ip = _ip(address)
    return address == "localhost" or (ip is not None and ip.is_loopback)


def _exposure(address: str) -> str | None:
    """Why binding ``address`` reaches beyond the private network, or None."""
    if _is_wildcard(address):
        return "all interfaces"
    ip = _ip(address)
    if ip is not None and ip.is_global:
        return "a public address"
    return None


# --- warnings ------------------------------------------------------------------------------


def warnings_for(doc: Document, config: ClusterConfig, has_gateway: bool) -> list[ConfigWarning]:
    out: list[ConfigWarning] = []

    def warn(path: str, message: str) -> None:
        out.append(ConfigWarning(path, message, doc.line(path)))

    for w, worker in enumerate(config.workers):
        exposed = _exposure(worker.bind_address)
        if exposed:
            key = f"workers[{w}].{'rpc_bind' if worker.rpc_bind else 'host'}"
            warn(key, f"rpc-servers listen on {worker.bind_address} ({exposed}) with no auth")
    coordinator = config.coordinator
    exposed = _exposure(coordinator.host) if coordinator is not None else None
    if coordinator is not None and exposed:
        message = f"llama-server's HTTP API listens on {coordinator.host} ({exposed}) with no auth"
        warn("coordinator.host", message)
    gateway = config.gateway
    if gateway.api_key is None and not _is_loopback(gateway.host):
        key = "gateway.host" if has_gateway or config.proxy is None else "proxy.host"
        warn(key, f"the OpenAI endpoint listens on {gateway.host} without an api key")
    services = (config.controller.host, config.agents.host)
    if config.cluster.token is None and not all(_is_loopback(h) for h in services):
        warn("cluster.token", "gRPC services listen beyond loopback without a shared token")
    return out
