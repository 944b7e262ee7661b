"""How each model family writes tool calls: parse its output, write calls, force calls.

A family is chosen from the model's chat template (see
:func:`tightwad.engine.chat_template.tool_syntax_of`), never guessed per request:

- ``hermes`` (Qwen2.5, Hermes, many fine-tunes): ``<tool_call>\\n{"name": ..., "arguments":
  {...}}\\n</tool_call>``, one block per call, text may come before;
- ``llama3`` (Llama 3.1-3.3): the output is one JSON object ``{"name": ..., "parameters":
  {...}}`` (several separated by ``;``), optionally after ``<|python_tag|>``, or a built-in
  tool call ``name.call(key=value, ...)`` after ``<|python_tag|>``;
- ``mistral``: ``[TOOL_CALLS]`` then a JSON array of ``{"name", "arguments"}`` objects, or
  (newer templates) ``[TOOL_CALLS]name[ARGS]{...}`` per call. ``[TOOL_CALLS]`` is a control
  token; its text is absent from detokenized output, so an output that starts with the array
  is a call too.

:meth:`ToolSyntax.parse` returns the text that is not a call (the message ``content``) and the
calls in order. Anything that does not parse as a call stays text: a model that writes a
malformed call gets its words back rather than a request error.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tightwad.engine.grammar import GrammarSpec
from tightwad.errors import InvalidRequestError
from tightwad.gateway.tools.request import Tool

__all__ = ["ParsedCall", "ToolSyntax", "call_schema", "lark_json", "syntax_named"]


@dataclass(frozen=True, slots=True)
class ParsedCall:
    name: str
    arguments: str  # JSON text of an object


def _arguments_text(value: object) -> str | None:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if not isinstance(value, dict):
        return None
    return json.dumps(value, ensure_ascii=False)


def _call_from(obj: object, args_keys: Sequence[str]) -> ParsedCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    for key in args_keys:
        if key in obj:
            args = _arguments_text(obj[key])
            return ParsedCall(obj["name"], args) if args is not None else None
    return ParsedCall(obj["name"], "{}")


def call_schema(tools: Sequence[Tool], args_key: str) -> dict[str, Any]:
    """The JSON Schema of one call object ``{"name": ..., args_key: {...}}`` of ``tools``."""
    options = [
        {
            "type": "object",
            "properties": {
                "name": {"const": t.name},
                args_key: dict(t.parameters) or {"type": "object"},
            },
            "required": ["name", args_key],
            "additionalProperties": False,
        }
        for t in tools
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


# JSON in calls is written as templates write it (Python's json.dumps separators), with no
# other whitespace: the call frame is then one forced continuation the loop drafts for free.
_JSON_STYLE = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}


def lark_json(schema: dict[str, Any]) -> str:
    """A Lark ``%json`` item for ``schema`` in the calls' JSON style."""
    return "%json " + json.dumps({"x-guidance": _JSON_STYLE, **schema}, separators=(",", ":"))


class ToolSyntax:
    """One family's call syntax (subclasses below)."""

    name = ""
    # Text that starts a call anywhere in the output.
    markers: tuple[str, ...] = ()
    # Text that starts a call when it begins the output (after whitespace).
    leading: tuple[str, ...] = ()

    def parse(self, text: str) -> tuple[str, list[ParsedCall]]:
        raise NotImplementedError

    def write(self, calls: Sequence[ParsedCall]) -> str:
        """The calls as the model writes them (what its template renders)."""
        raise NotImplementedError

    def grammar(self, tools: Sequence[Tool], *, parallel: bool) -> GrammarSpec:
        """A grammar whose every sentence is one call (or several when ``parallel``) of one
        of ``tools``: how ``tool_choice`` ``required`` / a named function is enforced."""
        raise NotImplementedError


class Hermes(ToolSyntax):
    name = "hermes"
    markers = ("<tool_call>",)
    _open = "<tool_call>"
    _close = re.compile(r"\s*(?:</tool_call>|$)")
    _decoder = json.JSONDecoder()

    def parse(self, text: str) -> tuple[str, list[ParsedCall]]:
        # Each block's JSON is decoded where it starts (a "</tool_call>" inside an argument
        # string does not end the block); a block that does not decode stays text.
        calls: list[ParsedCall] = []
        content: list[str] = []
        pos = 0
        start = text.find(self._open)
        while start != -1:
            body = start + len(self._open)
            while body < len(text) and text[body].isspace():
                body += 1
            try:
                obj, end = self._decoder.raw_decode(text, body)
            except ValueError:
                obj, end = None, body
            close = self._close.match(text, end)
            call = _call_from(obj, ("arguments", "parameters")) if close else None
            if call is None or close is None:
                start = text.find(self._open, body)
                continue
            content.append(text[pos:start])
            calls.append(call)
            pos = close.end()
            start = text.find(self._open, pos)
        content.append(text[pos:])
        return ("".join(content).strip() if calls else text), calls

    def write(self, calls: Sequence[ParsedCall]) -> str:
        return "\n".join(
            f'<tool_call>\n{{"name": "{c.name}", "arguments": {c.arguments}}}\n</tool_call>'
            for c in calls
        )

    def grammar(self, tools: Sequence[Tool], *, parallel: bool) -> GrammarSpec:
        rep = "+" if parallel else ""
        return GrammarSpec(
            "lark",
            f'start: (call "\\n"?){rep}\n'
            'call: "<tool_call>\\n" body "\\n</tool_call>"\n'
            f"body: {lark_json(call_schema(tools, 'arguments'))}\n",
        )


