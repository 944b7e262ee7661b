"""JSON Schemas of the request bodies the gateway accepts, as :mod:`~tightwad.gateway.openapi`
publishes them.

Each schema says what :mod:`tightwad.gateway.openai_schema` (with
:mod:`tightwad.gateway.tools.request` and :mod:`tightwad.gateway.structured`) accepts: field
names (``additionalProperties: false``: the parser refuses unknown fields), types, bounds (the
gateway's own ``max_tokens`` cap and ``n`` limit), the fields accepted only at their neutral
value, and the rules that tie fields together (``stream_options`` needs ``stream``,
``top_logprobs`` needs ``logprobs``, ``metadata`` needs ``store``, ``best_of`` equals ``n``,
``content`` is required but in assistant messages) as ``if``/``then``. The rules JSON Schema
cannot state are said in descriptions only: tool names are unique and a ``tool_choice`` naming
a function names one of ``tools``; a ``tool`` message answers a call an earlier assistant
message made; tool-call ``arguments`` are the JSON text of an object; a JSON Schema given as
``parameters`` or ``json_schema.schema`` must be one llguidance compiles; token ids (prompt,
``logit_bias``) must be in the route's vocabulary and a prompt must fit its context.
"""

from __future__ import annotations

from typing import Any

from tightwad.gateway.openai_fields import FLOAT32_MAX, INT32_MAX, INT64_MAX, INT64_MIN
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

__all__ = ["chat_request", "completion_request"]


def _only_null(description: str) -> dict[str, Any]:
    return {"type": "null", "description": description}


# A token id (a logit_bias key): a decimal integer from 0 to 2^31 - 1, leading zeros allowed.
_TOKEN_ID_PATTERN = (
    "^0*([0-9]{1,9}|1[0-9]{9}|20[0-9]{8}|21[0-3][0-9]{7}|214[0-6][0-9]{6}|2147[0-3][0-9]{5}"
    "|21474[0-7][0-9]{4}|214748[0-2][0-9]{3}|2147483[0-5][0-9]{2}|21474836[0-3][0-9]"
    "|214748364[0-7])$"
)
_TOKEN_ID = {"type": "integer", "minimum": 0, "maximum": INT32_MAX}
_TEXT_PART = closed(["type", "text"], type={"const": "text"}, text={"type": "string"})
_CONTENT = {"anyOf": [{"type": "string"}, {"type": "array", "items": _TEXT_PART}]}


def _enum(*values: str) -> dict[str, Any]:
    return nullable({"enum": list(values)})


def _common(limits: Limits) -> dict[str, Any]:
    cap = limits.max_tokens_cap
    tokens = {"type": "integer", "minimum": 1, "maximum": cap}
    return {
        "model": {"type": "string", "minLength": 1, "description": "a route (GET /v1/models)"},
        "stream": nullable({"type": "boolean"}),
        "stream_options": nullable(
            {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "include_usage": nullable({"type": "boolean"}),
                    "include_obfuscation": nullable({"type": "boolean"}),
                },
            }
        ),
        "max_tokens": nullable({**tokens, "description": f"at most this gateway's cap ({cap})"}),
        "max_completion_tokens": nullable(tokens),
        "temperature": nullable({"type": "number", "minimum": 0, "maximum": 2}),
        "top_p": nullable({"type": "number", "exclusiveMinimum": 0, "maximum": 1}),
        "top_k": nullable({"type": "integer", "minimum": 0, "maximum": INT32_MAX}),
        "min_p": nullable({"type": "number", "minimum": 0, "maximum": 1}),
        "repeat_penalty": nullable(
            {
                "type": "number",
                "exclusiveMinimum": 0,
                "maximum": FLOAT32_MAX,
                "description": "a 32-bit float: engines sample in float32",
            }
        ),
        "penalty_last_n": nullable({"type": "integer", "minimum": -1, "maximum": INT32_MAX}),
        "presence_penalty": nullable({"type": "number", "minimum": -2, "maximum": 2}),
        "frequency_penalty": nullable({"type": "number", "minimum": -2, "maximum": 2}),
        "logit_bias": nullable(
            {
                "type": "object",
                "propertyNames": {"pattern": _TOKEN_ID_PATTERN},
                "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
                "description": "token id -> bias; ids the model does not have are refused",
            }
        ),
        "seed": nullable({"type": "integer", "minimum": INT64_MIN, "maximum": INT64_MAX}),
        "stop": nullable(
            {
                "anyOf": [
                    {"type": "string"},
                    {"type": "array", "items": {"type": "string"}, "maxItems": 4},
                ]
            }
        ),
        "prediction": nullable(
            {
                "type": "object",
                "required": ["type", "content"],
                "additionalProperties": False,
                "properties": {"type": {"const": "content"}, "content": _CONTENT},
            }
        ),
        "user": nullable({"type": "string"}),
        "n": nullable({"type": "integer", "minimum": 1, "maximum": limits.max_choices}),
    }


_COMMON_RULES = [requires("stream_options", {"not": {"type": "null"}}, "stream", True)]

