"""Where the gateway and agents may connect over HTTP: the upstream URL policy.

HTTP-fronted backends (llama-server, Ollama, OpenAI-compatible APIs) are named by URL in the
cluster file. :class:`UrlPolicy` decides which of those URLs, and which *addresses*, may be
used:

- a scheme allow-list (``http``, ``https`` by default);
- ``allow_private`` / ``allow_public``: whether addresses outside / on the public internet may be
  reached. "Private" is every address that is not globally routable (loopback, RFC 1918,
  link-local including ``169.254.169.254``, CGNAT, IPv6 ULA); unspecified (``0.0.0.0``, ``::``)
  and multicast addresses are always refused. The default allows both (a homelab names its own
  hosts); a cluster that must never leave the LAN sets ``allow_public=False``, one that fronts a
  cloud API only sets ``allow_private=False``.

The cluster file's ``upstreams`` section builds the policy (``allowed_schemes``,
``allow_private``, ``allow_public``; the defaults allow what a homelab needs) and every HTTP
adapter (llama-server, Ollama, OpenAI-compatible) applies it to its base URL.

The check is made twice: statically on the URL (:meth:`UrlPolicy.check_url`, a
:class:`~tightwad.errors.ConfigError` at load time), and again at **connect time** on every
address actually dialled (:meth:`UrlPolicy.connector`): a resolver that vets each DNS answer
and a socket factory that vets each address before ``connect()``. A name that resolved to an
allowed address once and to a forbidden one later (DNS rebinding), a redirect to a forbidden
literal address, or a redirect to another scheme never reaches the forbidden host. The
connector does not cache DNS answers, so each new connection is checked on a fresh answer.

Refusals at connect time raise :class:`BlockedAddressError` (an ``OSError``), which aiohttp
wraps in its ``ClientConnectorError`` like any unreachable host; callers translate that to
:class:`~tightwad.errors.UnavailableError` at their edge.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from tightwad.errors import ConfigError

__all__ = ["BlockedAddressError", "PolicyResolver", "UrlPolicy", "classify_address"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class BlockedAddressError(OSError):
    """A connection refused by the URL policy (the address is never dialled).

    ``errno`` is ``EACCES`` and ``strerror`` the reason, so aiohttp's connector errors show it.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(errno.EACCES, reason)


