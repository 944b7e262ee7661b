"""Who may call the gateway, and how many at once.

Owns :func:`check_bearer` (constant-time ``Authorization: Bearer KEY`` check),
:class:`NetworkAllowList` (CIDR allow-list for the operator routes) and :class:`RouteLimiter`
(per-route concurrency with a bounded wait queue). Guarantees: a wrong or missing key raises
:class:`AuthenticationError` without revealing which; a full queue raises
:class:`OverloadedError` at once instead of waiting; a slot is always released, whatever way the
request ends (the limiter is an async context manager).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

from tightwad.errors import AuthenticationError, ConfigError, OverloadedError

__all__ = ["NetworkAllowList", "RouteLimiter", "check_bearer"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def check_bearer(header: str | None, api_key: str) -> None:
    """Raise :class:`AuthenticationError` unless ``header`` is ``Bearer <api_key>``."""
    if not header:
        raise AuthenticationError(
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
    scheme, _, token = header.partition(" ")
    given = token.strip().encode() if scheme.lower() == "bearer" else b""
    if not hmac.compare_digest(given, api_key.encode()):
        raise AuthenticationError("Incorrect API key provided.")


class NetworkAllowList:
    """Client addresses allowed on the operator routes; empty means everyone."""

    def __init__(self, cidrs: Iterable[str]) -> None:
        networks: list[IPNetwork] = []
        for cidr in cidrs:
            try:
                networks.append(ipaddress.ip_network(cidr, strict=False))
            except ValueError as exc:
                raise ConfigError("gateway.status_allow_networks", str(exc)) from exc
        self._networks = tuple(networks)

    def allows(self, remote: str | None) -> bool:
        if not self._networks:
            return True
        if not remote:
            return False
        try:
            address = ipaddress.ip_address(remote.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)


class RouteLimiter:
    """At most ``max_concurrency`` generations of one route, ``max_queue`` more waiting."""

    def __init__(self, route: str, max_concurrency: int, max_queue: int) -> None:
        self.route = route
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._max_queue = max_queue
        self.running = 0
        self.waiting = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the body of the ``async with``; 429 when the queue is full."""
        if self._semaphore.locked():
            if self.waiting >= self._max_queue:
                raise OverloadedError(
                    f"Route '{self.route}' is at capacity and its queue is full; retry later."
                )
            self.waiting += 1
            try:
                await self._semaphore.acquire()
            finally:
                self.waiting -= 1
        else:
            await self._semaphore.acquire()
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._semaphore.release()
