"""The grammar a request's ``tools`` and ``tool_choice`` constrain its output with.

:func:`tool_grammar` writes a Lark grammar (llguidance's dialect, the arguments as ``%json``
of each tool's parameters schema) in the model family's own call syntax:

- ``tool_choice`` ``required``: the output is one call of one of the tools (several, one per
  block, when ``parallel_tool_calls``); a named function: one call of that function;
- ``auto``: the output is free text that holds no call marker, or text followed by calls
  whose names and arguments follow the tools (so a model that answers in words may, and a
  model that calls writes a valid call);
- ``none`` (or no tools): no grammar.

Names, braces, keys and markers are then the only continuation the grammar allows, which the
loop drafts for free (forced tokens).
"""

from __future__ import annotations

from collections.abc import Sequence

from tightwad.engine.grammar import GrammarSpec, check_grammar
from tightwad.gateway.tools.request import Tool, ToolChoice
from tightwad.gateway.tools.syntax import ToolSyntax, call_schema, lark_json, syntax_named

__all__ = ["tool_grammar"]


def _text_without(marker: str) -> str:
    """A Lark terminal: any text that does not contain ``marker``."""
    return f"/(?s:.*)/ & ~/(?s:.*{_regex_escape(marker)}.*)/"


def _regex_escape(text: str) -> str:
    out = []
    for ch in text:
        out.append("\\" + ch if ch in r"\.^$|?*+()[]{}/" else ch)
    return "".join(out)


def _auto(syntax: ToolSyntax, tools: Sequence[Tool], parallel: bool) -> GrammarSpec:
    if syntax.name == "hermes":
        schema = lark_json(call_schema(tools, "arguments"))
        more = ' ("\\n" call)*' if parallel else ""
        source = (
            f"start: TEXT | head tail{more}\n"
            # Lazy: the text ends at the first marker (a stop= lexeme would hide the marker
            # from llguidance's draft validation, cutting drafts there).
            f"head[lazy]: /(?s:.*){_regex_escape('<tool_call>')}/\n"
            'call: "<tool_call>" tail\n'
            'tail: "\\n" body "\\n</tool_call>"\n'
            f"body: {schema}\n"
            f"TEXT: {_text_without('<tool_call>')}\n"
        )
    elif syntax.name == "llama3":
        schema = lark_json(call_schema(tools, "parameters"))
        more = ' ("; " body)*' if parallel else ""
        source = (
            f"start: TEXT | body{more}\n"
            f"body: {schema}\n"
            # Text is anything that does not start (after whitespace) with "{".
            "TEXT: /(?s:\\s*[^\\s{].*)?/\n"
        )
    else:
        schema = lark_json(call_schema(tools, "arguments"))
        more = ' (", " body)*' if parallel else ""
        source = (
            f'start: TEXT | "[" body{more} "]"\nbody: {schema}\nTEXT: /(?s:\\s*[^\\s\\[].*)?/\n'
        )
    return GrammarSpec("lark", source)


def tool_grammar(
    tools: Sequence[Tool], tool_choice: ToolChoice, syntax: ToolSyntax | str, parallel: bool
) -> GrammarSpec | None:
    """The grammar for ``tools`` under ``tool_choice`` in ``syntax`` (a family name or a
    :class:`ToolSyntax`); ``None`` when calls are off. A grammar llguidance cannot compile
    is a 400 naming ``tools``."""
    if not tools or tool_choice.mode == "none":
        return None
    fam = syntax_named(syntax) if isinstance(syntax, str) else syntax
    if tool_choice.mode == "function":
        chosen = [t for t in tools if t.name == tool_choice.name]
        spec = fam.grammar(chosen or tools, parallel=False)
    elif tool_choice.mode == "required":
        spec = fam.grammar(tools, parallel=parallel)
    else:
        spec = _auto(fam, tools, parallel)
    check_grammar(spec, param="tools")
    return spec
