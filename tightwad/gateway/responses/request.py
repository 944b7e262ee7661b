"""``POST /v1/responses`` bodies validated into the gateway's chat :class:`GenerationRequest`.

Owns :func:`parse_responses`, which returns a :class:`ResponsesRequest`: the chat request the
pipeline runs and the request fields a Response object echoes back. Guarantees:

- stateless: ``previous_response_id``, ``conversation`` and ``prompt`` (stored state) and
  ``background: true`` are refused with a 400 saying why; ``store`` is accepted and nothing
  is ever stored (``store: false`` semantics whatever it says);
- ``input`` is a string (one user message) or an array of items: ``message`` (roles
  ``user``/``system``/``developer``/``assistant``, content a string or ``input_text`` /
  ``output_text`` / ``refusal`` parts), ``function_call`` and ``function_call_output``; any
  other item type, or a non-text part, is a 400 naming ``input[i]``;
- ``instructions`` becomes a leading system message; ``developer`` messages are system
  messages (what a local model's template knows);
- ``tools`` (``function`` tools only; built-in tools are refused naming the index),
  ``tool_choice``, ``text.format`` (``text`` / ``json_object`` / ``json_schema``) are checked
  by the same code as chat's (:mod:`tightwad.gateway.tools.request`,
  :mod:`tightwad.gateway.structured`), errors naming the Responses field;
- ``max_output_tokens`` is >= 16 as OpenAI requires and never above the gateway's cap;
- a field OpenAI does not define is refused by name, as OpenAI does; ``prediction`` and
  ``seed`` are Tightwad extensions with chat's meaning.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tightwad.engine.grammar import GrammarSpec, json_object_spec
from tightwad.errors import InvalidRequestError, UnsupportedParameterError
from tightwad.gateway.openai_fields import type_error as _type_error
from tightwad.gateway.openai_schema import Limits
from tightwad.gateway.structured import check_json_schema
from tightwad.gateway.tools.request import (
    Tool,
    ToolCall,
    ToolChoice,
    check_tool_history,
    parse_tools,
)
from tightwad.gateway.types import ChatMessage, GenerationRequest
from tightwad.spec.sampling import SamplingConfig

__all__ = ["MIN_OUTPUT_TOKENS", "ResponsesRequest", "parse_responses"]

MIN_OUTPUT_TOKENS = 16  # OpenAI's minimum for max_output_tokens

_HONOURED = frozenset(
    {
        "model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "tools",
        "tool_choice", "parallel_tool_calls", "text", "stream", "top_logprobs", "include",
        "max_tool_calls", "prediction", "seed",
    }
)  # fmt: skip
# Accepted (and echoed where the Response object has them); they change nothing here.
_IGNORED = frozenset(
    {
        "store", "metadata", "user", "safety_identifier", "prompt_cache_key",
        "prompt_cache_retention", "prompt_cache_options", "service_tier", "reasoning",
        "stream_options", "truncation",
    }
)  # fmt: skip
# Accepted only when absent/null (or at the value given): each needs what a stateless local
# gateway does not have.
_STATEFUL: Mapping[str, str] = {
    "previous_response_id": "this server is stateless (store: false): it keeps no responses, "
    "so send the whole conversation in 'input'",
    "conversation": "this server is stateless: it keeps no conversations, so send the whole "
    "conversation in 'input'",
    "prompt": "this server keeps no stored prompt templates",
    "background": "background responses are not supported: this server is stateless and "
    "answers in the request (stream for progress)",
    "context_management": "context management is not supported",
    "background_options": "background responses are not supported",
    "moderation": "moderation is not supported",
    "access_programs": "access programs are not supported",
    "image": "image options are not supported",
}
_INCLUDE_LOGPROBS = "message.output_text.logprobs"
_INPUT_ROLES = frozenset({"user", "system", "developer", "assistant"})
_TEXT_PARTS = {"input_text": ("user", "system", "developer"), "output_text": ("assistant",)}
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True, slots=True)
class ResponsesRequest:
    """A validated Responses request: the chat request to run, how to deliver it, and the
    request fields the Response object echoes (``echo``)."""

    chat: GenerationRequest
    stream: bool
    echo: Mapping[str, Any] = field(default_factory=dict)


def _bad(param: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=param)


def _unsupported(param: str, message: str) -> UnsupportedParameterError:
    return UnsupportedParameterError(message, param=param)


def _only(value: Mapping[str, Any], allowed: set[str], param: str) -> None:
    for key in value:
        if key not in allowed:
            raise _bad(f"{param}.{key}", f"Unknown parameter: '{param}.{key}'.")


def parse_responses(
    body: Mapping[str, Any], limits: Limits, request_id: str = ""
) -> ResponsesRequest:
    """Validate a ``POST /v1/responses`` body (see the module docstring)."""
    _check_fields(body)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", "Missing required parameter: 'model'.")
    instructions = _optional_str(body, "instructions")
    messages = _input(body.get("input"))
    if instructions:
        messages = (ChatMessage(role="system", content=instructions), *messages)
    check_tool_history([(m.role, m.tool_calls, m.tool_call_id) for m in messages], "input")
    tools = _tools(body.get("tools"))
    tool_choice = _tool_choice(body.get("tool_choice"), tools)
    parallel = _boolean(body, "parallel_tool_calls", True)
    max_tool_calls = _integer(body, "max_tool_calls", 1, None)
    if max_tool_calls == 1:
        parallel = False
    grammar, text_echo = _text(body.get("text"))
    logprobs, top_logprobs = _logprobs(body)
    temperature = _number(body, "temperature", 0.0, 2.0)
    top_p = _number(body, "top_p", 0.0, 1.0)
    if top_p is not None and top_p <= 0.0:
        raise _bad("top_p", f"Invalid value for 'top_p': {top_p} is outside (0, 1].")
    sampling = SamplingConfig(
        temperature=limits.default_temperature if temperature is None else temperature,
        top_p=1.0 if top_p is None else top_p,
    )
    max_output = _max_output_tokens(body, limits)
    chat = GenerationRequest(
        model=model,
        messages=messages,
        sampling=sampling,
        seed=_integer(body, "seed", -(2**63), 2**63 - 1),
        max_tokens=max_output,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        prediction=_prediction(body.get("prediction")),
        request_id=request_id,
        grammar=grammar,
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
    )
    echo = {
        "instructions": instructions,
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": max_tool_calls,
        "metadata": body.get("metadata") or {},
        "parallel_tool_calls": parallel,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "tool_choice": _tool_choice_echo(tool_choice),
        "tools": [_tool_echo(t) for t in tools],
        "text": text_echo,
        "top_logprobs": top_logprobs,
        "truncation": "disabled",
        "user": body.get("user"),
        "safety_identifier": body.get("safety_identifier"),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "service_tier": "default",
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "background": False,
        "previous_response_id": None,
    }
    return ResponsesRequest(chat, _boolean(body, "stream", False), echo)


def _check_fields(body: Mapping[str, Any]) -> None:
    for key, value in body.items():
        if key in _STATEFUL:
            if value is None or (key == "background" and value is False):
                continue
            raise _unsupported(key, f"'{key}' is not supported: {_STATEFUL[key]}.")
        if key not in _HONOURED and key not in _IGNORED:
            raise _bad(key, f"Unrecognized request argument supplied: {key}")
    for key in ("user", "safety_identifier", "prompt_cache_key"):
        _optional_str(body, key)
    metadata = body.get("metadata")
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise _type_error("metadata", "an object of strings", metadata)
    truncation = body.get("truncation")
    if truncation not in (None, "disabled"):
        if truncation == "auto":
            raise _unsupported(
                "truncation",
                "truncation 'auto' is not supported: an input longer than the model's context "
                "is refused (use 'disabled').",
            )
        raise _bad("truncation", f"Invalid value for 'truncation': {truncation!r}.")
    for key in ("store",):
        _boolean(body, key, False)
    for key in ("reasoning", "stream_options"):
        value = body.get(key)
        if value is not None and not isinstance(value, dict):
            raise _type_error(key, "an object", value)
    if body.get("stream_options") is not None and body.get("stream") is not True:
        raise _bad(
            "stream_options",
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
        )


# ---------------------------------------------------------------------------------------------
# Field readers: None when absent or null.


def _optional_str(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise _type_error(key, "a string", value)
    return value


def _boolean(body: Mapping[str, Any], key: str, default: bool) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _type_error(key, "a boolean", value)
    return value


def _integer(body: Mapping[str, Any], key: str, lo: int, hi: int | None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(key, "an integer", value)
    if value < lo or (hi is not None and value > hi):
        raise _bad(key, f"Invalid value for '{key}': {value} is outside [{lo}, {hi}].")
    return value


def _number(body: Mapping[str, Any], key: str, lo: float, hi: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _type_error(key, "a number", value)
    if not math.isfinite(value) or not lo <= value <= hi:
        raise _bad(key, f"Invalid value for '{key}': {value} is outside [{lo:g}, {hi:g}].")
    return float(value)


def _max_output_tokens(body: Mapping[str, Any], limits: Limits) -> int:
    value = _integer(body, "max_output_tokens", -(2**63), None)
    if value is None:
        return min(limits.default_max_tokens, limits.max_tokens_cap)
    if value < MIN_OUTPUT_TOKENS:
        raise _bad(
            "max_output_tokens",
            "Invalid 'max_output_tokens': integer below minimum value. Expected a value >= "
            f"{MIN_OUTPUT_TOKENS}, but got {value} instead.",
        )
    if value > limits.max_tokens_cap:
        raise _bad(
            "max_output_tokens",
            f"max_output_tokens is too large: {value}. This server supports at most "
            f"{limits.max_tokens_cap} output tokens.",
        )
    return value


def _logprobs(body: Mapping[str, Any]) -> tuple[bool, int]:
    top = _integer(body, "top_logprobs", 0, 20) or 0
    include = body.get("include")
    if include is None:
        include = []
    if not isinstance(include, list) or not all(isinstance(i, str) for i in include):
        raise _type_error("include", "an array of strings", include)
    return _INCLUDE_LOGPROBS in include or top > 0, top


def _prediction(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") != "content":
        raise _bad("prediction", '\'prediction\' must be {"type": "content", "content": ...}')
    _only(value, {"type", "content"}, "prediction")
    return _text_of(value.get("content"), "prediction.content", ("input_text", "text"))


# ---------------------------------------------------------------------------------------------
# Input items.


def _input(value: object) -> tuple[ChatMessage, ...]:
    if value is None:
        raise _bad("input", "Missing required parameter: 'input'.")
    if isinstance(value, str):
        return (ChatMessage(role="user", content=value),)
    if not isinstance(value, list):
        raise _type_error("input", "a string or an array of input items", value)
    if not value:
        raise _bad("input", "Invalid 'input': empty array. Expected at least one input item.")
    messages: list[ChatMessage] = []
    for i, item in enumerate(value):
        param = f"input[{i}]"
        if not isinstance(item, dict):
            raise _type_error(param, "an object", item)
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            messages.append(_message(item, param))
        elif kind == "function_call":
            _function_call(item, param, messages)
        elif kind == "function_call_output":
            messages.append(_function_call_output(item, param))
        elif isinstance(kind, str):
            raise _unsupported(
                f"{param}.type",
                f"Input item {i} has type '{kind}', which is not supported: only 'message', "
                "'function_call' and 'function_call_output' items are.",
            )
        else:
            raise _bad(f"{param}.type", f"Input item {i} has no valid 'type'.")
    return tuple(messages)


def _message(item: Mapping[str, Any], param: str) -> ChatMessage:
    _only(item, {"type", "role", "content", "id", "status", "phase"}, param)
    role = item.get("role")
    if not isinstance(role, str) or role not in _INPUT_ROLES:
        raise _bad(
            f"{param}.role",
            f"Invalid value for '{param}.role': {role!r}. Supported values are: 'user', "
            "'assistant', 'system' and 'developer'.",
        )
    allowed = tuple(k for k, roles in _TEXT_PARTS.items() if role in roles)
    if role == "assistant":
        allowed = (*allowed, "refusal")
    content = _text_of(item.get("content"), f"{param}.content", allowed)
    return ChatMessage(role="system" if role == "developer" else role, content=content)


def _text_of(value: object, param: str, kinds: tuple[str, ...]) -> str:
    """A string, or the text of an array of parts of the ``kinds`` given."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise _type_error(param, "a string or an array of content parts", value)
    texts: list[str] = []
    for j, part in enumerate(value):
        where = f"{param}[{j}]"
        if not isinstance(part, dict):
            raise _type_error(where, "an object", part)
        kind = part.get("type")
        if kind not in kinds:
            if kind in ("input_image", "input_file", "input_audio"):
                raise _unsupported(
                    f"{where}.type", f"Content parts of type '{kind}' are not supported."
                )
            raise _bad(
                f"{where}.type",
                f"Invalid value for '{where}.type': {kind!r}. Supported values here are: "
                + ", ".join(f"'{k}'" for k in kinds),
            )
        key = "refusal" if kind == "refusal" else "text"
        _only(part, {"type", key, "annotations", "logprobs"}, where)
        text = part.get(key)
        if not isinstance(text, str):
            raise _type_error(f"{where}.{key}", "a string", text)
        texts.append(text)
    return "".join(texts)


