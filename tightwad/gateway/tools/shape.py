"""Tools around the loop: the request's grammar before, its output shaped into calls after.

The API layer calls both, with the route's tool-call syntax (``hermes`` for Qwen2.5/Hermes
templates; see :func:`~tightwad.engine.chat_template.tool_syntax_of` and
:func:`syntax_of_rendered`):

- :func:`apply_tools` returns the request with ``grammar`` set from
  :func:`~tightwad.gateway.tools.grammar.tool_grammar` when tools are active (a
  ``response_format`` grammar, when given, is kept: it decides the output's shape);
- :func:`shape_tool_calls` wraps the loop's event stream: text before a call passes through as
  :class:`~tightwad.gateway.types.TextDelta` (only a tail that may still begin a call marker
  is held back), calls come out as :class:`~tightwad.gateway.types.ToolCallDelta` events
  (index; id ``call_<random>`` and name once; then the arguments in pieces) and the
  :class:`~tightwad.gateway.types.Finished` event says ``tool_calls`` when any were made.
  With ``parallel_tool_calls`` false only the first call is kept.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import replace

from tightwad.gateway.tools.grammar import tool_grammar
from tightwad.gateway.tools.stream import new_call_id, tool_call_events
from tightwad.gateway.tools.syntax import ToolSyntax, syntax_named
from tightwad.gateway.types import GenerationEvent, GenerationRequest

__all__ = [
    "DEFAULT_SYNTAX",
    "PROBE_CALL_ID",
    "PROBE_TOOL",
    "apply_tools",
    "shape_tool_calls",
    "syntax_of_rendered",
    "tools_active",
]

DEFAULT_SYNTAX = "hermes"

# A conversation a route renders once through its model's template to learn its call syntax:
# an assistant message calling PROBE_TOOL (see syntax_of_rendered).
PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "tightwad_probe",
        "description": "probe",
        "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}},
    },
}
PROBE_CALL_ID = "call_tightwadprobe"


def syntax_of_rendered(text: str) -> str | None:
    """The call syntax a template used when it rendered the probe conversation (a user
    message, then an assistant message calling ``tightwad_probe`` with ``{"x": 1}``, with
    ``tools=[PROBE_TOOL]``); ``None`` when the call did not reach the text (the template
    cannot take tools)."""
    if "tightwad_probe" not in text:
        return None
    if "<tool_call>" in text:
        return "hermes"
    if "[TOOL_CALLS]" in text:
        return "mistral"
    if "<|python_tag|>" in text or '"parameters"' in text:
        return "llama3"
    return None


def tools_active(request: GenerationRequest) -> bool:
    return bool(request.tools) and request.tool_choice.mode != "none"


def _syntax(syntax: ToolSyntax | str, model: str) -> ToolSyntax:
    return syntax_named(syntax, model) if isinstance(syntax, str) else syntax


def apply_tools(
    request: GenerationRequest, *, syntax: ToolSyntax | str = DEFAULT_SYNTAX
) -> GenerationRequest:
    """``request`` with the grammar its tools ask for (unchanged when no tools are active or a
    ``response_format`` grammar is set). A template without a call syntax is a 400."""
    if not tools_active(request) or request.grammar is not None:
        return request
    fam = _syntax(syntax, request.model)
    grammar = tool_grammar(request.tools, request.tool_choice, fam, request.parallel_tool_calls)
    return replace(request, grammar=grammar)


async def shape_tool_calls(
    events: AsyncIterator[GenerationEvent],
    request: GenerationRequest,
    *,
    syntax: ToolSyntax | str = DEFAULT_SYNTAX,
    make_id: Callable[[], str] = new_call_id,
) -> AsyncIterator[GenerationEvent]:
    """``events`` with the model's tool calls split out (see the module docstring); passes
    everything through unchanged when the request has no active tools."""
    if not tools_active(request):
        async for ev in events:
            yield ev
        return
    shaped = tool_call_events(
        events,
        _syntax(syntax, request.model),
        make_id=make_id,
        parallel=request.parallel_tool_calls,
    )
    async for ev in shaped:
        yield ev
