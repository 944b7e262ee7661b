"""The OpenAI-compatible HTTP API of ``tightwad-gateway`` (aiohttp), over the Backend Protocol.

Owns :func:`create_app` (the pipeline and :class:`GatewaySettings` are
:mod:`tightwad.gateway.pipeline`'s, re-exported here). Routes:

    POST /v1/chat/completions     chat, JSON or SSE                      bearer token
    POST /v1/completions          legacy completions, JSON or SSE        bearer token
    GET  /v1/models[/{id}]        the configured routes as OpenAI models bearer token
    GET  /v1/tightwad/status      routes, in-flight counts, totals       token + allow-list
    GET  /metrics                 Prometheus text                        token + allow-list
    GET  /healthz                 200 while the process is up            open
    GET  /readyz                  200 when every route is ready, or 503  open
    GET  /openapi.json            OpenAPI 3.1 description (gateway.openapi) bearer token

Guarantees: every error is an OpenAI ``{"error": {message, type, param, code}}`` body with its
status (aiohttp's own 404/405/413 included); an unexpected exception is a generic 500 with the
traceback in the log; an error after a stream started is one SSE ``data: {"error": ...}`` event
and the stream ends without ``[DONE]``; the Backend's generator is always closed (``aclose``)
however the request ends: finished, failed, timed out, or the client gone.

Serve the app with ``handler_cancellation=True`` (``web.AppRunner(app, handler_cancellation=
True)``) so a client that disconnects while the Backend is still thinking cancels at once;
without it the Backend is closed at the next write that fails.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from tightwad.errors import DeadlineError, OverloadedError, TightwadError
from tightwad.gateway import responses
from tightwad.gateway.metrics import CONTENT_TYPE, route_status
from tightwad.gateway.openai_schema import ParsedRequest, parse_chat, parse_completion
from tightwad.gateway.openapi import openapi_json
from tightwad.gateway.pipeline import (
    GATEWAY,
    REQUEST_ID,
    ROUTE,
    GatewaySettings,
    GenerationRun,
    _Gateway,
    _read_json,
    gateway_limits,
    open_generation,
    read_json,
    request_id_of,
)
from tightwad.gateway.security import NetworkAllowList, RouteLimiter, check_bearer
from tightwad.gateway.sse import Renderer, SSEWriter, combined, merge_bodies, renderer_for
from tightwad.gateway.types import Backend, Finished, GenerationEvent, TextDelta, ToolCallDelta
from tightwad.logs import get_logger

__all__ = [
    "GATEWAY",
    "REQUEST_ID",
    "ROUTE",
    "GatewaySettings",
    "GenerationRun",
    "create_app",
    "error_response",
    "gateway_limits",
    "open_generation",
    "read_json",
    "request_id_of",
]

log = get_logger(__name__)

_OPEN_PATHS = frozenset({"/healthz", "/readyz"})
_OPERATOR_PATHS = frozenset({"/metrics", "/v1/tightwad/status"})
_CLIENT_CLOSED = 499  # nginx's "client closed request", for metrics only
# Retry-After (seconds) of a 429: a busy engine or a full queue frees a slot within a request.
BUSY_RETRY_AFTER_S = 1


def error_response(
    status: int, message: str, kind: str, *, param: str | None = None, code: str | None = None
) -> web.Response:
    """An OpenAI-style error response."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.json_response(body, status=status)


def _tightwad_error_response(error: TightwadError) -> web.Response:
    response = web.json_response(error.openai_body(), status=error.http_status)
    if error.http_status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    if isinstance(error, OverloadedError):
        seconds = getattr(error, "retry_after_s", None) or BUSY_RETRY_AFTER_S
        response.headers["Retry-After"] = str(max(1, math.ceil(seconds)))
    return response