def _ip(value: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(value.split("%", 1)[0].strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def classify_address(address: IPAddress) -> str:
    """``"public"``, ``"private"`` or ``"forbidden"`` (unspecified, multicast)."""
    if address.is_unspecified or address.is_multicast:
        return "forbidden"
    return "public" if address.is_global else "private"


@dataclass(frozen=True, slots=True)
class UrlPolicy:
    """Which upstream URLs and addresses may be used (see the module docstring)."""

    schemes: frozenset[str] = frozenset({"http", "https"})
    allow_private: bool = True
    allow_public: bool = True

    def __post_init__(self) -> None:
        if not self.allow_private and not self.allow_public:
            raise ConfigError(
                "upstreams.allow_public", "allow_private and allow_public cannot both be false"
            )
        unknown = set(self.schemes) - {"http", "https"}
        if unknown or not self.schemes:
            raise ConfigError(
                "upstreams.allowed_schemes",
                f"only http and https can be allowed, got {sorted(unknown)}",
            )

    # --- static check -------------------------------------------------------------------

    def check_url(self, url: str | URL, *, key: str = "url") -> URL:
        """Parse and vet ``url``; :class:`ConfigError` naming ``key`` when it is refused.

        A literal address is checked here; a host name is checked on each connection.
        """
        try:
            parsed = url if isinstance(url, URL) else URL(url)
        except (ValueError, TypeError) as exc:
            raise ConfigError(key, f"not a URL: {exc}") from None
        if parsed.user is not None or parsed.password is not None:
            raise ConfigError(key, "credentials in the URL are not allowed; use a header")
        shown = str(parsed)
        if parsed.scheme not in self.schemes:
            allowed = ", ".join(sorted(self.schemes))
            raise ConfigError(
                key,
                f"{shown}: scheme {parsed.scheme!r} is not allowed "
                f"(only {allowed}: upstreams.allowed_schemes)",
            )
        if not parsed.host:
            raise ConfigError(key, f"{shown}: the URL has no host")
        address = _ip(parsed.host)
        if address is not None:
            reason = self.refusal(address)
            if reason:
                raise ConfigError(key, f"{shown}: {parsed.host} {reason}")
        return parsed

    def refusal(self, address: IPAddress) -> str | None:
        """Why ``address`` may not be dialled, or None when it may."""
        kind = classify_address(address)
        if kind == "forbidden":
            return "is an unspecified or multicast address"
        if kind == "private" and not self.allow_private:
            return (
                "is a private address, and private addresses are blocked "
                "(upstreams.allow_private: false)"
            )
        if kind == "public" and not self.allow_public:
            return (
                "is a public address, and only private addresses are allowed "
                "(upstreams.allow_public: false)"
            )
        return None

    def check_address(self, host: str, address: str) -> None:
        """Raise :class:`BlockedAddressError` unless ``address`` (from ``host``) may be dialled."""
        ip = _ip(address)
        if ip is None:
            raise BlockedAddressError(f"upstream {host!r}: {address!r} is not an IP address")
        reason = self.refusal(ip)
        if reason:
            raise BlockedAddressError(f"upstream {host!r} resolved to {ip}, which {reason}")

    # --- connect-time enforcement --------------------------------------------------------

    def resolver(self, inner: AbstractResolver | None = None) -> PolicyResolver:
        return PolicyResolver(self, inner or aiohttp.ThreadedResolver())

    def connector(
        self, *, resolver: AbstractResolver | None = None, **kwargs: Any
    ) -> aiohttp.TCPConnector:
        """A TCPConnector that re-checks every resolved and every dialled address."""
        return aiohttp.TCPConnector(
            resolver=self.resolver(resolver),
            use_dns_cache=False,
            socket_factory=self._socket,
            **kwargs,
        )

    def trace_config(self) -> aiohttp.TraceConfig:
        """Refuses a request, or a redirect, to a scheme outside the allow-list."""
        trace = aiohttp.TraceConfig()

        async def on_start(
            _session: aiohttp.ClientSession, _ctx: SimpleNamespace, params: Any
        ) -> None:
            self._check_request_url(params.url)

        async def on_redirect(
            _session: aiohttp.ClientSession, _ctx: SimpleNamespace, params: Any
        ) -> None:
            location = params.response.headers.get("Location", "")
            self._check_request_url(params.url.join(URL(location)))

        trace.on_request_start.append(on_start)
        trace.on_request_redirect.append(on_redirect)
        return trace

    def session(
        self,
        *,
        resolver: AbstractResolver | None = None,
        connector_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> aiohttp.ClientSession:
        """A ClientSession with this policy's connector (built with ``connector_kwargs``, e.g.
        pool limits) and trace checks; ``kwargs`` go to the session."""
        traces = [*kwargs.pop("trace_configs", ()), self.trace_config()]
        return aiohttp.ClientSession(
            connector=self.connector(resolver=resolver, **(connector_kwargs or {})),
            trace_configs=traces,
            **kwargs,
        )

    def _check_request_url(self, url: URL) -> None:
        if url.scheme not in self.schemes:
            raise aiohttp.InvalidUrlClientError(url, f"scheme {url.scheme!r} is not allowed")

    def _socket(self, addr_info: tuple[Any, ...]) -> socket.socket:
        family, type_, proto, _canon, sockaddr = addr_info
        self.check_address(str(sockaddr[0]), str(sockaddr[0]))
        sock = socket.socket(family=family, type=type_, proto=proto)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


@dataclass
class PolicyResolver(AbstractResolver):
    """Wraps a resolver; drops answers the policy refuses, and fails when none is left."""

    policy: UrlPolicy
    inner: AbstractResolver = field(default_factory=aiohttp.ThreadedResolver)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self.inner.resolve(host, port, family)
        allowed: list[ResolveResult] = []
        refused: list[str] = []
        for answer in answers:
            try:
                self.policy.check_address(host, answer["host"])
            except BlockedAddressError as exc:
                refused.append(str(exc))
            else:
                allowed.append(answer)
        if not allowed:
            raise BlockedAddressError(refused[0] if refused else f"{host!r} did not resolve")
        return allowed

    async def close(self) -> None:
        await self.inner.close()
