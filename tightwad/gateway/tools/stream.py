"""Streaming tool calls: output text in, message content and OpenAI tool-call deltas out.

:class:`CallSplitter` is the pure core: fed the output text piece by piece, it passes on the
text that certainly is content (holding back a tail that could be the start of a call marker),
and from the first marker on keeps the rest as the call region, parsed with the family's
:class:`~tightwad.gateway.tools.syntax.ToolSyntax` when the output ends. A region that does
not parse comes back as content.

:func:`tool_call_events` applies it to a :class:`~tightwad.gateway.types.GenerationEvent`
stream: content as :class:`~tightwad.gateway.types.TextDelta`, each call as
:class:`~tightwad.gateway.types.ToolCallDelta` events in OpenAI's shape (the first delta of a
call carries its index, id and name with empty arguments, the next ones the arguments in
pieces), and ``finish_reason: "tool_calls"`` when the answer holds calls. Assembling the deltas
gives exactly the non-streamed answer.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import replace

from tightwad.gateway.tools.live import LiveCalls
from tightwad.gateway.tools.syntax import ParsedCall, ToolSyntax
from tightwad.gateway.types import Finished, GenerationEvent, TextDelta, ToolCallDelta

__all__ = [
    "CallSplitter",
    "assemble_tool_calls",
    "new_call_id",
    "tool_call_chunk",
    "tool_call_events",
]

# Arguments are streamed in pieces of about this many characters.
ARGUMENT_PIECE = 24


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


class CallSplitter:
    def __init__(self, syntax: ToolSyntax) -> None:
        self._syntax = syntax
        self._held = ""  # text not yet passed on (might begin a marker)
        self._region: str | None = None  # from the first marker on
        self._started = False  # some non-whitespace text has been passed on or held

    def feed(self, text: str) -> str:
        """Take more output; returns the content that is certain now."""
        if self._region is not None:
            self._region += text
            return ""
        buf = self._held + text
        if not self._started:
            stripped = buf.lstrip()
            if not stripped:
                self._held = buf
                return ""
            for lead in self._syntax.leading:
                if stripped.startswith(lead):
                    self._region, self._held = buf, ""
                    return ""
                if lead.startswith(stripped):
                    self._held = buf
                    return ""
            self._started = True
        cut = min((i for i in (buf.find(m) for m in self._syntax.markers) if i >= 0), default=-1)
        if cut >= 0:
            self._region, self._held = buf[cut:], ""
            return buf[:cut]
        keep = _partial_marker(buf, self._syntax.markers)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep]

    @property
    def region(self) -> str | None:
        """The output from the first call marker on (``None`` before one)."""
        return self._region

    def finish(self) -> tuple[str, list[ParsedCall]]:
        """The output ended: the last content and the calls."""
        if self._region is None:
            rest, self._held = self._held, ""
            return rest, []
        region, self._region = self._region, None
        content, calls = self._syntax.parse(region)
        return content, calls


def _partial_marker(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of a marker."""
    best = 0
    for m in markers:
        for n in range(min(len(m) - 1, len(text)), best, -1):
            if text.endswith(m[:n]):
                best = n
                break
    return best


async def tool_call_events(
    events: AsyncIterator[GenerationEvent],
    syntax: ToolSyntax,
    *,
    make_id: Callable[[], str] = new_call_id,
    parallel: bool = True,
) -> AsyncIterator[GenerationEvent]:
    """``events`` with tool calls split out of the text (see the module docstring); only the
    first call is kept unless ``parallel``."""
    splitter = CallSplitter(syntax)
    # Hermes calls stream while they are generated; the other families' at the end.
    live = LiveCalls(make_id, parallel=parallel) if syntax.name == "hermes" else None
    async for ev in events:
        if isinstance(ev, TextDelta):
            text = splitter.feed(ev.text)
            if text or ev.token_ids:
                yield replace(ev, text=text, logprobs=ev.logprobs if text else ())
            if live is not None and splitter.region is not None:
                for delta in live.feed(splitter.region):
                    yield delta
            continue
        if not isinstance(ev, Finished):
            yield ev
            continue
        if live is not None and splitter.region is not None:
            content, last = live.finish()
            made = live.calls
        else:
            content, calls = splitter.finish()
            if not parallel:
                calls = calls[:1]
            last = list(_deltas(calls, make_id))
            made = len(calls)
        if content:
            yield TextDelta(text=content)
        for delta in last:
            yield delta
        if made and ev.finish_reason == "stop":
            ev = replace(ev, finish_reason="tool_calls")
        yield ev


def _deltas(calls: Sequence[ParsedCall], make_id: Callable[[], str]) -> Iterator[ToolCallDelta]:
    for index, call in enumerate(calls):
        yield ToolCallDelta(index=index, id=make_id(), name=call.name, arguments="")
        args = call.arguments
        for start in range(0, len(args), ARGUMENT_PIECE):
            yield ToolCallDelta(index=index, arguments=args[start : start + ARGUMENT_PIECE])


def tool_call_chunk(delta: ToolCallDelta) -> dict[str, object]:
    """One streamed ``delta.tool_calls[]`` entry, as OpenAI sends it."""
    if delta.id:
        return {
            "index": delta.index,
            "id": delta.id,
            "type": "function",
            "function": {"name": delta.name, "arguments": delta.arguments},
        }
    return {"index": delta.index, "function": {"arguments": delta.arguments}}


def assemble_tool_calls(deltas: Sequence[ToolCallDelta]) -> list[dict[str, object]]:
    """The ``message.tool_calls`` of a whole answer, from its deltas."""
    calls: dict[int, dict[str, str]] = {}
    for d in deltas:
        call = calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
        if d.id:
            call["id"], call["name"] = d.id, d.name
        call["arguments"] += d.arguments
    return [
        {
            "id": c["id"],
            "type": "function",
            "function": {"name": c["name"], "arguments": c["arguments"]},
        }
        for _, c in sorted(calls.items())
    ]
