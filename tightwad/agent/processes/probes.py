"""Health probes of supervised processes, each bounded by a deadline.

- ``rpc_hello`` (in :mod:`tightwad.engine.rpc_probe`, which the engine also uses before it
  connects to RPC devices): TCP connect to a ``ggml-rpc-server`` and its HELLO handshake.
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

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tightwad.agent.processes.ports import port_is_free
from tightwad.engine.rpc_probe import RPC_CMD_HELLO, ProbeError, rpc_hello

__all__ = [
    "RPC_CMD_HELLO",
    "ProbeError",
    "grpc_health",
    "http_health",
    "listening",
    "rpc_hello",
    "tcp_connect",
]


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
