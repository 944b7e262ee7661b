"""A chat request's tools against the route that serves it: the route's call syntax, the prompt
rendered with the tools, and the grammar they ask for.

:func:`prepare_chat` is what the API layer calls before ``Backend.generate``; it returns the
request to send and the call syntax to shape the output with (:func:`shape_tool_calls`).

Guarantees:

- a route learns its call syntax once, by rendering a probe conversation through its model's
  own template (:func:`syntax_of_rendered`); a template that drops the call, or a target that
  renders no tools (an HTTP server's template is out of our reach), makes a request with
  active tools a 400 saying so, before any generation;
- a conversation with tools or tool-call history is rendered by the target with the tools as
  its template's ``tools`` variable and the messages' ``tool_calls`` / ``tool_call_id`` (the
  tokens then travel as ``prompt_tokens``; ``messages`` stay set for errors and logs);
- a route that is not a speculative loop over an Engine (a text-only passthrough) gets the
  request unchanged: it refuses grammars and tools itself.
"""

from __future__ import annotations

import contextlib
import json
import weakref
from dataclasses import replace
from typing import Any, Protocol

from tightwad.errors import InvalidRequestError, TightwadError
from tightwad.gateway.tools.request import Tool, ToolCall
from tightwad.gateway.tools.shape import (
    PROBE_CALL_ID,
    PROBE_TOOL,
    apply_tools,
    syntax_of_rendered,
    tools_active,
)
from tightwad.gateway.types import ChatMessage, GenerationRequest
from tightwad.logs import get_logger

__all__ = ["ChatRendering", "prepare_chat", "probe_syntax", "renderer_of"]

log = get_logger("tightwad.gateway.tools")

_PROBE_MESSAGES = (
    ChatMessage(role="user", content="probe"),
    ChatMessage(
        role="assistant",
        content="",
        tool_calls=(ToolCall(PROBE_CALL_ID, "tightwad_probe", json.dumps({"x": 1})),),
    ),
)


class ChatRendering(Protocol):
    """What renders a route's chat prompts (an :class:`~tightwad.gateway.engine_client.
    EngineClient` of its target)."""

    async def render_chat(
        self, messages: Any, *, add_generation_prompt: bool = True, tools: Any = ()
    ) -> list[int]: ...

    async def render_chat_text(
        self, messages: Any, *, add_generation_prompt: bool = True, tools: Any = ()
    ) -> tuple[str, list[int]]: ...


def renderer_of(backend: object) -> ChatRendering | None:
    """The target client of a speculative route (``SpecBackend.spec.target``), else None."""
    target = getattr(getattr(backend, "spec", None), "target", None)
    if target is not None and hasattr(target, "render_chat_text"):
        return target  # type: ignore[no-any-return]
    return None


# The syntax each route's backend renders calls in (None: its template takes no tools), or the
# error its target gave for tools; learned once per backend object.
_SYNTAX: weakref.WeakKeyDictionary[object, str | TightwadError | None] = weakref.WeakKeyDictionary()


async def probe_syntax(renderer: ChatRendering) -> str | None:
    """Render the probe conversation (a call to ``tightwad_probe`` with ``{"x": 1}``) and
    name the syntax the template wrote it in; an error of the target propagates."""
    text, _ = await renderer.render_chat_text(
        _PROBE_MESSAGES, add_generation_prompt=False, tools=[PROBE_TOOL]
    )
    return syntax_of_rendered(text)


async def _route_syntax(backend: object, renderer: ChatRendering, model: str) -> str:
    try:
        known = _SYNTAX[backend]
    except (KeyError, TypeError):
        try:
            known = await probe_syntax(renderer)
        except InvalidRequestError as exc:
            known = exc  # the target renders no tools (an HTTP server's template)
        with contextlib.suppress(TypeError):  # not weak-referenceable: probe next time
            _SYNTAX[backend] = known
        log.info("route_tool_syntax", route=model, syntax=str(known))
    if isinstance(known, TightwadError):
        raise InvalidRequestError(known.message, param="tools")
    if known is None:
        raise InvalidRequestError(
            f"model {model} cannot take tools: its chat template does not render tool calls",
            param="tools",
        )
    return known


def _has_tool_history(request: GenerationRequest) -> bool:
    return any(m.tool_calls or m.tool_call_id for m in request.messages or ())


async def prepare_chat(
    backend: object, request: GenerationRequest
) -> tuple[GenerationRequest, str | None]:
    """``request`` as ``backend`` should get it, and the call syntax to shape its output
    with (None: no active tools). See the module docstring."""
    renderer = renderer_of(backend)
    if request.messages is None or renderer is None:
        return request, None
    active = tools_active(request)
    if not active and not _has_tool_history(request):
        return request, None
    syntax: str | None = None
    if active:
        syntax = await _route_syntax(backend, renderer, request.model)
        request = apply_tools(request, syntax=syntax)
    tools: tuple[Tool, ...] = request.tools if active else ()
    tokens = await renderer.render_chat(request.messages, tools=tools)
    return replace(request, prompt_tokens=tuple(tokens)), syntax
