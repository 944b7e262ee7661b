"""The OpenAPI description of ``POST /v1/responses``: its request body (what
:func:`~tightwad.gateway.responses.request.parse_responses` accepts, with the serving gateway's
``max_output_tokens`` cap), the Response object and its streamed events.

As for chat (:mod:`tightwad.gateway.openapi_requests`), the rules JSON Schema cannot state are
said in descriptions only: tool names are unique, a ``tool_choice`` naming a function names one
of ``tools``, a ``function_call_output`` answers a ``function_call`` earlier in ``input``, a
JSON Schema (``tools[].parameters``, ``text.format.schema``) must be one llguidance compiles,
and the input must fit the route's context. The stateful fields (``previous_response_id``,
``conversation``, ``prompt``, ``background: true``, ...) are published as ``null`` only: this
gateway is stateless.
"""

from __future__ import annotations

from typing import Any

from tightwad.gateway.openai_fields import INT64_MAX, INT64_MIN
from tightwad.gateway.openai_schema import Limits
from tightwad.gateway.openapi_parts import (
    ARGUMENTS,
    FUNCTION_FIELDS,
    JSON_SCHEMA,
    NAME,
    TEXT_OR_JSON_OBJECT,
    closed,
    json_schema_fields,
    nullable,
    requires,
)
from tightwad.gateway.responses.request import MIN_OUTPUT_TOKENS

__all__ = ["RESPONSE", "RESPONSE_EVENT", "responses_request"]

_ANY: dict[str, Any] = {}
_STATEFUL = (
    "previous_response_id", "conversation", "prompt", "context_management",
    "background_options", "moderation", "access_programs", "image",
)  # fmt: skip


def _part(kind: str, key: str = "text") -> dict[str, Any]:
    return closed(
        ["type", key],
        **{"type": {"const": kind}, key: {"type": "string"}, "annotations": _ANY, "logprobs": _ANY},
    )


def _content(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [{"type": "string"}, {"type": "array", "items": {"anyOf": list(parts)}}]}


def _message(roles: list[str], content: dict[str, Any]) -> dict[str, Any]:
    return closed(
        ["role", "content"],
        type={"const": "message"},
        role={"enum": roles},
        content=content,
        id=_ANY,
        status=_ANY,
        phase=_ANY,
    )


_CALL_ID = {"type": "string", "minLength": 1}
_ITEM = {
    "anyOf": [
        _message(["user", "system", "developer"], _content(_part("input_text"))),
        _message(["assistant"], _content(_part("output_text"), _part("refusal", "refusal"))),
        closed(
            ["type", "call_id", "name", "arguments"],
            type={"const": "function_call"},
            call_id=_CALL_ID,
            name=NAME,
            arguments=ARGUMENTS,
            id=_ANY,
            status=_ANY,
            namespace=_ANY,
        ),
        closed(
            ["type", "call_id", "output"],
            type={"const": "function_call_output"},
            call_id={**_CALL_ID, "description": "a function_call earlier in input"},
            output=_content(_part("input_text")),
            id=_ANY,
            status=_ANY,
        ),
    ]
}
_TOOL = closed(["type", "name"], type={"const": "function"}, **FUNCTION_FIELDS)
_FORMAT = {
    "oneOf": [
        TEXT_OR_JSON_OBJECT,
        closed(
            ["type", "name", "schema"],
            type={"const": "json_schema"},
            **json_schema_fields(JSON_SCHEMA),
        ),
    ]
}


