"""Health probes of supervised processes, each bounded by a deadline.

- ``rpc_hello``: TCP connect to a ``ggml-rpc-server`` and its HELLO handshake. Wire format
  (ggml-rpc.cpp): request ``| cmd u8 = 14 (RPC_CMD_HELLO) | size u64 LE | payload |``,
  response ``| size u64 LE | major u8 | minor u8 | patch u8 | ... |``. Protocol 7 sends
  ``conn_caps`` (24 zero bytes = plain TCP) and answers 28 bytes; protocols 2-6 send an empty
  payload and answer 3 bytes. We try the current form first, then the old one.
  An rpc-server serves one client at a time: while a llama-server is attached, a HELLO waits
  in the listen backlog. So HELLO is the start-up probe (it yields the protocol version) and
  ``listening`` the liveness probe afterwards: it checks that the port is still bound without
  connecting, because the server listens with a backlog of 1 and, while a client is attached,
  queued probe connections are never accepted, so after two of them every connect times out.
- ``http_health``: ``GET /health`` of a ``llama-server`` (200 = model loaded and ready; 503 =
  still loading).
- ``grpc_health``: the standard gRPC health ``Check`` of one service (an engine host's
  ``tightwad.v1.EngineService``: SERVING once its model is loaded). Health is exempt from the
  cluster token, so the probe needs none; with the cluster's mutual TLS it presents the
  host's certificate (``credentials``).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tightwad.agent.processes.ports import port_is_free

__all__ = [
    "RPC_CMD_HELLO",
    "ProbeError",
    "grpc_health",
    "http_health",
    "listening",
    "rpc_hello",
    "tcp_connect",
]

RPC_CMD_HELLO = 14
_CONN_CAPS_SIZE = 24
_MAX_HELLO_REPLY = 1024


class ProbeError(Exception):
    """A probe that did not pass; ``str()`` says why."""


async def _hello_once(host: str, port: int, payload: bytes, timeout_s: float) -> str:
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(struct.pack("<BQ", RPC_CMD_HELLO, len(payload)) + payload)
            await writer.drain()
            (size,) = struct.unpack("<Q", await reader.readexactly(8))
            if not 3 <= size <= _MAX_HELLO_REPLY:
                raise ProbeError(f"unexpected HELLO reply size {size}")
            body = await reader.readexactly(size)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    return f"{body[0]}.{body[1]}.{body[2]}"


async def rpc_hello(host: str, port: int, timeout_s: float = 2.0) -> str:
    """The protocol version (``"7.0.0"``) a ggml RPC server answers HELLO with."""
    last: Exception | None = None
    for payload in (bytes(_CONN_CAPS_SIZE), b""):
        try:
            return await _hello_once(host, port, payload, timeout_s)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ProbeError) as exc:
            last = exc
            if isinstance(exc, ConnectionRefusedError | TimeoutError):
                break
    raise ProbeError(f"rpc hello to {host}:{port} failed: {last!r}")


async def tcp_connect(host: str, port: int, timeout_s: float = 2.0) -> str:
    """Open and close a TCP connection; raises ``ProbeError`` when nothing listens."""
    try:
        async with asyncio.timeout(timeout_s):
            _reader, writer = await asyncio.open_connection(host, port)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    except (OSError, TimeoutError) as exc:
        raise ProbeError(f"tcp connect to {host}:{port} failed: {exc!r}") from exc
    return "listening"


def listening(host: str, port: int) -> str:
    """Whether something still holds ``host:port`` (a bind test: no connection is made)."""
    try:
        free = port_is_free(host, port)
    except OSError as exc:
        raise ProbeError(f"cannot test {host}:{port}: {exc}") from exc
    if free:
        raise ProbeError(f"nothing listens on {host}:{port} any more")
    return "listening"


async def http_health(host: str, port: int, timeout_s: float = 2.0) -> str:
    """``GET /health``; returns the status line's text on 200, raises ``ProbeError`` else."""
    target = f"[{host}]" if ":" in host else host
    request = f"GET /health HTTP/1.1\r\nHost: {target}:{port}\r\nConnection: close\r\n\r\n"
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(request.encode())
                await writer.drain()
                status = (await reader.readline()).decode("latin-1").strip()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError) as exc:
        raise ProbeError(f"GET /health on {host}:{port} failed: {exc!r}") from exc
    parts = status.split(" ", 2)
    if len(parts) < 2 or parts[1] != "200":
        raise ProbeError(f"GET /health on {host}:{port} answered {status or 'nothing'!r}")
    return status


async def grpc_health(
    host: str,
    port: int,
    service: str,
    timeout_s: float = 2.0,
    *,
    credentials: grpc.ChannelCredentials | None = None,
) -> str:
    """gRPC health ``Check`` of ``service``; returns ``"SERVING"``, raises ``ProbeError`` else."""
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    channel = (
        grpc.aio.secure_channel(target, credentials)
        if credentials is not None
        else grpc.aio.insecure_channel(target)
    )
    try:
        async with channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
    except grpc.aio.AioRpcError as exc:
        raise ProbeError(
            f"health check of {service} on {target} failed: {exc.code().name} {exc.details()}"
        ) from exc
    status = str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        raise ProbeError(f"{service} on {target} is {status}")
    return status