def _function_call(item: Mapping[str, Any], param: str, messages: list[ChatMessage]) -> None:
    """An earlier call of the model: joins the assistant message right before it (consecutive
    calls are one turn's parallel calls), or starts one."""
    _only(item, {"type", "id", "call_id", "name", "arguments", "status", "namespace"}, param)
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise _bad(f"{param}.call_id", f"'{param}.call_id' must be a non-empty string.")
    name = item.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise _bad(f"{param}.name", f"'{param}.name' must be 1-64 letters, digits, '_' or '-'.")
    arguments = item.get("arguments")
    if not isinstance(arguments, str):
        raise _type_error(f"{param}.arguments", "a string of JSON", arguments)
    try:
        parsed = json.loads(arguments) if arguments.strip() else {}
    except ValueError as exc:
        raise _bad(f"{param}.arguments", f"'{param}.arguments' is not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise _bad(f"{param}.arguments", f"'{param}.arguments' must be the JSON of an object")
    call = ToolCall(call_id, name, arguments)
    last = messages[-1] if messages else None
    if last is not None and last.role == "assistant":
        messages[-1] = ChatMessage(
            role="assistant", content=last.content, tool_calls=(*last.tool_calls, call)
        )
    else:
        messages.append(ChatMessage(role="assistant", content="", tool_calls=(call,)))


def _function_call_output(item: Mapping[str, Any], param: str) -> ChatMessage:
    _only(item, {"type", "id", "call_id", "output", "status"}, param)
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise _bad(f"{param}.call_id", f"'{param}.call_id' must be a non-empty string.")
    output = _text_of(item.get("output"), f"{param}.output", ("input_text",))
    return ChatMessage(role="tool", content=output, tool_call_id=call_id)


# ---------------------------------------------------------------------------------------------
# Tools and text format.


def _tools(value: object) -> tuple[Tool, ...]:
    """Responses' flat function tools, checked by chat's :func:`parse_tools`."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _type_error("tools", "an array of tools", value)
    nested: list[dict[str, Any]] = []
    for i, tool in enumerate(value):
        param = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise _type_error(param, "an object", tool)
        kind = tool.get("type")
        if kind != "function":
            raise _unsupported(
                f"{param}.type",
                f"Tool {i} has type {kind!r}: only 'function' tools are supported here "
                "(built-in tools run on OpenAI's servers).",
            )
        _only(tool, {"type", "name", "description", "parameters", "strict"}, param)
        nested.append(
            {"type": "function", "function": {k: v for k, v in tool.items() if k != "type"}}
        )
    try:
        return parse_tools(nested, "tools")
    except InvalidRequestError as exc:
        raise _renamed(exc) from exc


def _renamed(exc: InvalidRequestError) -> InvalidRequestError:
    """A chat-shaped tools error (``tools[0].function.name``) in Responses' flat spelling."""

    def flat(text: str) -> str:
        return re.sub(r"(tools\[\d+\])\.function", r"\1", text)

    return type(exc)(flat(exc.message), param=flat(exc.param) if exc.param else None)


def _tool_choice(value: object, tools: tuple[Tool, ...]) -> ToolChoice:
    if value is None:
        return ToolChoice("auto" if tools else "none")
    if isinstance(value, str):
        if value not in ("none", "auto", "required"):
            raise _bad(
                "tool_choice",
                f"Invalid value for 'tool_choice': {value!r}. Supported values are: 'none', "
                '\'auto\', \'required\' or {"type": "function", "name": ...}',
            )
        if value != "none" and not tools:
            raise _bad("tool_choice", f"'tool_choice' is {value!r} but no tools were given")
        return ToolChoice(value)  # type: ignore[arg-type]
    if not isinstance(value, dict):
        raise _type_error("tool_choice", "a string or an object", value)
    if value.get("type") != "function":
        raise _unsupported(
            "tool_choice.type",
            f"tool_choice of type {value.get('type')!r} is not supported: use 'none', 'auto', "
            '\'required\' or {"type": "function", "name": ...}',
        )
    _only(value, {"type", "name"}, "tool_choice")
    name = value.get("name")
    known = [t.name for t in tools]
    if name not in known:
        raise _bad(
            "tool_choice.name",
            f"tool_choice names function {name!r}, which is not one of the tools "
            f"({', '.join(repr(k) for k in known) or 'none given'})",
        )
    return ToolChoice("function", str(name))


def _tool_choice_echo(choice: ToolChoice) -> object:
    if choice.mode == "function":
        return {"type": "function", "name": choice.name}
    return choice.mode


def _tool_echo(tool: Tool) -> dict[str, Any]:
    return {
        "type": "function",
        "name": tool.name,
        "description": tool.description or None,
        "parameters": dict(tool.parameters) or {"type": "object", "properties": {}},
        "strict": tool.strict,
    }


def _text(value: object) -> tuple[GrammarSpec | None, dict[str, Any]]:
    """``text``: the grammar its ``format`` asks for, and the ``text`` object to echo."""
    if value is None:
        return None, {"format": {"type": "text"}, "verbosity": "medium"}
    if not isinstance(value, dict):
        raise _type_error("text", "an object", value)
    _only(value, {"format", "verbosity"}, "text")
    verbosity = value.get("verbosity")
    if verbosity not in (None, "low", "medium", "high"):
        raise _bad("text.verbosity", f"Invalid value for 'text.verbosity': {verbosity!r}.")
    fmt = value.get("format")
    echo = {"format": fmt or {"type": "text"}, "verbosity": verbosity or "medium"}
    if fmt is None:
        return None, echo
    if not isinstance(fmt, dict):
        raise _type_error("text.format", "an object", fmt)
    kind = fmt.get("type")
    if kind == "text":
        _only(fmt, {"type"}, "text.format")
        return None, echo
    if kind == "json_object":
        _only(fmt, {"type"}, "text.format")
        return json_object_spec(), echo
    if kind != "json_schema":
        raise _bad(
            "text.format.type",
            f"Invalid value for 'text.format.type': {kind!r}. Supported values are: 'text', "
            "'json_object' and 'json_schema'.",
        )
    _only(fmt, {"type", "name", "schema", "strict", "description"}, "text.format")
    name = fmt.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise _bad(
            "text.format.name", "'text.format.name' must be 1-64 letters, digits, '_' or '-'."
        )
    for key, kind_name in (("strict", bool), ("description", str)):
        if fmt.get(key) is not None and not isinstance(fmt[key], kind_name):
            raise _type_error(f"text.format.{key}", f"a {kind_name.__name__}", fmt[key])
    if "schema" not in fmt:
        raise _bad("text.format.schema", "Missing required parameter: 'text.format.schema'.")
    return check_json_schema(fmt["schema"], "text.format.schema"), echo