def responses_request(limits: Limits) -> dict[str, Any]:
    """``POST /v1/responses``'s body."""
    cap = limits.max_tokens_cap
    stateful = {
        key: {"type": "null", "description": "not supported: this server is stateless"}
        for key in _STATEFUL
    }
    return {
        "type": "object",
        "required": ["model", "input"],
        "additionalProperties": False,
        "properties": {
            "model": {"type": "string", "minLength": 1, "description": "a route (GET /v1/models)"},
            "input": {
                "anyOf": [
                    {"type": "string", "description": "one user message"},
                    {"type": "array", "minItems": 1, "items": _ITEM},
                ]
            },
            "instructions": nullable({"type": "string"}),
            "max_output_tokens": nullable(
                {
                    "type": "integer",
                    "minimum": MIN_OUTPUT_TOKENS,
                    "maximum": cap,
                    "description": f"at least {MIN_OUTPUT_TOKENS} (OpenAI's minimum), at most "
                    f"this gateway's cap ({cap})",
                }
            ),
            "temperature": nullable({"type": "number", "minimum": 0, "maximum": 2}),
            "top_p": nullable({"type": "number", "exclusiveMinimum": 0, "maximum": 1}),
            "tools": nullable(
                {"type": "array", "items": _TOOL, "description": "function names are unique"}
            ),
            "tool_choice": nullable(
                {
                    "anyOf": [
                        {"enum": ["none", "auto", "required"]},
                        {
                            **closed(["type", "name"], type={"const": "function"}, name=NAME),
                            "description": "names one of `tools`",
                        },
                    ]
                }
            ),
            "parallel_tool_calls": nullable({"type": "boolean"}),
            "max_tool_calls": nullable({"type": "integer", "minimum": 1}),
            "text": nullable(
                {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "format": nullable(_FORMAT),
                        "verbosity": nullable({"enum": ["low", "medium", "high"]}),
                    },
                }
            ),
            "stream": nullable({"type": "boolean"}),
            "stream_options": nullable({"type": "object"}),
            "top_logprobs": nullable({"type": "integer", "minimum": 0, "maximum": 20}),
            "include": nullable({"type": "array", "items": {"type": "string"}}),
            "prediction": nullable(
                closed(
                    ["type", "content"],
                    type={"const": "content"},
                    content=_content(_part("input_text"), _part("text")),
                )
            ),
            "seed": nullable({"type": "integer", "minimum": INT64_MIN, "maximum": INT64_MAX}),
            "store": nullable({"type": "boolean", "description": "nothing is ever stored"}),
            "metadata": nullable({"type": "object", "additionalProperties": {"type": "string"}}),
            "user": nullable({"type": "string"}),
            "safety_identifier": nullable({"type": "string"}),
            "prompt_cache_key": nullable({"type": "string"}),
            "prompt_cache_retention": {"description": "accepted and ignored"},
            "prompt_cache_options": {"description": "accepted and ignored"},
            "service_tier": {"description": "accepted and ignored (one tier)"},
            "reasoning": nullable({"type": "object", "description": "accepted and ignored"}),
            "truncation": nullable({"const": "disabled"}),
            "background": {"enum": [False, None], "description": "background is not supported"},
            **stateful,
        },
        "allOf": [
            requires("stream_options", {"not": {"type": "null"}}, "stream", True),
            {  # tool_choice other than none needs tools
                "if": {
                    "required": ["tool_choice"],
                    "properties": {"tool_choice": {"not": {"enum": ["none", None]}}},
                },
                "then": {
                    "required": ["tools"],
                    "properties": {"tools": {"type": "array", "minItems": 1}},
                },
            },
        ],
    }


_OUTPUT_ITEM = {
    "anyOf": [
        {
            "type": "object",
            "required": ["id", "type", "status", "role", "content"],
            "properties": {
                "id": {"type": "string"},
                "type": {"const": "message"},
                "status": {"enum": ["in_progress", "completed", "incomplete"]},
                "role": {"const": "assistant"},
                "content": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["type", "text"],
                        "properties": {
                            "type": {"const": "output_text"},
                            "text": {"type": "string"},
                            "annotations": {"type": "array"},
                            "logprobs": {"type": "array"},
                        },
                    },
                },
            },
        },
        {
            "type": "object",
            "required": ["id", "type", "status", "call_id", "name", "arguments"],
            "properties": {
                "id": {"type": "string"},
                "type": {"const": "function_call"},
                "status": {"enum": ["in_progress", "completed", "incomplete"]},
                "call_id": {"type": "string"},
                "name": {"type": "string"},
                "arguments": {"type": "string"},
            },
        },
    ]
}
_COUNT = {"type": "integer", "minimum": 0}
_USAGE = {
    "type": "object",
    "required": ["input_tokens", "output_tokens", "total_tokens"],
    "properties": {
        "input_tokens": _COUNT,
        "input_tokens_details": {"type": "object"},
        "output_tokens": _COUNT,
        "output_tokens_details": {"type": "object"},
        "total_tokens": _COUNT,
    },
}
RESPONSE = {
    "type": "object",
    "required": ["id", "object", "created_at", "status", "model", "output"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "response"},
        "created_at": {"type": "integer"},
        "status": {"enum": ["in_progress", "completed", "incomplete", "failed"]},
        "completed_at": nullable({"type": "integer"}),
        "error": nullable({"type": "object"}),
        "incomplete_details": nullable({"type": "object"}),
        "model": {"type": "string"},
        "output": {"type": "array", "items": _OUTPUT_ITEM},
        "usage": nullable(_USAGE),
        "tightwad": {"type": "object", "description": "speculation statistics of this request"},
    },
}
RESPONSE_EVENT = {
    "type": "object",
    "required": ["type", "sequence_number"],
    "properties": {
        "type": {
            "type": "string",
            "description": "response.created, response.in_progress, response.output_item.added, "
            "response.content_part.added, response.output_text.delta ... .done, "
            "response.content_part.done, response.output_item.done (function calls: "
            "response.function_call_arguments.delta/.done), then response.completed or "
            "response.incomplete; after a failure: error, then response.failed",
        },
        "sequence_number": {"type": "integer", "minimum": 0},
        "response": {"$ref": "#/components/schemas/Response"},
    },
}