class _MalformedRequestLine(logging.Filter):
    """aiohttp logs its HTTP parser's refusal of a malformed request (the client got a 4xx)
    with a traceback, one per request; this makes it the one line it deserves."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= (exc.code or 400) < 500:
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg = "malformed_http_request remote=%s status=%s error=%s"
            record.args = (remote, exc.code or 400, " ".join(str(exc.message).split())[:200])
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


_MALFORMED_REQUEST_LINE = _MalformedRequestLine()


def _http_error_response(request: web.Request, exc: web.HTTPException) -> web.Response:
    if exc.status == 404:
        message = f"Invalid URL ({request.method} {request.path})"
        return error_response(404, message, "invalid_request_error", code="unknown_url")
    if exc.status == 405:
        message = f"Method {request.method} is not allowed on {request.path}."
        response = error_response(405, message, "invalid_request_error", code="method_not_allowed")
        allowed = getattr(exc, "allowed_methods", None) or ()
        response.headers["Allow"] = ", ".join(sorted(allowed))
        return response
    if exc.status == 408:
        message = (
            "The request body did not arrive within "
            f"{request.app[GATEWAY].settings.body_timeout_s:g} s."
        )
        response = error_response(408, message, "invalid_request_error", code="request_timeout")
        response.force_close()  # the rest of the body may still be dribbling in
        return response
    if exc.status == 413:
        message = f"Request body too large: the limit is {request.app[GATEWAY].max_body} bytes."
        return error_response(413, message, "invalid_request_error", code="request_too_large")
    kind = "invalid_request_error" if exc.status < 500 else "server_error"
    return error_response(exc.status, exc.reason, kind)


def _internal_error_body() -> dict[str, Any]:
    message = "The server had an error while processing your request."
    return {"error": {"message": message, "type": "server_error", "param": None, "code": None}}


def _internal_error_response() -> web.Response:
    return web.json_response(_internal_error_body(), status=500)


# ---------------------------------------------------------------------------------------------
# Middlewares: errors + metrics (outermost), then auth.


@web.middleware
async def _error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    request_id = uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    started = time.monotonic()
    status = _CLIENT_CLOSED
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        try:
            response = await _answer(request, handler)
            status = response.status
            if not response.prepared:
                response.headers["x-request-id"] = request_id
            return response
        finally:
            if request.path not in _OPEN_PATHS and request.path != "/metrics":
                elapsed = time.monotonic() - started
                route = request.get(ROUTE, "")
                gateway.metrics.observe_request(route, _endpoint(request), status, elapsed)


async def _answer(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except TightwadError as exc:
        return _tightwad_error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _http_error_response(request, exc)
    except Exception:
        log.exception("request_failed", path=request.path)
        return _internal_error_response()


def _endpoint(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def _auth_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    if request.path in _OPEN_PATHS:
        return await handler(request)
    if gateway.settings.api_key is not None:
        check_bearer(request.headers.get("Authorization"), gateway.settings.api_key)
    if request.path in _OPERATOR_PATHS and not gateway.allow.allows(request.remote):
        return error_response(
            403, "Your address may not read this endpoint.", "permission_error", code="forbidden"
        )
    return await handler(request)


# ---------------------------------------------------------------------------------------------
# Generation: chat and completions.


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    body = await _read_json(request)
    parsed = parse_chat(body, gateway.limits, request[REQUEST_ID])
    return await _Generation(request, gateway, parsed, "chatcmpl-").run()


async def _completions(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    body = await _read_json(request)
    parsed = parse_completion(body, gateway.limits, request[REQUEST_ID])
    return await _Generation(request, gateway, parsed, "cmpl-").run()


class _Generation:
    """One chat or completions request (``n`` choices), from the route's queue to the last
    byte. Choice ``i`` is rendered by ``renderers[i]``; with several, the body holds every
    choice and the usage counts the prompt once and every choice's completion."""

    def __init__(
        self, request: web.Request, gateway: _Gateway, parsed: ParsedRequest, prefix: str
    ) -> None:
        self.request = request
        self.gateway = gateway
        self.parsed = parsed
        rid = prefix + request[REQUEST_ID]
        self.renderers: list[Renderer] = [renderer_for(parsed, rid, i) for i in range(parsed.n)]
        loop = asyncio.get_running_loop()
        self.deadline = loop.time() + gateway.settings.request_timeout_s
        self.finished: dict[int, Finished] = {}

    async def run(self) -> web.StreamResponse:
        async with open_generation(self.request, self.parsed) as run:
            self.deadline = run.deadline
            if self.parsed.stream:
                return await self._stream(run.choices)
            return await self._collect(run.choices)
        raise AssertionError("unreachable")  # pragma: no cover

    def _all_finished(self) -> Finished:
        return combined([self.finished[i] for i in range(self.parsed.n)])

    async def _collect(self, events: AsyncIterator[tuple[int, GenerationEvent]]) -> web.Response:
        deltas: list[list[TextDelta | ToolCallDelta]] = [[] for _ in self.renderers]
        try:
            async with asyncio.timeout_at(self.deadline):
                async for index, event in events:
                    if isinstance(event, Finished):
                        self.finished[index] = event
                    else:
                        deltas[index].append(event)
        except TimeoutError as exc:
            raise DeadlineError("The request timed out.") from exc
        if len(self.finished) < self.parsed.n:
            raise TightwadError("The backend ended the generation without finishing it.")
        bodies = [
            r.body(d, self.finished[i])  # type: ignore[arg-type]
            for i, (r, d) in enumerate(zip(self.renderers, deltas, strict=True))
        ]
        body = bodies[0] if len(bodies) == 1 else merge_bodies(bodies, self._all_finished())
        return web.json_response(body, dumps=_dumps)

    async def _first_event(
        self, events: AsyncIterator[tuple[int, GenerationEvent]]
    ) -> tuple[int, GenerationEvent]:
        try:
            async with asyncio.timeout_at(self.deadline):
                item = await anext(events, None)
        except TimeoutError as exc:
            raise DeadlineError("The request timed out before the first token.") from exc
        if item is None:
            raise TightwadError("The backend ended the generation without finishing it.")
        return item

    async def _stream(
        self, events: AsyncIterator[tuple[int, GenerationEvent]]
    ) -> web.StreamResponse:
        first = await self._first_event(events)
        writer = SSEWriter(self.request, {"x-request-id": self.request[REQUEST_ID]})
        await writer.prepare()
        try:
            async with asyncio.timeout_at(self.deadline):
                await self._pump(writer, first, events)
        except ConnectionResetError:
            log.info("client_disconnected")
        except Exception as exc:
            await self._send_error(writer, exc)
        return writer.response

    async def _pump(
        self,
        writer: SSEWriter,
        item: tuple[int, GenerationEvent] | None,
        events: AsyncIterator[tuple[int, GenerationEvent]],
    ) -> None:
        for renderer in self.renderers:
            for chunk in renderer.start_chunks():
                await writer.send(chunk)
        while item is not None:
            index, event = item
            renderer = self.renderers[index]
            if isinstance(event, Finished):
                self.finished[index] = event
                await writer.send(renderer.finish_chunk(event))
                if len(self.finished) == self.parsed.n:
                    if self.parsed.include_usage:
                        await writer.send(self.renderers[0].usage_chunk(self._all_finished()))
                    await writer.done()
                    return
            else:
                delta_chunk = renderer.delta_chunk(event)  # type: ignore[arg-type]
                if delta_chunk is not None:
                    await writer.send(delta_chunk)
            item = await anext(events, None)
        raise TightwadError("The backend ended the generation without finishing it.")

    async def _send_error(self, writer: SSEWriter, exc: Exception) -> None:
        if isinstance(exc, TimeoutError):
            exc = DeadlineError("The request timed out.")
        if isinstance(exc, TightwadError):
            log.warning("stream_failed", error=exc.message, status=exc.http_status)
            body = exc.openai_body()
        else:
            log.error("stream_failed", exc_info=exc)
            body = _internal_error_body()
        try:
            await writer.send(body)
            await writer.end()
        except ConnectionResetError:
            log.info("client_disconnected")


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


