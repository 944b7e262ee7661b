"""``POST /v1/responses``: the aiohttp handler, thin over the chat pipeline.

Converts the body (:func:`~tightwad.gateway.responses.request.parse_responses`), runs it
through the gateway's own pipeline (:func:`~tightwad.gateway.pipeline.open_generation`: the route's
Backend, its queue slot and deadline, tools against the route, tool-call shaping, metrics), and
converts the events back (:class:`~tightwad.gateway.responses.render.ResponseAssembler`).

Guarantees: an error before the first byte is an OpenAI error body with its status (the app's
middleware); once a stream has started, a failure is an ``error`` event then
``response.failed``, and the stream ends. Every event is framed as ``event: <type>`` plus
``data: <json>``; there is no ``[DONE]`` (the Responses API ends with its terminal event).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from tightwad.errors import DeadlineError, TightwadError
from tightwad.gateway.openai_schema import ParsedRequest
from tightwad.gateway.pipeline import (
    GenerationRun,
    gateway_limits,
    open_generation,
    read_json,
    request_id_of,
)
from tightwad.gateway.responses.render import ResponseAssembler
from tightwad.gateway.responses.request import parse_responses
from tightwad.gateway.sse import SSEWriter
from tightwad.gateway.types import Finished, GenerationEvent
from tightwad.logs import get_logger

__all__ = ["create_response"]

log = get_logger(__name__)

_INCOMPLETE = "The backend ended the generation without finishing it."


async def create_response(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    request_id = request_id_of(request)
    parsed = parse_responses(body, gateway_limits(request), request_id)
    chat = ParsedRequest("chat", parsed.chat, parsed.stream, False)
    assembler = ResponseAssembler("resp_" + request_id, parsed.chat.model, parsed.echo)
    async with open_generation(request, chat) as run:
        if parsed.stream:
            return await _stream(request, run, assembler)
        return await _collect(run.events, assembler)
    raise AssertionError("unreachable")  # pragma: no cover


async def _collect(
    events: AsyncIterator[GenerationEvent], assembler: ResponseAssembler
) -> web.Response:
    async for event in events:
        if isinstance(event, Finished):
            assembler.finish(event)
            return web.json_response(assembler.response, dumps=_dumps)
        assembler.feed(event)
    raise TightwadError(_INCOMPLETE)


async def _stream(
    request: web.Request, run: GenerationRun, assembler: ResponseAssembler
) -> web.StreamResponse:
    # The first event is awaited before the response starts, so that an error the Backend
    # raises at once (context too long, engine down) is still an HTTP error with its status.
    first = await anext(run.events, None)
    if first is None:
        raise TightwadError(_INCOMPLETE)
    writer = SSEWriter(request, {"x-request-id": request_id_of(request)})
    await writer.prepare()
    try:
        await _send(writer, assembler.start())
        event: GenerationEvent | None = first
        while event is not None:
            if isinstance(event, Finished):
                await _send(writer, assembler.finish(event))
                await writer.end()
                return writer.response
            await _send(writer, assembler.feed(event))
            event = await anext(run.events, None)
        raise TightwadError(_INCOMPLETE)
    except ConnectionResetError:
        log.info("client_disconnected")
    except Exception as exc:
        await _fail(writer, assembler, exc)
    return writer.response


async def _fail(writer: SSEWriter, assembler: ResponseAssembler, exc: Exception) -> None:
    if isinstance(exc, TimeoutError):
        exc = DeadlineError("The request timed out.")
    if isinstance(exc, TightwadError):
        log.warning("stream_failed", error=exc.message, status=exc.http_status)
        error: dict[str, Any] = exc.openai_body()["error"]
    else:
        log.error("stream_failed", exc_info=exc)
        error = {"message": "The server had an error while processing your request."}
    try:
        await _send(writer, assembler.fail(error))
        await writer.end()
    except ConnectionResetError:
        log.info("client_disconnected")


async def _send(writer: SSEWriter, events: list[dict[str, Any]]) -> None:
    if not events:
        return
    frames = "".join(f"event: {e['type']}\ndata: {_dumps(e)}\n\n" for e in events)
    await writer.response.write(frames.encode())


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
