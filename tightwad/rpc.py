"""gRPC plumbing shared by every service and client: one place builds servers and channels.

A server built here always has, in this order of interceptors: a request-id/log-context
interceptor, shared-token authentication (constant-time compare, the token never logged), and
the mapping of :mod:`tightwad.errors` to status codes (unknown exceptions become INTERNAL with a
generic message; the traceback goes to the log). Health and reflection are registered here.
Shutdown is: health NOT_SERVING, ``server.stop(grace)``.

Clients get channels with the token attached as ``authorization: Bearer <token>`` metadata and
translate received statuses back into our error tree with :func:`translate_rpc_error`.

TLS: a server given ``server_credentials`` (see :mod:`tightwad.tls`) serves TLS only, a channel
given ``credentials`` speaks TLS only; the token stays on in both cases (as call credentials on
a TLS channel). A failed handshake is UNAVAILABLE at once, never a hang: :func:`failure_details`
says what gRPC said plus, when it looks like a TLS mismatch, what to check.
"""

from __future__ import annotations

import hmac
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tightwad.errors import TightwadError, from_grpc_status
from tightwad.logs import get_logger

__all__ = [
    "GrpcServer",
    "ServiceRegistration",
    "client_channel",
    "failure_details",
    "translate_rpc_error",
]

log = get_logger("tightwad.rpc")

_MAX_MESSAGE = 64 * 1024 * 1024
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", _MAX_MESSAGE),
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    # Servers accept those pings: by default a server allows one per 5 minutes on an idle
    # connection and answers more with GOAWAY "too_many_pings", dropping it every minute.
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 0),
    # A restarted peer is redialled within 2 s (default backoff grows to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]
_EXEMPT_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


@dataclass(frozen=True, slots=True)
class ServiceRegistration:
    """One servicer to add: ``add(servicer, server)`` is the generated ``add_*_to_server``."""

    name: str
    servicer: object
    add: Callable[[Any, grpc.aio.Server], None]


def _token_ok(metadata: Sequence[tuple[str, str | bytes]] | None, token: str) -> bool:
    presented = ""
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            presented = text.removeprefix("Bearer ").strip()
    return hmac.compare_digest(presented.encode(), token.encode())


class _AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        if method.startswith(_EXEMPT_PREFIXES) or _token_ok(
            handler_call_details.invocation_metadata, self._token
        ):
            return await continuation(handler_call_details)
        log.warning("rpc_unauthenticated", method=method)
        return _deny_handler(await continuation(handler_call_details))


def _deny_handler(handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler:
    async def deny(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid cluster token")

    async def deny_stream(_request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid cluster token")
        yield None  # pragma: no cover

    if handler is None:
        return grpc.unary_unary_rpc_method_handler(deny)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny_stream)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny_stream)
    return grpc.unary_unary_rpc_method_handler(deny)


def _wrap_unary(behaviour: Callable[..., Awaitable[Any]], method: str) -> Callable[..., Any]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
        structlog.contextvars.bind_contextvars(request_id=uuid.uuid4().hex[:12], rpc=method)
        try:
            return await behaviour(request, context)
        except TightwadError as exc:
            await context.abort(exc.grpc_code, exc.message)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("rpc_internal_error", method=method)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error (see the server log)")
        finally:
            structlog.contextvars.unbind_contextvars("request_id", "rpc")

    return wrapper


def _wrap_stream(behaviour: Callable[..., AsyncIterator[Any]], method: str) -> Callable[..., Any]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        structlog.contextvars.bind_contextvars(request_id=uuid.uuid4().hex[:12], rpc=method)
        try:
            async for item in behaviour(request, context):
                yield item
        except TightwadError as exc:
            await context.abort(exc.grpc_code, exc.message)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("rpc_internal_error", method=method)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error (see the server log)")
        finally:
            structlog.contextvars.unbind_contextvars("request_id", "rpc")

    return wrapper


class _ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps TightwadError to its status code; unknown errors to a generic INTERNAL."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        # Health and reflection are grpc's own servicers (Watch writes with context.write,
        # which the wrappers below would break) and raise none of our errors.
        if handler is None or method.startswith(_EXEMPT_PREFIXES):
            return handler
        kw = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method), **kw
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method), **kw
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(handler.stream_unary, method), **kw
            )
        return grpc.stream_stream_rpc_method_handler(
            _wrap_stream(handler.stream_stream, method), **kw
        )


