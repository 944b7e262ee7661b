"""The gateway's request pipeline, shared by every generating endpoint: the app's state
(:class:`GatewaySettings`, the :data:`GATEWAY` key), the body reader, and
:func:`open_generation`, which takes a parsed request through the route's Backend.

Guarantees of :func:`open_generation`: the route is looked up (404 for a name never
configured), a slot of its queue is held for the whole generation (429 when the queue is
full, 504 past the request deadline), a chat request's tools are checked against the route
(its call syntax, the prompt rendered with the tools, the tools' grammar: a 400 when it cannot
take them), ``parsed.n`` choices run (:mod:`tightwad.gateway.choices`), tool calls are shaped
into :class:`~tightwad.gateway.types.ToolCallDelta` events, every event is awaited within the
deadline and counted in the metrics, and on exit every generator is closed and the slot freed,
however the block ends. ``tightwad.gateway.api`` re-exports all of it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web

from tightwad.errors import ConfigError, DeadlineError, NotFoundError, OverloadedError
from tightwad.gateway.choices import choice_request, merge_choices
from tightwad.gateway.metrics import GatewayMetrics
from tightwad.gateway.openai_schema import Limits, ParsedRequest, parse_json_object
from tightwad.gateway.security import NetworkAllowList, RouteLimiter
from tightwad.gateway.tools.route import prepare_chat
from tightwad.gateway.tools.shape import DEFAULT_SYNTAX, shape_tool_calls
from tightwad.gateway.types import (
    Backend,
    Finished,
    GenerationEvent,
    GenerationRequest,
    ToolCallDelta,
)
from tightwad.logs import get_logger

__all__ = [
    "GATEWAY",
    "REQUEST_ID",
    "ROUTE",
    "GatewaySettings",
    "GenerationRun",
    "gateway_limits",
    "open_generation",
    "read_json",
    "request_id_of",
]

log = get_logger("tightwad.gateway.api")


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """How the HTTP layer guards and bounds requests."""

    api_key: str | None = field(default=None, repr=False)
    max_body_bytes: int = 4 * 1024 * 1024
    max_tokens_cap: int = 4096
    max_concurrency: int = 8  # per route
    max_queue: int = 32  # per route, beyond max_concurrency; then 429
    request_timeout_s: float = 600.0
    # A request body must arrive within this many seconds of its headers (slow-loris bodies).
    body_timeout_s: float = 30.0
    status_allow_networks: tuple[str, ...] = ()  # CIDRs for /metrics and status; empty = open
    default_max_tokens: int = 512
    default_temperature: float = 1.0  # OpenAI's default when a request omits temperature
    max_choices: int = 8  # the largest ``n`` a request may ask for

    def __post_init__(self) -> None:
        positive = {
            "max_body_bytes": self.max_body_bytes,
            "max_tokens_cap": self.max_tokens_cap,
            "max_concurrency": self.max_concurrency,
            "request_timeout_s": self.request_timeout_s,
            "body_timeout_s": self.body_timeout_s,
            "default_max_tokens": self.default_max_tokens,
            "max_choices": self.max_choices,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"gateway.{name}", f"must be > 0, got {value}")
        if self.max_queue < 0:
            raise ConfigError("gateway.max_queue", f"must be >= 0, got {self.max_queue}")
        if self.api_key is not None and not self.api_key:
            raise ConfigError("gateway.api_key", "must not be empty (use null for no key)")


@dataclass(slots=True)
class _Gateway:
    routes: Mapping[str, Backend]
    settings: GatewaySettings
    allow: NetworkAllowList
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    limiters: dict[str, RouteLimiter] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    @property
    def max_body(self) -> int:
        return self.settings.max_body_bytes

    @property
    def limits(self) -> Limits:
        s = self.settings
        return Limits(s.max_tokens_cap, s.default_max_tokens, s.default_temperature, s.max_choices)

    def backend(self, model: str) -> Backend:
        backend = self.routes.get(model)
        if backend is None:
            raise NotFoundError(
                f"The model `{model}` does not exist or you do not have access to it."
            )
        return backend


GATEWAY = web.AppKey("tightwad_gateway", _Gateway)
REQUEST_ID = web.RequestKey("tightwad_request_id", str)
ROUTE = web.RequestKey("tightwad_route", str)


async def _read_json(request: web.Request) -> dict[str, Any]:
    limit = request.app[GATEWAY].max_body
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    try:
        raw = await asyncio.wait_for(request.read(), request.app[GATEWAY].settings.body_timeout_s)
    except TimeoutError:
        # Answered with 408 and the connection closed (see _http_error_response).
        raise web.HTTPRequestTimeout() from None
    return parse_json_object(raw)


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's body as one JSON object, within the gateway's size and time limits."""
    return await _read_json(request)


def gateway_limits(request: web.Request) -> Limits:
    """The gateway's bounds on a request (max tokens cap and defaults), for a parser."""
    return request.app[GATEWAY].limits


