"""The OpenAPI 3.1 description of the gateway's HTTP routes, served at ``GET /openapi.json``.

Owns :func:`openapi_document` (a plain dict) and the :func:`openapi_json` handler. The request
schemas (:mod:`tightwad.gateway.openapi_requests`) say what the validator accepts, with this
gateway's own bounds (``max_tokens`` cap, ``n`` limit), so the served document is built from
the serving gateway's limits; the responses say what the gateway answers: the JSON bodies, each
SSE event of a stream (a chunk, an error event, or ``[DONE]``), and the OpenAI
``{"error": {message, type, param, code}}`` body of every failure, with ``Retry-After`` on a
503. The document is a contract for clients and the input of the hardening fuzzers
(``tests/hardening``, schemathesis among them); when the parser learns a field, add it there.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from aiohttp import web

from tightwad import __version__
from tightwad.gateway.openai_schema import Limits
from tightwad.gateway.openapi_parts import nullable as _nullable
from tightwad.gateway.openapi_requests import chat_request, completion_request
from tightwad.gateway.responses.openapi import RESPONSE, RESPONSE_EVENT, responses_request

__all__ = ["openapi_document", "openapi_json"]

_JSON = "application/json"
_SSE = "text/event-stream"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_USAGE = {
    "type": "object",
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
    "properties": {
        "prompt_tokens": {"type": "integer", "minimum": 0},
        "completion_tokens": {"type": "integer", "minimum": 0},
        "total_tokens": {"type": "integer", "minimum": 0},
    },
}
_FINISH = {"enum": ["stop", "length", "tool_calls", "content_filter"]}
_STATS = {"type": "object", "description": "speculation statistics of this request"}
_TOOL_CALL = {
    "type": "object",
    "required": ["id", "type", "function"],
    "properties": {
        "id": {"type": "string"},
        "type": {"const": "function"},
        "function": {
            "type": "object",
            "required": ["name", "arguments"],
            "properties": {"name": {"type": "string"}, "arguments": {"type": "string"}},
        },
    },
}
# A streamed tool call: the id, type and name once, then pieces of the arguments.
_TOOL_CALL_DELTA = {
    "type": "object",
    "required": ["index"],
    "properties": {
        "index": {"type": "integer", "minimum": 0},
        "id": {"type": "string"},
        "type": {"const": "function"},
        "function": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "arguments": {"type": "string"}},
        },
    },
}


def _envelope(obj: str, choice: dict[str, Any], *, usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": obj},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "system_fingerprint": {"type": "string"},
            "choices": {"type": "array", "items": choice},
            "usage": usage,
            "tightwad": _STATS,
        },
    }


def _choice(required: list[str], **properties: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["index", *required],
        "properties": {"index": {"type": "integer", "minimum": 0}, **properties},
    }


_CHAT_RESPONSE = _envelope(
    "chat.completion",
    _choice(
        ["message", "finish_reason"],
        message={
            "type": "object",
            "required": ["role", "content"],
            "properties": {
                "role": {"const": "assistant"},
                "content": _nullable({"type": "string"}),
                "refusal": {"type": "null"},
                "tool_calls": {"type": "array", "items": _TOOL_CALL},
            },
        },
        logprobs=_nullable({"type": "object"}),
        finish_reason=_FINISH,
    ),
    usage=_USAGE,
)
_CHAT_CHUNK = _envelope(
    "chat.completion.chunk",
    _choice(
        ["delta", "finish_reason"],
        delta={
            "type": "object",
            "properties": {
                "role": {"const": "assistant"},
                "content": _nullable({"type": "string"}),
                "tool_calls": {"type": "array", "items": _TOOL_CALL_DELTA},
            },
        },
        logprobs=_nullable({"type": "object"}),
        finish_reason=_nullable(_FINISH),
    ),
    usage=_nullable(_USAGE),
)
_COMPLETION_RESPONSE = _envelope(
    "text_completion",
    _choice(
        ["text", "finish_reason"],
        text={"type": "string"},
        logprobs=_nullable({"type": "object"}),
        finish_reason=_FINISH,
    ),
    usage=_USAGE,
)
_COMPLETION_CHUNK = _envelope(
    "text_completion",
    _choice(
        ["text", "finish_reason"],
        text={"type": "string"},
        logprobs=_nullable({"type": "object"}),
        finish_reason=_nullable(_FINISH),
    ),
    usage=_nullable(_USAGE),
)

_MODEL = {
    "type": "object",
    "required": ["id", "object", "created", "owned_by"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "model"},
        "created": {"type": "integer"},
        "owned_by": {"type": "string"},
        "tightwad": {
            "type": "object",
            "required": ["state", "ready"],
            "properties": {
                "state": {"type": "string", "description": "serving, not_ready, or why not"},
                "ready": {"type": "boolean"},
                "retry_after_s": {"type": "number"},
            },
            "description": "the route's state: a known route that does not serve answers 503",
        },
    },
}

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": _nullable({"type": "string"}),
                "code": _nullable({"type": "string"}),
            },
        }
    },
}

_STATUS = {
    "type": "object",
    "required": ["object", "started", "uptime_s", "routes", "totals"],
    "properties": {
        "object": {"const": "tightwad.status"},
        "started": {"type": "integer"},
        "uptime_s": {"type": "number"},
        "routes": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "ready", "in_flight", "queued"],
                "properties": {
                    "name": {"type": "string"},
                    "target": {"type": "string"},
                    "draft_mode": {"type": "string"},
                    "draft": _nullable({"type": "string"}),
                    "ready": {"type": "boolean"},
                    "n_ctx": {"type": "integer"},
                    "can_verify": {"type": "boolean"},
                    "details": {"type": "object"},
                    "in_flight": {"type": "integer"},
                    "queued": {"type": "integer"},
                },
            },
        },
        "totals": {"type": "object"},
    },
}


def _sse_event(chunk: str) -> dict[str, Any]:
    """One server-sent event of a stream: a chunk, an error (the stream then ends without
    ``[DONE]``), or the final ``[DONE]``."""
    json_data = {
        "type": "string",
        "contentMediaType": _JSON,
        "contentSchema": {"anyOf": [_ref(chunk), _ref("Error")]},
    }
    return {
        "type": "object",
        "required": ["data"],
        "properties": {"data": {"anyOf": [{"const": "[DONE]"}, json_data]}},
    }


def _json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    refs = {str(s): {"$ref": f"#/components/responses/E{s}"} for s in statuses}
    return refs | {"default": _json_body(_ref("Error"), "any other error (OpenAI error body)")}


_GENERATION_ERRORS = (400, 401, 404, 408, 413, 429, 503, 504)


def _generation(
    summary: str, request: str, response: str, chunk: str, *, events: bool = False
) -> dict[str, Any]:
    sse = _sse_event(chunk)
    described = (
        "the completion (JSON), or SSE events when stream is true; "
        'an error after the stream started is one `data: {"error": ...}` event'
    )
    if events:  # the Responses API: `event: <type>` + `data: <event>`, no [DONE]
        sse = {
            "type": "object",
            "required": ["event", "data"],
            "properties": {
                "event": {"type": "string"},
                "data": {
                    "type": "string",
                    "contentMediaType": _JSON,
                    "contentSchema": _ref(chunk),
                },
            },
        }
        described = (
            "the Response (JSON), or its SSE events when stream is true, ending with "
            "response.completed / response.incomplete, or error then response.failed"
        )
    return {
        "post": {
            "summary": summary,
            "security": [{"bearer": []}],
            "requestBody": {
                "required": True,
                "content": {_JSON: {"schema": _ref(request)}},
            },
            "responses": {
                "200": {
                    "description": described,
                    "content": {_JSON: {"schema": _ref(response)}, _SSE: {"schema": sse}},
                },
                **_errors(*_GENERATION_ERRORS),
            },
        }
    }


def _get(
    summary: str, ok: dict[str, Any], *errors: int, open_route: bool = False
) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "responses": {"200": ok, **_errors(*errors)}}
    operation["security"] = [] if open_route else [{"bearer": []}]
    return {"get": operation}


_REASONS = {
    400: "invalid request; `code` names the problem (e.g. context_length_exceeded)",
    401: "missing or wrong API key",
    403: "client address outside the operator allow-list",
    404: "a model never configured (or removed), or an unknown URL",
    408: "the request body did not arrive in time",
    413: "request body too large",
    429: "the route's queue is full or its engine is busy; retry after",
    500: "internal error",
    503: "the route is known but does not serve now (its state is named); retry after",
    504: "deadline exceeded",
}


def _error_response(status: int) -> dict[str, Any]:
    response = _json_body(_ref("Error"), _REASONS[status])
    if status in (429, 503):
        response["headers"] = {
            "Retry-After": {
                "description": "seconds until the route is expected to serve again"
                if status == 503
                else "seconds after which a retry may find a free slot",
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
            }
        }
    return response


@functools.cache
def _document(limits: Limits) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tightwad gateway",
            "version": __version__,
            "description": "OpenAI-compatible endpoint over a pool of machines.",
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/chat/completions": _generation(
                "Chat completion", "ChatCompletionRequest", "ChatCompletion", "ChatCompletionChunk"
            ),
            "/v1/completions": _generation(
                "Legacy text completion", "CompletionRequest", "Completion", "CompletionChunk"
            ),
            "/v1/responses": _generation(
                "Responses API (stateless: nothing is stored)",
                "ResponsesRequest",
                "Response",
                "ResponseStreamEvent",
                events=True,
            ),
            "/v1/models": _get(
                "The configured routes, as OpenAI models (each with its state)",
                _json_body(
                    {
                        "type": "object",
                        "required": ["object", "data"],
                        "properties": {
                            "object": {"const": "list"},
                            "data": {"type": "array", "items": _ref("Model")},
                        },
                    },
                    "the model list",
                ),
                401,
            ),
            "/v1/models/{model_id}": {
                **_get("One model", _json_body(_ref("Model"), "the model"), 401, 404),
                "parameters": [
                    {
                        "name": "model_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
            },
            "/v1/tightwad/status": _get(
                "Routes, in-flight counts and totals (token + network allow-list)",
                _json_body(_ref("Status"), "the status report"),
                401,
                403,
            ),
            "/metrics": _get(
                "Prometheus metrics (token + network allow-list)",
                {
                    "description": "Prometheus text exposition",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                401,
                403,
            ),
            "/healthz": _get(
                "Liveness: 200 while the process is up",
                _json_body({"type": "object", "properties": {"status": {"const": "ok"}}}, "alive"),
                open_route=True,
            ),
            "/readyz": _get(
                "Readiness: 200 when every route is ready, else 503",
                _json_body(_ref("Ready"), "every route is ready"),
                503,
                open_route=True,
            ),
            "/openapi.json": _get(
                "This document",
                _json_body({"type": "object"}, "the OpenAPI description"),
                401,
            ),
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "ChatCompletionRequest": chat_request(limits),
                "CompletionRequest": completion_request(limits),
                "ChatCompletion": _CHAT_RESPONSE,
                "ChatCompletionChunk": _CHAT_CHUNK,
                "Completion": _COMPLETION_RESPONSE,
                "CompletionChunk": _COMPLETION_CHUNK,
                "ResponsesRequest": responses_request(limits),
                "Response": RESPONSE,
                "ResponseStreamEvent": RESPONSE_EVENT,
                "Model": _MODEL,
                "Status": _STATUS,
                "Ready": {
                    "type": "object",
                    "required": ["ready", "not_ready"],
                    "properties": {
                        "ready": {"type": "boolean"},
                        "not_ready": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "Error": _ERROR,
            },
            "responses": {f"E{s}": _error_response(s) for s in _REASONS},
        },
    }


def openapi_document(limits: Limits | None = None) -> dict[str, Any]:
    """A fresh copy of the OpenAPI 3.1 description of a gateway with ``limits`` (default: the
    parser's defaults)."""
    return copy.deepcopy(_document(limits or Limits()))


async def openapi_json(request: web.Request) -> web.Response:
    """``GET /openapi.json``: the description, with the serving gateway's own limits."""
    from tightwad.gateway.api import gateway_limits  # api registers this handler

    return web.json_response(_document(gateway_limits(request)))