@dataclass
class GrpcServer:
    """A grpc.aio server with health, reflection, auth and error mapping; ``start``/``stop``."""

    services: Sequence[ServiceRegistration]
    address: str = "127.0.0.1:0"
    token: str | None = None
    server_credentials: grpc.ServerCredentials | None = None
    port: int = 0
    _server: grpc.aio.Server | None = field(default=None, init=False)
    _health: health.aio.HealthServicer | None = field(default=None, init=False)

    async def start(self) -> int:
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if self.token:
            interceptors.append(_AuthInterceptor(self.token))
        interceptors.append(_ErrorInterceptor())
        server = grpc.aio.server(interceptors=interceptors, options=_CHANNEL_OPTIONS)
        names: list[str] = []
        for reg in self.services:
            reg.add(reg.servicer, server)
            names.append(reg.name)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            [
                *names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            server,
        )
        if self.server_credentials is not None:
            self.port = server.add_secure_port(self.address, self.server_credentials)
        else:
            self.port = server.add_insecure_port(self.address)
        await server.start()
        serving = health_pb2.HealthCheckResponse.SERVING
        await self._health.set("", serving)
        for name in names:
            await self._health.set(name, serving)
        self._server = server
        log.info("grpc_server_started", address=self.address, port=self.port, services=names)
        return self.port

    @property
    def bound_address(self) -> str:
        host = self.address.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def stop(self, grace: float = 5.0) -> None:
        if self._server is None:
            return
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        await self._server.stop(grace)
        self._server = None

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


class _TokenAuth(grpc.AuthMetadataPlugin):
    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        callback((("authorization", f"Bearer {self._token}"),), None)


class _TokenMetadata:
    """Adds the token on insecure channels (call credentials need TLS)."""

    def __init__(self, token: str) -> None:
        self._md = ("authorization", f"Bearer {token}")

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        md = grpc.aio.Metadata(*(details.metadata or ()))
        md.add(*self._md)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, md, details.credentials, details.wait_for_ready
        )


# grpc.aio files an interceptor under the first call kind it implements, so each kind needs
# its own object.
class _UnaryUnaryToken(_TokenMetadata, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _UnaryStreamToken(_TokenMetadata, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _StreamUnaryToken(_TokenMetadata, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, it: Any) -> Any:
        return await continuation(self._details(details), it)


class _StreamStreamToken(_TokenMetadata, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, it: Any) -> Any:
        return await continuation(self._details(details), it)


def client_channel(
    address: str,
    *,
    token: str | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> grpc.aio.Channel:
    """An aio channel to ``address`` carrying the cluster token (TLS when credentials given)."""
    if credentials is not None:
        if token:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.metadata_call_credentials(_TokenAuth(token))
            )
        return grpc.aio.secure_channel(address, credentials, options=_CHANNEL_OPTIONS)
    interceptors: Iterable[grpc.aio.ClientInterceptor] = (
        [
            _UnaryUnaryToken(token),
            _UnaryStreamToken(token),
            _StreamUnaryToken(token),
            _StreamStreamToken(token),
        ]
        if token
        else []
    )
    return grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS, interceptors=interceptors)


_TLS_HANDSHAKE_HINT = (
    "TLS handshake failed: both sides need cluster.tls with certificates from the same cluster "
    "CA, and the server's certificate must name the address dialled"
)
_CLOSED_HINT = (
    "the server closed the connection at once: if it requires TLS, configure cluster.tls "
    "on this side too"
)


def failure_details(exc: grpc.aio.AioRpcError) -> str:
    """What gRPC said about a failed call, with a hint when it looks like a TLS mismatch."""
    details = exc.details() or exc.code().name
    if exc.code() is grpc.StatusCode.UNAVAILABLE:
        lowered = details.lower()
        if "handshake failed" in lowered or "ssl_error" in lowered:
            return f"{details} ({_TLS_HANDSHAKE_HINT})"
        if "socket closed" in lowered:
            return f"{details} ({_CLOSED_HINT})"
    return details


def translate_rpc_error(exc: grpc.aio.AioRpcError, what: str) -> TightwadError:
    """Turn a failed call into our error tree, naming what was being called."""
    err = from_grpc_status(exc.code(), f"{what}: {failure_details(exc)}")
    err.__cause__ = exc
    return err