_TOOL = closed(
    ["type", "function"], type={"const": "function"}, function=closed(["name"], **FUNCTION_FIELDS)
)
_TOOL_CALL = closed(
    ["id", "function"],
    id={"type": "string", "minLength": 1},
    type={"const": "function"},
    function=closed(["name", "arguments"], name=NAME, arguments=ARGUMENTS),
)
_MESSAGE = {
    "type": "object",
    "required": ["role"],
    "additionalProperties": False,
    "properties": {
        "role": {"enum": ["system", "user", "assistant", "developer", "tool"]},
        "content": nullable(_CONTENT),
        "name": nullable({"type": "string"}),
        "refusal": {"description": "an assistant's earlier refusal; not read"},
        "tool_calls": nullable({"type": "array", "items": _TOOL_CALL}),
        "tool_call_id": nullable({"type": "string"}),
        "function_call": _only_null("not supported"),
        "audio": _only_null("not supported"),
    },
    "allOf": [
        {  # content is required (and not null) except in assistant messages
            "if": {"properties": {"role": {"not": {"const": "assistant"}}}},
            "then": {"required": ["content"], "properties": {"content": _CONTENT}},
        },
        {  # tool calls only in assistant messages
            "if": {"properties": {"role": {"not": {"const": "assistant"}}}},
            "then": {"properties": {"tool_calls": {"type": "null"}}},
        },
        {  # a tool_call_id only in tool messages, and every tool message has one
            "if": {"properties": {"role": {"const": "tool"}}},
            "then": {
                "required": ["tool_call_id"],
                "properties": {"tool_call_id": {"type": "string"}},
            },
            "else": {"properties": {"tool_call_id": {"type": "null"}}},
        },
    ],
    "description": "a tool message's tool_call_id answers a call of an earlier assistant message",
}
_FUNCTION_CHOICE = {
    **closed(
        ["type", "function"], type={"const": "function"}, function=closed(["name"], name=NAME)
    ),
    "description": "names one of `tools`",
}
_RESPONSE_FORMAT = {
    "oneOf": [
        TEXT_OR_JSON_OBJECT,
        closed(
            ["type", "json_schema"],
            type={"const": "json_schema"},
            json_schema=closed(["name"], **json_schema_fields(nullable(JSON_SCHEMA))),
        ),
    ]
}
_METADATA = {
    "type": "object",
    "maxProperties": 16,
    "propertyNames": {"maxLength": 64},
    "additionalProperties": {"type": "string", "maxLength": 512},
}
_PROMPT_CACHE_OPTIONS = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"mode": {"enum": ["implicit", "explicit"]}, "ttl": {"const": "30m"}},
}


def chat_request(limits: Limits) -> dict[str, Any]:
    """``POST /v1/chat/completions``'s body."""
    return {
        "type": "object",
        "required": ["model", "messages"],
        "additionalProperties": False,
        "properties": {
            **_common(limits),
            "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
            "logprobs": nullable({"type": "boolean"}),
            "top_logprobs": nullable({"type": "integer", "minimum": 0, "maximum": 20}),
            "tools": nullable(
                {"type": "array", "items": _TOOL, "description": "function names are unique"}
            ),
            "tool_choice": nullable(
                {"anyOf": [{"enum": ["none", "auto", "required"]}, _FUNCTION_CHOICE]}
            ),
            "parallel_tool_calls": nullable({"type": "boolean"}),
            "response_format": nullable(_RESPONSE_FORMAT),
            "functions": nullable({"type": "array", "maxItems": 0}),
            "function_call": nullable({"const": "none"}),
            "modalities": nullable({"const": ["text"]}),
            "audio": _only_null("audio output is not supported"),
            "web_search_options": _only_null("web search is not supported"),
            "moderation": _only_null("moderation is not supported"),
            "store": nullable({"type": "boolean", "description": "nothing is stored"}),
            "metadata": nullable({**_METADATA, "description": "needs store: true"}),
            "service_tier": _enum("auto", "default", "flex", "scale", "priority", "fast"),
            "prompt_cache_key": nullable({"type": "string"}),
            "prompt_cache_retention": _enum("in_memory", "24h"),
            "prompt_cache_options": nullable(_PROMPT_CACHE_OPTIONS),
            "safety_identifier": nullable({"type": "string"}),
            "reasoning_effort": _enum("none", "minimal", "low", "medium", "high", "xhigh", "max"),
            "verbosity": _enum("low", "medium", "high"),
        },
        "allOf": [
            *_COMMON_RULES,
            requires("top_logprobs", {"type": "integer", "minimum": 1}, "logprobs", True),
            requires("metadata", {"type": "object"}, "store", True),
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


_TOKENS = {"type": "array", "minItems": 1, "items": _TOKEN_ID}
_PROMPT_TEXT = {"type": "string", "minLength": 1, "description": "engines refuse an empty prompt"}


def _best_of(when: dict[str, Any], n: int) -> dict[str, Any]:
    return {"if": when, "then": {"properties": {"best_of": {"enum": [n, None]}}}}


def completion_request(limits: Limits) -> dict[str, Any]:
    """``POST /v1/completions``'s body (one prompt: a string, token ids, or a batch of one)."""
    # best_of equals n: an absent or null n is 1
    best_of = [_best_of({"properties": {"n": {"enum": [1, None]}}}, 1)] + [
        _best_of({"required": ["n"], "properties": {"n": {"const": n}}}, n)
        for n in range(2, limits.max_choices + 1)
    ]
    return {
        "type": "object",
        "required": ["model", "prompt"],
        "additionalProperties": False,
        "properties": {
            **_common(limits),
            "prompt": {
                "anyOf": [
                    _PROMPT_TEXT,
                    _TOKENS,
                    {"type": "array", "items": _PROMPT_TEXT, "minItems": 1, "maxItems": 1},
                    {"type": "array", "items": _TOKENS, "minItems": 1, "maxItems": 1},
                ]
            },
            "logprobs": nullable({"type": "integer", "minimum": 0, "maximum": 5}),
            "echo": nullable({"type": "boolean"}),
            "best_of": nullable(
                {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": limits.max_choices,
                    "description": "equal to n (larger is not supported)",
                }
            ),
            "suffix": nullable({"const": ""}),
        },
        "allOf": [*_COMMON_RULES, *best_of],
    }