class Llama3(ToolSyntax):
    name = "llama3"
    markers = ("<|python_tag|>",)
    leading = ("{",)
    _builtin = re.compile(r"^\s*([A-Za-z_][\w]*)\.call\((.*)\)\s*$", re.DOTALL)

    def parse(self, text: str) -> tuple[str, list[ParsedCall]]:
        body = text
        cut = body.find("<|python_tag|>")
        head = ""
        if cut >= 0:
            head, body = body[:cut], body[cut + len("<|python_tag|>") :]
        elif not body.lstrip().startswith("{"):
            return text, []
        calls = self._json_calls(body)
        if calls is None and cut >= 0:
            calls = self._builtin_call(body)
        if not calls:
            return text, []
        return head.strip(), calls

    @staticmethod
    def _json_calls(body: str) -> list[ParsedCall] | None:
        decoder = json.JSONDecoder()
        calls: list[ParsedCall] = []
        pos, rest = 0, body.strip()
        while pos < len(rest):
            try:
                obj, end = decoder.raw_decode(rest, pos)
            except ValueError:
                return None
            call = _call_from(obj, ("parameters", "arguments"))
            if call is None:
                return None
            calls.append(call)
            pos = end
            while pos < len(rest) and rest[pos] in " \n\t;":
                pos += 1
        return calls or None

    def _builtin_call(self, body: str) -> list[ParsedCall] | None:
        m = self._builtin.match(body)
        if m is None:
            return None
        try:
            node = ast.parse(f"f({m.group(2)})", mode="eval").body
            assert isinstance(node, ast.Call) and not node.args
            args = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg}
        except (SyntaxError, ValueError, AssertionError):
            return None
        return [ParsedCall(m.group(1), json.dumps(args, ensure_ascii=False))]

    def write(self, calls: Sequence[ParsedCall]) -> str:
        return "; ".join(
            '{"name": "' + c.name + '", "parameters": ' + c.arguments + "}" for c in calls
        )

    def grammar(self, tools: Sequence[Tool], *, parallel: bool) -> GrammarSpec:
        rep = ' ("; " body)*' if parallel else ""
        return GrammarSpec(
            "lark",
            f"start: body{rep}\nbody: {lark_json(call_schema(tools, 'parameters'))}\n",
        )


class Mistral(ToolSyntax):
    name = "mistral"
    markers = ("[TOOL_CALLS]",)
    leading = ("[{",)
    _args = re.compile(r"\s*([A-Za-z0-9_-]+)\[ARGS\]")

    def parse(self, text: str) -> tuple[str, list[ParsedCall]]:
        cut = text.find("[TOOL_CALLS]")
        if cut >= 0:
            head, body = text[:cut], text[cut + len("[TOOL_CALLS]") :]
        elif text.lstrip().startswith("[{"):
            head, body = "", text
        else:
            return text, []
        calls = self._array(body)
        if calls is None:
            calls = self._named(body)
        if not calls:
            return text, []
        return head.strip(), calls

    @staticmethod
    def _array(body: str) -> list[ParsedCall] | None:
        try:
            value, _ = json.JSONDecoder().raw_decode(body.strip())
        except ValueError:
            return None
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list):
            return None
        calls = [_call_from(v, ("arguments", "parameters")) for v in value]
        return None if not calls or any(c is None for c in calls) else calls  # type: ignore[return-value]

    def _named(self, body: str) -> list[ParsedCall] | None:
        decoder = json.JSONDecoder()
        calls: list[ParsedCall] = []
        pos = 0
        while pos < len(body):
            m = self._args.match(body, pos)
            if m is None:
                break
            try:
                obj, pos = decoder.raw_decode(body, m.end())
            except ValueError:
                return None
            args = _arguments_text(obj)
            if args is None:
                return None
            calls.append(ParsedCall(m.group(1), args))
            if body.startswith("[TOOL_CALLS]", pos):
                pos += len("[TOOL_CALLS]")
        return calls or None

    def write(self, calls: Sequence[ParsedCall]) -> str:
        items = ", ".join(
            '{"name": "' + c.name + '", "arguments": ' + c.arguments + "}" for c in calls
        )
        return f"[TOOL_CALLS][{items}]"

    def grammar(self, tools: Sequence[Tool], *, parallel: bool) -> GrammarSpec:
        # [TOOL_CALLS] is a control token the grammar cannot spell as text; the array it
        # introduces is a call on its own (see the module docstring).
        rep = ' (", " body)*' if parallel else ""
        return GrammarSpec(
            "lark",
            f'start: "[" body{rep} "]"\nbody: {lark_json(call_schema(tools, "arguments"))}\n',
        )


_SYNTAXES: dict[str, ToolSyntax] = {s.name: s for s in (Hermes(), Llama3(), Mistral())}


def syntax_named(name: str, model: str = "") -> ToolSyntax:
    """The family a template uses; a template that cannot take tools is a 400 saying so."""
    syntax = _SYNTAXES.get(name)
    if syntax is None:
        who = f"model {model!r}" if model else "this model"
        raise InvalidRequestError(
            f"the chat template of {who} cannot take tools (it has no 'tools' variable or no "
            "tool-call syntax Tightwad knows: hermes <tool_call>, llama3, mistral [TOOL_CALLS])",
            param="tools",
        )
    return syntax
