"""OpenAI ``tools``, ``tool_choice`` and tool-call history, validated into value types.

Guarantees (every refusal is an :class:`~tightwad.errors.InvalidRequestError` naming the field
as the client wrote it, before anything reaches an engine):

- ``tools[i]`` is ``{"type": "function", "function": {name, description?, parameters?,
  strict?}}``; a name is 1-64 letters, digits, ``_`` or ``-`` and unique; ``parameters`` must be
  a valid JSON Schema (path named inside it) that llguidance can compile;
- ``tool_choice`` is ``none`` / ``auto`` / ``required`` or ``{"type": "function", "function":
  {"name"}}`` naming one of ``tools`` (an unknown name is refused);
- an assistant message's ``tool_calls[j]`` is ``{id, type: "function", function: {name,
  arguments}}`` with ``arguments`` a string holding a JSON object; a ``tool`` message has a
  ``tool_call_id`` that answers a call made earlier in the conversation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tightwad.errors import InvalidRequestError

__all__ = [
    "Tool",
    "ToolCall",
    "ToolChoice",
    "check_tool_history",
    "parse_tool_calls",
    "parse_tool_choice",
    "parse_tools",
]

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call; ``parameters`` is its arguments' JSON Schema."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)
    strict: bool = False

    def as_openai(self) -> dict[str, Any]:
        """The tool as OpenAI (and chat templates' ``tools`` variable) spell it."""
        fn: dict[str, Any] = {"name": self.name}
        if self.description:
            fn["description"] = self.description
        fn["parameters"] = dict(self.parameters) or {"type": "object", "properties": {}}
        return {"type": "function", "function": fn}


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call: ``arguments`` is the JSON text of the arguments object."""

    id: str
    name: str
    arguments: str

    def as_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


ChoiceMode = Literal["none", "auto", "required", "function"]


@dataclass(frozen=True, slots=True)
class ToolChoice:
    mode: ChoiceMode = "auto"
    name: str = ""  # the function, when mode == "function"

    @property
    def forces_call(self) -> bool:
        return self.mode in ("required", "function")


def _bad(param: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=param)


def _only(value: Mapping[str, Any], allowed: set[str], param: str) -> None:
    for key in value:
        if key not in allowed:
            raise _bad(f"{param}.{key}", f"Unrecognized request argument supplied: {param}.{key}")


def _name(value: object, param: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise _bad(param, f"'{param}' must be 1-64 letters, digits, '_' or '-'; got {value!r}")
    return value


def parse_tools(value: object, param: str = "tools") -> tuple[Tool, ...]:
    from tightwad.gateway.structured import check_json_schema

    if value is None:
        return ()
    if not isinstance(value, list):
        raise _bad(param, f"'{param}' must be an array of tools")
    tools: list[Tool] = []
    seen: set[str] = set()
    for i, item in enumerate(value):
        p = f"{param}[{i}]"
        if not isinstance(item, Mapping):
            raise _bad(p, f"'{p}' must be an object")
        _only(item, {"type", "function"}, p)
        if item.get("type") != "function":
            raise _bad(f"{p}.type", f"'{p}.type' must be 'function'; got {item.get('type')!r}")
        fn = item.get("function")
        if not isinstance(fn, Mapping):
            raise _bad(f"{p}.function", f"'{p}.function' must be an object")
        _only(fn, {"name", "description", "parameters", "strict"}, f"{p}.function")
        name = _name(fn.get("name"), f"{p}.function.name")
        if name in seen:
            raise _bad(f"{p}.function.name", f"tool name {name!r} is given twice")
        seen.add(name)
        description = fn.get("description") or ""
        if not isinstance(description, str):
            raise _bad(f"{p}.function.description", f"'{p}.function.description' must be a string")
        strict = fn.get("strict") or False
        if not isinstance(strict, bool):
            raise _bad(f"{p}.function.strict", f"'{p}.function.strict' must be a boolean")
        params = fn.get("parameters")
        if params is None:
            params = {}
        if params:
            check_json_schema(params, f"{p}.function.parameters")
        elif not isinstance(params, Mapping):
            raise _bad(f"{p}.function.parameters", f"'{p}.function.parameters' must be an object")
        tools.append(Tool(name, description, dict(params), strict))
    return tuple(tools)


def parse_tool_choice(
    value: object, tools: Sequence[Tool], param: str = "tool_choice"
) -> ToolChoice:
    """The choice; OpenAI's default is ``auto`` with tools and ``none`` without."""
    if value is None:
        return ToolChoice("auto" if tools else "none")
    if isinstance(value, str):
        if value not in ("none", "auto", "required"):
            raise _bad(
                param,
                f"Invalid value for '{param}': {value!r}. Supported values are: 'none', "
                "'auto', 'required' or an object naming a function",
            )
        if value != "none" and not tools:
            raise _bad(param, f"'{param}' is {value!r} but no tools were given")
        return ToolChoice(value)  # type: ignore[arg-type]
    if not isinstance(value, Mapping):
        raise _bad(param, f"'{param}' must be a string or an object")
    _only(value, {"type", "function"}, param)
    if value.get("type") != "function":
        raise _bad(f"{param}.type", f"'{param}.type' must be 'function'")
    fn = value.get("function")
    if not isinstance(fn, Mapping):
        raise _bad(f"{param}.function", f"'{param}.function' must be an object")
    name = _name(fn.get("name"), f"{param}.function.name")
    known = [t.name for t in tools]
    if name not in known:
        raise _bad(
            f"{param}.function.name",
            f"tool_choice names function {name!r}, which is not one of the tools "
            f"({', '.join(repr(k) for k in known) or 'none given'})",
        )
    return ToolChoice("function", name)


def parse_tool_calls(value: object, param: str) -> tuple[ToolCall, ...]:
    """An assistant message's ``tool_calls``."""
    if not isinstance(value, list):
        raise _bad(param, f"'{param}' must be an array")
    calls: list[ToolCall] = []
    for j, item in enumerate(value):
        p = f"{param}[{j}]"
        if not isinstance(item, Mapping):
            raise _bad(p, f"'{p}' must be an object")
        _only(item, {"id", "type", "function"}, p)
        call_id = item.get("id")
        if not isinstance(call_id, str) or not call_id:
            raise _bad(f"{p}.id", f"'{p}.id' must be a non-empty string")
        if item.get("type", "function") != "function":
            raise _bad(f"{p}.type", f"'{p}.type' must be 'function'")
        fn = item.get("function")
        if not isinstance(fn, Mapping):
            raise _bad(f"{p}.function", f"'{p}.function' must be an object")
        _only(fn, {"name", "arguments"}, f"{p}.function")
        name = _name(fn.get("name"), f"{p}.function.name")
        arguments = fn.get("arguments")
        if not isinstance(arguments, str):
            raise _bad(
                f"{p}.function.arguments", f"'{p}.function.arguments' must be a string of JSON"
            )
        try:
            parsed = json.loads(arguments) if arguments.strip() else {}
        except ValueError as exc:
            raise _bad(
                f"{p}.function.arguments", f"'{p}.function.arguments' is not valid JSON: {exc}"
            ) from exc
        if not isinstance(parsed, dict):
            raise _bad(f"{p}.function.arguments", f"'{p}.function.arguments' must be an object")
        calls.append(ToolCall(call_id, name, arguments))
    return tuple(calls)


def check_tool_history(
    messages: Sequence[tuple[str, tuple[ToolCall, ...], str]], param: str = "messages"
) -> None:
    """``messages`` as (role, tool_calls, tool_call_id): every ``tool`` message answers a call
    made before it."""
    made: set[str] = set()
    for i, (role, calls, call_id) in enumerate(messages):
        made.update(c.id for c in calls)
        if role == "tool":
            if not call_id:
                raise _bad(
                    f"{param}[{i}].tool_call_id",
                    f"'{param}[{i}]' is a tool message without a tool_call_id",
                )
            if call_id not in made:
                raise _bad(
                    f"{param}[{i}].tool_call_id",
                    f"'{param}[{i}].tool_call_id' is {call_id!r}, which answers no tool call "
                    "made by an earlier assistant message",
                )
