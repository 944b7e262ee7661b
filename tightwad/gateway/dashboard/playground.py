"""The dashboard's chat playground: one chat, streamed token group by token group with where
each group came from.

Owns :func:`chat` (``POST /dashboard/api/chat``). The body is a chat completions body (the
API's own validation, :func:`~tightwad.gateway.openai_schema.parse_chat`; tools and
``response_format`` are refused here, the playground shows text); the route's Backend is called
directly, inside the route's own concurrency slot and the gateway's request timeout. The answer
is Server-Sent Events, each ``data: {...}`` one of:

- ``{"type": "delta", "text", "origin", "round", "tokens"}``: new text, where its tokens came
  from (``draft``: draft tokens the target accepted; ``target``: the target's own token that
  ends a verified round, its correction or bonus; ``plain``: a plain decoding step;
  ``forced``: tokens a grammar forced) and the verify round (0 outside rounds);
- ``{"type": "finished", "finish_reason", "usage", "stats"}``: the reply's ``tightwad`` stats;
- ``{"type": "error", "error": {...}}``: an OpenAI error body, after the stream started.

An error before the first event is an ordinary OpenAI error response. The playground's tokens
feed the dashboard's history live (by origin); they do not go to ``/metrics``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from tightwad.errors import (
    DeadlineError,
    InvalidRequestError,
    TightwadError,
    UnsupportedParameterError,
)
from tightwad.gateway.api import GATEWAY
from tightwad.gateway.dashboard.site import DASHBOARD
from tightwad.gateway.openai_schema import parse_chat, parse_json_object
from tightwad.gateway.sse import SSEWriter
from tightwad.gateway.types import Finished, GenerationEvent, TextDelta
from tightwad.logs import get_logger

__all__ = ["ORIGINS", "chat", "event_frame"]

log = get_logger(__name__)

ORIGINS = ("draft", "target", "plain", "forced")


def event_frame(event: GenerationEvent) -> dict[str, Any] | None:
    """The playground's frame for one Backend event (None: nothing to show)."""
    if isinstance(event, Finished):
        usage = event.usage
        return {
            "type": "finished",
            "finish_reason": event.finish_reason,
            "usage": {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
            },
            "stats": event.stats.as_json(),
        }
    if not isinstance(event, TextDelta) or not (event.text or event.token_ids):
        return None
    origin = event.origin if event.origin in ORIGINS else "plain"
    return {
        "type": "delta",
        "text": event.text,
        "origin": origin,
        "round": int(event.round or 0),
        "tokens": len(event.token_ids),
    }


async def _body(request: web.Request) -> dict[str, Any]:
    gateway = request.app[GATEWAY]
    limit = gateway.max_body
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    try:
        raw = await asyncio.wait_for(request.read(), gateway.settings.body_timeout_s)
    except TimeoutError:
        raise web.HTTPRequestTimeout() from None
    return parse_json_object(raw)


async def chat(request: web.Request) -> web.StreamResponse:
    gateway, dashboard = request.app[GATEWAY], request.app[DASHBOARD]
    body = await _body(request)
    if body.get("stream") is False:
        raise InvalidRequestError("The playground only streams.", param="stream")
    body.pop("stream", None)
    parsed = parse_chat(body, gateway.limits, "dash-" + uuid.uuid4().hex)
    r = parsed.request
    if r.grammar is not None or r.tools:
        raise UnsupportedParameterError(
            "The playground shows text: send tools and response_format to the API.",
            param="tools" if r.tools else "response_format",
        )
    backend = gateway.backend(r.model)
    limiter = gateway.limiters.get(r.model)
    if limiter is None:
        raise TightwadError(f"Route {r.model} has no limiter.")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + gateway.settings.request_timeout_s
    writer: SSEWriter | None = None
    try:
        async with asyncio.timeout_at(deadline), limiter.slot():
            events = backend.generate(r)
            try:
                first = await anext(events, None)
                if first is None:
                    raise TightwadError("The backend ended the generation without finishing it.")
                writer = SSEWriter(request)
                await writer.prepare()
                await _pump(writer, first, events, lambda e: dashboard.history.observe(r.model, e))
            finally:
                aclose = getattr(events, "aclose", None)
                if aclose is not None:
                    await aclose()
    except TimeoutError as exc:
        if writer is None:
            raise DeadlineError("The request timed out.") from exc
        await _send_error(writer, DeadlineError("The request timed out."))
    return writer.response


async def _pump(
    writer: SSEWriter,
    event: GenerationEvent | None,
    events: AsyncIterator[GenerationEvent],
    observe: Callable[[GenerationEvent], None],
) -> None:
    try:
        while event is not None:
            observe(event)
            frame = event_frame(event)
            if frame is not None:
                await writer.send(frame)
            if isinstance(event, Finished):
                await writer.done()
                return
            event = await anext(events, None)
        raise TightwadError("The backend ended the generation without finishing it.")
    except ConnectionResetError:
        log.info("dashboard_chat_client_left")
    except Exception as exc:
        if not isinstance(exc, TightwadError):
            log.error("dashboard_chat_failed", exc_info=exc)
        await _send_error(writer, exc)


async def _send_error(writer: SSEWriter, exc: Exception) -> None:
    if isinstance(exc, TightwadError):
        body = exc.openai_body()
    else:
        message = "The server had an error while processing your request."
        body = {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
    try:
        await writer.send({"type": "error", **body})
        await writer.end()
    except ConnectionResetError:
        log.info("dashboard_chat_client_left")
