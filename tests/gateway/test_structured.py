"""response_format -> grammar: what is accepted, and the 400s for bad schemas."""

from __future__ import annotations

import json

import pytest

from tightwad.engine.grammar import GrammarSpec
from tightwad.errors import InvalidRequestError
from tightwad.gateway.structured import parse_response_format

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


def _fmt(schema: object, **extra: object) -> dict[str, object]:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, **extra}}


def test_text_and_absent_mean_no_grammar() -> None:
    assert parse_response_format(None) is None
    assert parse_response_format({"type": "text"}) is None


def test_json_object_and_schema_become_grammars() -> None:
    obj = parse_response_format({"type": "json_object"})
    assert obj == GrammarSpec("json_schema", '{"type":"object"}')
    spec = parse_response_format(_fmt(PERSON, strict=True, description="a person"))
    assert spec is not None and spec.kind == "json_schema"
    assert json.loads(spec.source) == PERSON


@pytest.mark.parametrize(
    ("value", "param", "match"),
    [
        ("json", "response_format", "must be an object"),
        ({"type": "xml"}, "response_format.type", "Supported values are"),
        ({"type": "json_object", "schema": {}}, "response_format.schema", "Unrecognized"),
        ({"type": "json_schema"}, "response_format.json_schema", "must be an object"),
        (
            {"type": "json_schema", "json_schema": {"name": "a b", "schema": PERSON}},
            "response_format.json_schema.name",
            "1-64 letters",
        ),
        (_fmt(PERSON, strict="yes"), "response_format.json_schema.strict", "boolean"),
        (_fmt([1]), "response_format.json_schema.schema", "JSON Schema object"),
    ],
)
def test_bad_envelopes_name_the_field(value: object, param: str, match: str) -> None:
    with pytest.raises(InvalidRequestError, match=match) as e:
        parse_response_format(value)
    assert e.value.param == param


def test_invalid_schema_names_the_path_inside_the_schema() -> None:
    bad = {"type": "object", "properties": {"age": {"type": "integr"}}}
    with pytest.raises(InvalidRequestError, match="not a valid JSON Schema") as e:
        parse_response_format(_fmt(bad))
    assert e.value.param == "response_format.json_schema.schema.properties.age.type"
    assert "'integr'" in str(e.value)
    with pytest.raises(InvalidRequestError) as e:
        parse_response_format(_fmt({"type": "object", "required": "name"}))
    assert e.value.param == "response_format.json_schema.schema.required"


def test_uncompilable_schema_carries_llguidance_message() -> None:
    bad = {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}
    with pytest.raises(InvalidRequestError, match="cannot be compiled") as e:
        parse_response_format(_fmt(bad))
    assert "missing" in str(e.value)
    assert e.value.param == "response_format.json_schema.schema"
