"""Schemathesis hooks for the conformance run (loaded with ``SCHEMATHESIS_HOOKS``).

They aim generated requests at the served route and apply the few rules of the request schemas
that JSON Schema cannot state (see :mod:`tightwad.gateway.openapi_requests`), so that every
generated case is judged by the checks, none by a rule the document only describes:

- a body's string ``model`` becomes the served route (``$TIGHTWAD_ST_MODEL``); an empty one, a
  schema violation, stays as it is;
- token ids (``logit_bias`` keys, a ``prompt`` of ids) stay below the route's vocabulary
  (``$TIGHTWAD_ST_VOCAB``): ids the model does not have are refused per route;
- a body that might not fit the route's context (``$TIGHTWAD_ST_CTX``) is not generated: a
  byte-level tokenizer makes at most one token per byte of text, plus the template's own;
- a case whose JSON Schemas (``tools[].function.parameters``, ``json_schema.schema``, and the
  Responses API's ``tools[].parameters`` and ``text.format.schema``) do not compile, that
  names two tools alike, whose tool-call ``arguments`` are not the JSON text of an object,
  whose ``tool_choice`` names a function not among its tools, or whose tool messages
  (Responses: ``function_call_output`` items) answer no earlier call, is not generated (those
  bodies are refused, correctly, whatever the mode).
"""

from __future__ import annotations

import json
import os
from typing import Any

import schemathesis

from tightwad.errors import InvalidRequestError
from tightwad.gateway.responses.request import _input as responses_input
from tightwad.gateway.structured import check_json_schema
from tightwad.gateway.tools.request import (
    check_tool_history,
    parse_tool_calls,
    parse_tool_choice,
    parse_tools,
)

MODEL = os.environ.get("TIGHTWAD_ST_MODEL", "")
CTX = int(os.environ.get("TIGHTWAD_ST_CTX", "0") or 0)
# Tokens a chat template adds around the messages (and the tools' system prompt).
TEMPLATE_TOKENS = 512
VOCAB = int(os.environ.get("TIGHTWAD_ST_VOCAB", "0") or 0)


@schemathesis.hook
def map_body(ctx: Any, body: Any) -> Any:
    if not isinstance(body, dict):
        return body
    if MODEL and isinstance(body.get("model"), str) and body["model"]:
        body["model"] = MODEL
    bias = body.get("logit_bias")
    if VOCAB and isinstance(bias, dict):
        body["logit_bias"] = {
            (str(int(k) % VOCAB) if isinstance(k, str) and k.isascii() and k.isdigit() else k): v
            for k, v in bias.items()
        }
    prompt = body.get("prompt")
    if VOCAB and isinstance(prompt, list):
        body["prompt"] = _ids_in_vocab(prompt)
    return body


def _ids_in_vocab(value: Any) -> Any:
    if isinstance(value, list):
        return [_ids_in_vocab(v) for v in value]
    # JSON Schema's "integer" includes 3.0: an integral float stays one (the parser takes it).
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return float(int(value) % VOCAB)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value % VOCAB
    return value


def _arguments_are_objects(body: dict[str, Any]) -> bool:
    messages = body.get("messages")
    items = body.get("input")  # a Responses body: function_call items carry arguments
    for m in messages if isinstance(messages, list) else ():
        calls = m.get("tool_calls") if isinstance(m, dict) else None
        for call in calls if isinstance(calls, list) else ():
            fn = call.get("function") if isinstance(call, dict) else None
            if not _is_object_json(fn.get("arguments") if isinstance(fn, dict) else None):
                return False
    for item in items if isinstance(items, list) else ():
        is_call = isinstance(item, dict) and item.get("type") == "function_call"
        if is_call and not _is_object_json(item.get("arguments")):
            return False
    return True


def _is_object_json(arguments: object) -> bool:
    """Whether tool-call ``arguments`` are the JSON text of an object (or blank); anything
    that is not a string is a schema violation, judged by the checks."""
    if not isinstance(arguments, str) or not arguments.strip():
        return True
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return False
    return isinstance(parsed, dict)


def _fits(body: dict[str, Any]) -> bool:
    if not CTX:
        return True
    size = len(json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    return size + TEMPLATE_TOKENS <= CTX


def _schemas_compile(body: dict[str, Any]) -> bool:
    schemas: list[Any] = []
    tools = body.get("tools")
    if isinstance(tools, list):
        for tool in tools:
            fn = tool.get("function") if isinstance(tool, dict) else None
            if isinstance(fn, dict) and isinstance(fn.get("parameters"), dict):
                schemas.append(fn["parameters"])
            if isinstance(tool, dict) and isinstance(tool.get("parameters"), dict):
                schemas.append(tool["parameters"])  # a Responses tool: flat
    fmt = body.get("response_format")
    spec = fmt.get("json_schema") if isinstance(fmt, dict) else None
    if isinstance(spec, dict) and isinstance(spec.get("schema"), dict):
        schemas.append(spec["schema"])
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    if isinstance(fmt, dict) and isinstance(fmt.get("schema"), dict):
        schemas.append(fmt["schema"])  # a Responses text.format
    for schema in schemas:
        if not schema:
            continue
        try:
            check_json_schema(schema, "schema")
        except InvalidRequestError:
            return False
    return True


def _cross_field_rules_hold(body: dict[str, Any]) -> bool:
    """tool_choice names one of the tools; tool messages answer earlier calls. Only judged
    when the parts are well formed (a malformed part is a schema violation, refused anyway)."""
    listed = body.get("tools")
    names = [
        t["function"].get("name")
        for t in (listed if isinstance(listed, list) else ())
        if isinstance(t, dict) and isinstance(t.get("function"), dict)
    ]
    if len(names) != len(set(map(repr, names))):
        return False  # tool names are unique
    try:
        tools = parse_tools(listed)
    except InvalidRequestError:
        return True
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        try:
            parse_tool_choice(choice, tools)
        except InvalidRequestError:
            return False
    messages = body.get("messages")
    if not isinstance(messages, list):
        return True
    history = []
    for m in messages:
        if not isinstance(m, dict):
            return True
        calls = m.get("tool_calls")
        try:
            parsed = parse_tool_calls(calls, "c") if isinstance(calls, list) else ()
        except InvalidRequestError:
            return True
        call_id = m.get("tool_call_id")
        history.append((m.get("role"), parsed, call_id if isinstance(call_id, str) else ""))
    try:
        check_tool_history(history)  # type: ignore[arg-type]
    except InvalidRequestError:
        return False
    return True


def _responses_rules_hold(body: dict[str, Any]) -> bool:
    """A Responses body: tool names unique, a tool_choice naming one of them, and each
    function_call_output answering an earlier function_call (judged on well-formed parts)."""
    listed = body.get("tools")
    tools = listed if isinstance(listed, list) else []
    names = [t.get("name") for t in tools if isinstance(t, dict)]
    if len(names) != len(set(map(repr, names))):
        return False
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and "name" in choice and choice.get("name") not in names:
        return False
    try:
        messages = responses_input(body.get("input"))
    except InvalidRequestError:
        return True
    try:
        check_tool_history([(m.role, m.tool_calls, m.tool_call_id) for m in messages], "input")
    except InvalidRequestError:
        return False
    return True


@schemathesis.hook
def filter_body(ctx: Any, body: Any) -> bool:
    if not isinstance(body, dict):
        return True
    if "input" in body and "messages" not in body:
        return (
            _schemas_compile(body) and _arguments_are_objects(body) and _responses_rules_hold(body)
        )
    return _schemas_compile(body) and _arguments_are_objects(body) and _cross_field_rules_hold(body)
