"""Schema pieces the request schemas of Chat Completions, Completions
(:mod:`~tightwad.gateway.openapi_requests`) and Responses
(:mod:`~tightwad.gateway.responses.openapi`) share: closed objects (the parsers refuse unknown
fields), names, tool definitions, tool-call arguments and response formats."""

from __future__ import annotations

from typing import Any

__all__ = [
    "ARGUMENTS",
    "FUNCTION_FIELDS",
    "JSON_SCHEMA",
    "NAME",
    "TEXT_OR_JSON_OBJECT",
    "closed",
    "json_schema_fields",
    "nullable",
    "requires",
]


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def closed(required: list[str] | tuple[str, ...] = (), /, **properties: Any) -> dict[str, Any]:
    """An object of exactly ``properties`` (``additionalProperties: false``), ``required`` of
    them required."""
    schema: dict[str, Any] = {"type": "object"}
    if required:
        schema["required"] = list(required)
    return {**schema, "additionalProperties": False, "properties": properties}


def requires(field: str, when: dict[str, Any], other: str, value: object) -> dict[str, Any]:
    """``other`` must be ``value`` whenever ``field`` is present and matches ``when``."""
    return {
        "if": {"required": [field], "properties": {field: when}},
        "then": {"required": [other], "properties": {other: {"const": value}}},
    }


NAME = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}
JSON_SCHEMA = {
    "type": "object",
    "description": "a JSON Schema (2020-12) that llguidance can compile",
}
#: A tool call's ``arguments``: the JSON text of an object.
ARGUMENTS = {
    "type": "string",
    "contentMediaType": "application/json",
    "contentSchema": {"type": "object"},
    "description": "the arguments object as JSON text",
}
#: A function tool's definition (Chat Completions nests it under ``function``).
FUNCTION_FIELDS = {
    "name": NAME,
    "description": nullable({"type": "string"}),
    "parameters": nullable(JSON_SCHEMA),
    "strict": nullable({"type": "boolean"}),
}
TEXT_OR_JSON_OBJECT = closed(["type"], type={"enum": ["text", "json_object"]})


def json_schema_fields(schema: dict[str, Any]) -> dict[str, Any]:
    """A ``json_schema`` response format's fields, its ``schema`` given as ``schema``."""
    return {
        "name": NAME,
        "schema": schema,
        "strict": nullable({"type": "boolean"}),
        "description": nullable({"type": "string"}),
    }
