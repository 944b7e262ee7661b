"""OpenAI ``response_format`` -> a :class:`~tightwad.engine.grammar.GrammarSpec`, checked here.

Guarantees (every refusal is an :class:`~tightwad.errors.InvalidRequestError`, a 400 that never
reaches an engine):

- ``{"type": "text"}`` (or no ``response_format``) means no grammar;
- ``{"type": "json_object"}`` constrains the output to one JSON object;
- ``{"type": "json_schema", "json_schema": {"name", "schema", "strict", "description"}}``
  constrains it to the schema; a schema that is not valid JSON Schema (checked against the
  2020-12 meta-schema with ``jsonschema``) is refused naming the path inside the schema
  (``response_format.json_schema.schema.properties.age.type``), and a valid schema llguidance
  cannot compile is refused with llguidance's own message.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jsonschema

from tightwad.engine.grammar import GrammarSpec, check_grammar, json_object_spec, json_schema_spec
from tightwad.errors import InvalidRequestError

__all__ = ["check_json_schema", "parse_response_format"]

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TYPES = ("text", "json_object", "json_schema")


def parse_response_format(value: object, param: str = "response_format") -> GrammarSpec | None:
    """The grammar a ``response_format`` asks for (``None``: free text)."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidRequestError(f"'{param}' must be an object", param=param)
    kind = value.get("type")
    if kind not in _TYPES:
        raise InvalidRequestError(
            f"Invalid value for '{param}.type': {kind!r}. Supported values are: "
            + ", ".join(f"'{t}'" for t in _TYPES),
            param=f"{param}.type",
        )
    _only(value, {"type", "json_schema"} if kind == "json_schema" else {"type"}, param)
    if kind == "text":
        return None
    if kind == "json_object":
        return json_object_spec()
    return _json_schema(value.get("json_schema"), f"{param}.json_schema")


def _json_schema(value: object, param: str) -> GrammarSpec:
    if not isinstance(value, Mapping):
        raise InvalidRequestError(f"'{param}' must be an object", param=param)
    _only(value, {"name", "schema", "strict", "description"}, param)
    name = value.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidRequestError(
            f"'{param}.name' must be 1-64 letters, digits, '_' or '-'", param=f"{param}.name"
        )
    strict = value.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise InvalidRequestError(f"'{param}.strict' must be a boolean", param=f"{param}.strict")
    description = value.get("description")
    if description is not None and not isinstance(description, str):
        raise InvalidRequestError(
            f"'{param}.description' must be a string", param=f"{param}.description"
        )
    schema = value.get("schema", {})
    if schema is None:
        schema = {}
    return check_json_schema(schema, f"{param}.schema")


def check_json_schema(schema: object, param: str) -> GrammarSpec:
    """Validate ``schema`` against the JSON Schema meta-schema and compile it; the grammar."""
    if not isinstance(schema, Mapping):
        raise InvalidRequestError(f"'{param}' must be a JSON Schema object", param=param)
    schema = dict(schema)
    validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    errors = sorted(
        validator(validator.META_SCHEMA).iter_errors(schema),
        key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))),
    )
    if errors:
        err = errors[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
        raise InvalidRequestError(
            f"'{param}' is not a valid JSON Schema: at '{param}{where}': {err.message}",
            param=f"{param}{where}",
        )
    spec = json_schema_spec(schema)
    check_grammar(spec, param=param)
    return spec


def _only(value: Mapping[str, Any], allowed: set[str], param: str) -> None:
    for key in value:
        if key not in allowed:
            raise InvalidRequestError(
                f"Unrecognized request argument supplied: {param}.{key}", param=f"{param}.{key}"
            )
