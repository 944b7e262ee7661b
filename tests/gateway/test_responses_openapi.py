"""``POST /v1/responses`` in the published OpenAPI document: its request schema says what
:func:`parse_responses` accepts (the same verdict on each body below, the gateway's own
``max_output_tokens`` cap included), and its answers are described (the Response object, its
SSE events, the error statuses)."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from tightwad.errors import InvalidRequestError
from tightwad.gateway.openai_schema import Limits
from tightwad.gateway.openapi import openapi_document
from tightwad.gateway.responses.request import parse_responses

LIMITS = Limits(max_tokens_cap=64)
CALL = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"a": 1}'}
OUTPUT = {"type": "function_call_output", "call_id": "c1", "output": "42"}
TOOL = {"type": "function", "name": "f", "parameters": {"type": "object"}}

# (name, body without model, accepted)
BODIES: list[tuple[str, dict[str, Any], bool]] = [
    ("text input", {"input": "hi"}, True),
    ("items", {"input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}]},
     True),
    ("a call round trip", {"input": [{"role": "user", "content": "x"}, CALL, OUTPUT],
     "tools": [TOOL], "tool_choice": "auto"}, True),
    ("assistant output_text and refusal", {"input": [{"type": "message", "role": "assistant",
     "content": [{"type": "output_text", "text": "a"}, {"type": "refusal", "refusal": "no"}]}]},
     True),
    ("json_schema format", {"input": "x", "text": {"format": {"type": "json_schema",
     "name": "o", "schema": {"type": "object"}}}}, True),
    ("max_output_tokens at the cap", {"input": "x", "max_output_tokens": 64}, True),
    ("ignored fields", {"input": "x", "store": True, "metadata": {"k": "v"},
     "service_tier": "flex", "reasoning": {"effort": "low"}, "truncation": "disabled"}, True),
    ("background false", {"input": "x", "background": False}, True),
    ("role an object", {"input": [{"role": {}, "content": "x"}]}, False),
    ("input_text in an assistant message", {"input": [{"role": "assistant",
     "content": [{"type": "input_text", "text": "a"}]}]}, False),
    ("an unknown item type", {"input": [{"type": "reasoning", "summary": []}]}, False),
    ("empty input array", {"input": []}, False),
    ("max_output_tokens below 16", {"input": "x", "max_output_tokens": 15}, False),
    ("max_output_tokens above the cap", {"input": "x", "max_output_tokens": 65}, False),
    ("background true", {"input": "x", "background": True}, False),
    ("previous_response_id", {"input": "x", "previous_response_id": "resp_1"}, False),
    ("tool_choice without tools", {"input": "x", "tool_choice": "required"}, False),
    ("a built-in tool", {"input": "x", "tools": [{"type": "web_search"}]}, False),
    ("stream_options without stream", {"input": "x", "stream_options": {}}, False),
    ("top_p zero", {"input": "x", "top_p": 0}, False),
    ("unknown field", {"input": "x", "frobnicate": 1}, False),
    ("truncation auto", {"input": "x", "truncation": "auto"}, False),
]  # fmt: skip


@pytest.mark.parametrize(("body", "accepted"), [b[1:] for b in BODIES], ids=[b[0] for b in BODIES])
def test_schema_and_parser_agree(body: dict[str, Any], accepted: bool) -> None:
    body = {"model": "m", **body}
    schema = openapi_document(LIMITS)["components"]["schemas"]["ResponsesRequest"]
    valid = jsonschema.Draft202012Validator(schema).is_valid(body)
    try:
        parse_responses(body, LIMITS)
        parsed = True
    except InvalidRequestError as exc:
        parsed = False
        assert exc.param, "a refusal names its param"
    assert (valid, parsed) == (accepted, accepted)


def test_the_operation_is_described() -> None:
    doc = openapi_document(LIMITS)
    op = doc["paths"]["/v1/responses"]["post"]
    assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ResponsesRequest"
    )
    ok = op["responses"]["200"]["content"]
    assert ok["application/json"]["schema"]["$ref"].endswith("/Response")
    assert ok["text/event-stream"]["schema"]["required"] == ["event", "data"]
    assert {"400", "429", "503"} <= set(op["responses"])
    limit = doc["components"]["schemas"]["ResponsesRequest"]["properties"]["max_output_tokens"]
    assert limit["anyOf"][0]["maximum"] == 64
    for schema in doc["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("arguments", ["{", "[1]", '"a"'])
def test_call_arguments_are_the_json_of_an_object(arguments: str) -> None:
    # A rule the schema states as content (contentMediaType/contentSchema), which JSON Schema
    # validators do not check: the parser refuses such a call naming it.
    body = {"model": "m", "input": [{**CALL, "arguments": arguments}, OUTPUT]}
    with pytest.raises(InvalidRequestError) as info:
        parse_responses(body, LIMITS)
    assert info.value.param == "input[0].arguments"
    schema = openapi_document(LIMITS)["components"]["schemas"]["ResponsesRequest"]
    call = schema["properties"]["input"]["anyOf"][1]["items"]["anyOf"][2]
    described = call["properties"]["arguments"]
    assert (described["contentMediaType"], described["contentSchema"]) == (
        "application/json",
        {"type": "object"},
    )
