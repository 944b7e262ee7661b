"""Port allocation for supervised processes that never hands out a port twice.

A port is given only when it is neither reserved in this process (a reservation lasts until
``release``) nor bindable-tested busy on the host. The bind test closes its socket at once, so
the child can bind right after; the reservation keeps two of our own children apart while one
of them is still starting up and has not bound yet.
"""

from __future__ import annotations

import errno
import socket
import threading
from dataclasses import dataclass, field

from tightwad.errors import ConflictError, OverloadedError

__all__ = ["PortAllocator", "port_is_free"]


def port_is_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound for TCP right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


@dataclass
class PortAllocator:
    """Hands out ports from ``[low, high]``; thread-safe; ``reserve`` for explicit ports."""

    low: int = 50100
    high: int = 50999
    _reserved: set[int] = field(default_factory=set)
    _next: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if not 0 < self.low <= self.high < 65536:
            raise ValueError(f"bad port range {self.low}-{self.high}")
        self._next = self.low

    @property
    def reserved(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._reserved)

    def allocate(self, host: str) -> int:
        """A free port on ``host``, now reserved; ``OverloadedError`` when none is left."""
        with self._lock:
            span = self.high - self.low + 1
            for i in range(span):
                port = self.low + (self._next - self.low + i) % span
                if port in self._reserved or not port_is_free(host, port):
                    continue
                self._reserved.add(port)
                self._next = port + 1 if port < self.high else self.low
                return port
        raise OverloadedError(f"no free port left in {self.low}-{self.high} on {host}")

    def reserve(self, host: str, port: int) -> int:
        """Reserve an explicitly requested port; ``ConflictError`` if taken."""
        with self._lock:
            if port in self._reserved:
                raise ConflictError(f"port {port} is already used by another supervised process")
            if not port_is_free(host, port):
                raise ConflictError(f"port {port} on {host} is in use by another program")
            self._reserved.add(port)
            return port

    def release(self, port: int) -> None:
        with self._lock:
            self._reserved.discard(port)