def request_id_of(request: web.Request) -> str:
    """This HTTP request's id (its ``x-request-id`` header; ``chatcmpl-<id>`` etc.)."""
    return request[REQUEST_ID]


async def _aclose(events: object) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:  # the answer is already decided; never mask it
            log.exception("backend_close_failed")


@dataclass(slots=True)
class GenerationRun:
    """One generation in flight (see :func:`open_generation`).

    ``request`` is what the Backend got (the tools' grammar and rendered prompt included);
    ``events`` are its events, tool calls already shaped into
    :class:`~tightwad.gateway.types.ToolCallDelta` events, each awaited within the request's
    deadline (past it: :class:`~tightwad.errors.DeadlineError`) and counted in the metrics;
    ``deadline`` is that deadline on the event loop's clock. ``choices`` are the events of
    every choice (``parsed.n`` of them) as ``(index, event)``, each choice ending with its
    own Finished; ``events`` are those of a request with one choice."""

    route: str
    backend: Backend
    request: GenerationRequest
    choices: AsyncIterator[tuple[int, GenerationEvent]]
    deadline: float
    events: AsyncIterator[GenerationEvent]


async def _events_only(
    choices: AsyncIterator[tuple[int, GenerationEvent]],
) -> AsyncIterator[GenerationEvent]:
    async for _, event in choices:
        yield event


@asynccontextmanager
async def open_generation(
    request: web.Request, parsed: ParsedRequest
) -> AsyncIterator[GenerationRun]:
    """Run ``parsed`` through the gateway's pipeline: the route's Backend (404 when unknown),
    a slot in its queue (429 when full, 504 past the deadline), the tools against the route
    (syntax, rendering, grammar: 400 when it cannot take them), ``Backend.generate`` and the
    tool-call shaping; yields the :class:`GenerationRun`. On exit the generators are closed
    and the slot freed, however the block ends.

    The seam for endpoints other than chat/completions (``/v1/responses``)::

        body = await read_json(request)
        parsed = ParsedRequest("chat", GenerationRequest(...), stream, include_usage)
        async with open_generation(request, parsed) as run:
            async for event in run.events:  # TextDelta | ToolCallDelta | Finished
                ...

    Errors raised before the first byte is written become OpenAI errors with their status
    (the app's middleware); after it, the caller reports them in its own stream."""
    gateway = request.app[GATEWAY]
    started = time.monotonic()
    route = parsed.request.model
    backend = gateway.backend(route)
    request[ROUTE] = route
    deadline = asyncio.get_running_loop().time() + gateway.settings.request_timeout_s
    with structlog.contextvars.bound_contextvars(model=route):
        async with AsyncExitStack() as stack:
            await _enter_slot(gateway, route, deadline, stack)
            sent, syntax = parsed.request, None
            if parsed.endpoint == "chat":
                try:
                    async with asyncio.timeout_at(deadline):
                        sent, syntax = await prepare_chat(backend, parsed.request)
                except TimeoutError as exc:
                    raise DeadlineError("The request timed out.") from exc
            streams = []
            for i in range(parsed.n):
                raw = backend.generate(choice_request(sent, i))
                stack.push_async_callback(_aclose, raw)
                shaped = shape_tool_calls(raw, sent, syntax=syntax or DEFAULT_SYNTAX)
                stack.push_async_callback(_aclose, shaped)
                streams.append(shaped)
            merged = merge_choices(streams)
            stack.push_async_callback(_aclose, merged)
            observed = _observed(gateway, route, merged, deadline, started)
            stack.push_async_callback(_aclose, observed)
            events = _events_only(observed)
            stack.push_async_callback(_aclose, events)
            yield GenerationRun(route, backend, sent, observed, deadline, events)


async def _enter_slot(
    gateway: _Gateway, route: str, deadline: float, stack: AsyncExitStack
) -> None:
    limiter = gateway.limiters[route]
    try:
        async with asyncio.timeout_at(deadline):
            await stack.enter_async_context(limiter.slot())
    except TimeoutError as exc:
        raise DeadlineError("The request timed out while waiting in the queue.") from exc
    except OverloadedError:
        gateway.metrics.observe_rejection(route)
        raise
    gauge = gateway.metrics.in_flight.labels(route)
    gauge.inc()
    stack.callback(gauge.dec)


async def _observed(
    gateway: _Gateway,
    route: str,
    events: AsyncIterator[tuple[int, GenerationEvent]],
    deadline: float,
    started: float,
) -> AsyncIterator[tuple[int, GenerationEvent]]:
    """``events``, each within ``deadline``, with the first token (since ``started``, the
    queue included) and the end counted in the metrics."""
    first_token_seen = False
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                item = await anext(events, None)
        except TimeoutError as exc:
            raise DeadlineError("The request timed out.") from exc
        if item is None:
            return
        event = item[1]
        if isinstance(event, Finished):
            gateway.metrics.observe_finished(route, event)
        elif (isinstance(event, ToolCallDelta) or event.text) and not first_token_seen:
            first_token_seen = True
            gateway.metrics.observe_first_token(route, time.monotonic() - started)
        yield item