# ---------------------------------------------------------------------------------------------
# Models, status, metrics, health.


def _model_object(gateway: _Gateway, name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": int(gateway.started), "owned_by": "tightwad"}


async def _list_models(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    data = [_model_object(gateway, name) for name in gateway.routes]
    return web.json_response({"object": "list", "data": data})


async def _get_model(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    name = request.match_info["model_id"]
    gateway.backend(name)
    return web.json_response(_model_object(gateway, name))


async def _status(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    routes = [
        route_status(name, backend, limiter.running, limiter.waiting)
        for (name, backend), limiter in zip(
            gateway.routes.items(), gateway.limiters.values(), strict=True
        )
    ]
    body = gateway.metrics.status_report(routes, gateway.started)
    return web.json_response(body, dumps=_dumps)


async def _metrics(request: web.Request) -> web.Response:
    payload = request.app[GATEWAY].metrics.render()
    return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE})


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def _is_ready(backend: Backend) -> bool:
    try:
        return bool(backend.info().ready)
    except Exception:
        return False


async def _readyz(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    not_ready = [name for name, backend in gateway.routes.items() if not _is_ready(backend)]
    if not_ready:
        return web.json_response({"ready": False, "not_ready": not_ready}, status=503)
    return web.json_response({"ready": True, "not_ready": []})


def create_app(
    routes: Mapping[str, Backend],
    settings: GatewaySettings,
    *,
    on_shutdown: Callable[[web.Application], Awaitable[None]] | None = None,
) -> web.Application:
    """Build the gateway's aiohttp application over ``routes`` (model name → Backend)."""
    gateway = _Gateway(routes, settings, NetworkAllowList(settings.status_allow_networks))
    for name in routes:
        gateway.limiters[name] = RouteLimiter(name, settings.max_concurrency, settings.max_queue)
    app = web.Application(
        middlewares=[_error_middleware, _auth_middleware], client_max_size=settings.max_body_bytes
    )
    app[GATEWAY] = gateway
    logging.getLogger("aiohttp.server").addFilter(_MALFORMED_REQUEST_LINE)  # once: same filter
    app.router.add_post("/v1/chat/completions", _chat_completions)
    app.router.add_post("/v1/completions", _completions)
    app.router.add_get("/v1/models", _list_models)
    app.router.add_get("/v1/models/{model_id:.+}", _get_model)
    app.router.add_get("/v1/tightwad/status", _status)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/openapi.json", openapi_json)
    responses.add_routes(app)
    if on_shutdown is not None:
        app.on_shutdown.append(on_shutdown)
    return app
