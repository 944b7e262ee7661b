"""The OpenAPI 3.1 description of the gateway's HTTP routes, served at ``GET /openapi.json``.

Owns :func:`openapi_document` (a plain dict, built once) and the :func:`openapi_json` handler.
The request schemas mirror what :mod:`tightwad.gateway.openai_schema` accepts (field names,
types, bounds; ``additionalProperties: false`` as the parser refuses unknown fields); the error
body is the OpenAI ``{"error": {message, type, param, code}}`` every failure returns. The
document is a contract for clients and the input of the hardening fuzzer
(``tests/hardening``); when the parser learns a field, add it here.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from aiohttp import web

from tightwad import __version__

__all__ = ["openapi_document", "openapi_json"]

_JSON = "application/json"
_SSE = "text/event-stream"


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_TEXT_PART = {
    "type": "object",
    "required": ["type", "text"],
    "additionalProperties": False,
    "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
}
_CONTENT = {"anyOf": [{"type": "string"}, {"type": "array", "items": _TEXT_PART}]}

_COMMON_PROPERTIES: dict[str, Any] = {
    "model": {"type": "string", "minLength": 1, "description": "a route name (GET /v1/models)"},
    "stream": _nullable({"type": "boolean"}),
    "stream_options": _nullable(
        {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "include_usage": {"type": "boolean"},
                "include_obfuscation": {"type": "boolean"},
            },
        }
    ),
    "max_tokens": _nullable(
        {"type": "integer", "minimum": 1, "description": "at most the gateway's cap"}
    ),
    "max_completion_tokens": _nullable({"type": "integer", "minimum": 1}),
    "temperature": _nullable({"type": "number", "minimum": 0, "maximum": 2}),
    "top_p": _nullable({"type": "number", "exclusiveMinimum": 0, "maximum": 1}),
    "top_k": _nullable({"type": "integer", "minimum": 0}),
    "min_p": _nullable({"type": "number", "minimum": 0, "maximum": 1}),
    "repeat_penalty": _nullable({"type": "number", "exclusiveMinimum": 0}),
    "penalty_last_n": _nullable({"type": "integer", "minimum": -1}),
    "presence_penalty": _nullable({"type": "number", "minimum": -2, "maximum": 2}),
    "frequency_penalty": _nullable({"type": "number", "minimum": -2, "maximum": 2}),
    "logit_bias": _nullable(
        {
            "type": "object",
            "propertyNames": {"pattern": "^[0-9]+$"},
            "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
        }
    ),
    "seed": _nullable({"type": "integer"}),
    "stop": _nullable(
        {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}, "maxItems": 4},
            ]
        }
    ),
    "prediction": _nullable(
        {
            "type": "object",
            "required": ["type", "content"],
            "additionalProperties": False,
            "properties": {"type": {"const": "content"}, "content": _CONTENT},
        }
    ),
    "user": _nullable({"type": "string"}),
    "n": _nullable({"type": "integer", "const": 1}),
}

_MESSAGE = {
    "type": "object",
    "required": ["role"],
    "additionalProperties": False,
    "properties": {
        "role": {"enum": ["system", "user", "assistant", "developer"]},
        "content": _nullable(_CONTENT),
        "name": _nullable({"type": "string"}),
        "refusal": _nullable({"type": "string"}),
    },
}

_CHAT_REQUEST = {
    "type": "object",
    "required": ["model", "messages"],
    "additionalProperties": False,
    "properties": {
        **_COMMON_PROPERTIES,
        "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
        "logprobs": _nullable({"type": "boolean"}),
        "top_logprobs": _nullable({"type": "integer", "minimum": 0, "maximum": 20}),
        "parallel_tool_calls": _nullable({"type": "boolean"}),
        "tools": _nullable({"type": "array", "maxItems": 0}),
        "tool_choice": _nullable({"const": "none"}),
        "functions": _nullable({"type": "array", "maxItems": 0}),
        "function_call": _nullable({"const": "none"}),
        "response_format": _nullable(
            {"type": "object", "properties": {"type": {"const": "text"}}, "required": ["type"]}
        ),
        "modalities": _nullable({"type": "array", "items": {"const": "text"}}),
    },
}

_TOKENS = {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}}
_COMPLETION_REQUEST = {
    "type": "object",
    "required": ["model", "prompt"],
    "additionalProperties": False,
    "properties": {
        **_COMMON_PROPERTIES,
        "prompt": {
            "anyOf": [
                {"type": "string"},
                _TOKENS,
                {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1},
                {"type": "array", "items": _TOKENS, "minItems": 1, "maxItems": 1},
            ]
        },
        "logprobs": _nullable({"type": "integer", "minimum": 0, "maximum": 5}),
        "echo": _nullable({"type": "boolean"}),
        "best_of": _nullable({"const": 1}),
        "suffix": _nullable({"const": ""}),
    },
}

_USAGE = {
    "type": "object",
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
    "properties": {
        "prompt_tokens": {"type": "integer"},
        "completion_tokens": {"type": "integer"},
        "total_tokens": {"type": "integer"},
    },
}
_FINISH = _nullable({"enum": ["stop", "length", "content_filter"]})

_CHAT_RESPONSE = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "chat.completion"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["index", "message", "finish_reason"],
                "properties": {
                    "index": {"type": "integer"},
                    "message": {
                        "type": "object",
                        "required": ["role", "content"],
                        "properties": {
                            "role": {"const": "assistant"},
                            "content": _nullable({"type": "string"}),
                        },
                    },
                    "logprobs": _nullable({"type": "object"}),
                    "finish_reason": _FINISH,
                },
            },
        },
        "usage": _USAGE,
        "tightwad": {"type": "object", "description": "speculation statistics"},
    },
}

_COMPLETION_RESPONSE = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "text_completion"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["index", "text", "finish_reason"],
                "properties": {
                    "index": {"type": "integer"},
                    "text": {"type": "string"},
                    "logprobs": _nullable({"type": "object"}),
                    "finish_reason": _FINISH,
                },
            },
        },
        "usage": _USAGE,
    },
}

_MODEL = {
    "type": "object",
    "required": ["id", "object", "created", "owned_by"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "model"},
        "created": {"type": "integer"},
        "owned_by": {"type": "string"},
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


def _json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    refs = {str(s): {"$ref": f"#/components/responses/E{s}"} for s in statuses}
    return refs | {"default": _json_body(_ref("Error"), "any other error (OpenAI error body)")}


_GENERATION_ERRORS = (400, 401, 404, 413, 429, 503, 504)


def _generation(summary: str, request: str, response: str) -> dict[str, Any]:
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
                    "description": "the completion (JSON), or SSE chunks when stream is true; "
                    'an error after the stream started is one `data: {"error": ...}` event',
                    "content": {
                        _JSON: {"schema": _ref(response)},
                        _SSE: {"schema": {"type": "string"}},
                    },
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


@functools.cache
def _document() -> dict[str, Any]:
    statuses = (400, 401, 403, 404, 413, 429, 500, 503, 504)
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
                "Chat completion", "ChatCompletionRequest", "ChatCompletion"
            ),
            "/v1/completions": _generation(
                "Legacy text completion", "CompletionRequest", "Completion"
            ),
            "/v1/models": _get(
                "The served routes, as OpenAI models",
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
                "ChatCompletionRequest": _CHAT_REQUEST,
                "CompletionRequest": _COMPLETION_REQUEST,
                "ChatCompletion": _CHAT_RESPONSE,
                "Completion": _COMPLETION_RESPONSE,
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
            "responses": {f"E{s}": _json_body(_ref("Error"), _errors_reason(s)) for s in statuses},
        },
    }


def _errors_reason(status: int) -> str:
    return {
        400: "invalid request; `code` names the problem (e.g. context_length_exceeded)",
        401: "missing or wrong API key",
        403: "client address outside the operator allow-list",
        404: "unknown model or URL",
        413: "request body too large",
        429: "queue full",
        500: "internal error",
        503: "not available",
        504: "deadline exceeded",
    }[status]


def openapi_document() -> dict[str, Any]:
    """A fresh copy of the gateway's OpenAPI 3.1 description."""
    return copy.deepcopy(_document())


async def openapi_json(request: web.Request) -> web.Response:
    """``GET /openapi.json``."""
    return web.json_response(_document())
