"""Hermes tool calls streamed while they are generated.

Fed the call region of the output (from the first ``<tool_call>`` on, growing), a
:class:`LiveCalls` emits each call as soon as its name is known (index, id, name) and then
its arguments' JSON text as it arrives, up to the closing brace of the arguments object (a
JSON scanner that knows strings and escapes finds it); ``}`` and ``</tool_call>`` are never
sent. A block whose head is not ``{"name": ..., "arguments": {`` waits for its
``</tool_call>`` and is parsed whole. Text between blocks is content, given at the end; a
region with no call in it comes back whole as content.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from tightwad.gateway.tools.syntax import Hermes
from tightwad.gateway.types import ToolCallDelta

__all__ = ["LiveCalls"]

_MARK, _END = "<tool_call>", "</tool_call>"
_HEAD = re.compile(
    r'<tool_call>\s*\{\s*"name"\s*:\s*"([A-Za-z0-9_-]{1,64})"\s*,\s*"arguments"\s*:\s*'
)


class LiveCalls:
    def __init__(self, make_id: Callable[[], str], *, parallel: bool = True) -> None:
        self._make_id = make_id
        self._parallel = parallel
        self._text = ""
        self._pos = 0  # everything before is handled
        self._state = "between"  # between | head | args | closing | done
        self._index = 0
        self._between: list[str] = []
        # args state
        self._scan = 0
        self._sent = 0
        self._depth = 0
        self._in_str = False
        self._esc = False

    @property
    def calls(self) -> int:
        return self._index

    def feed(self, region: str) -> Iterator[ToolCallDelta]:
        """``region``: the whole call region so far (it only grows)."""
        self._text = region
        while True:
            before = (self._state, self._pos, self._scan)
            yield from self._step()
            if (self._state, self._pos, self._scan) == before:
                return

    def _step(self) -> Iterator[ToolCallDelta]:
        t = self._text
        if self._state == "between":
            i = t.find(_MARK, self._pos)
            if i >= 0:
                self._between.append(t[self._pos : i])
                self._pos, self._state = i, "head"
        elif self._state == "head":
            m = _HEAD.match(t, self._pos)
            if m is not None and len(t) > m.end():
                if t[m.end()] != "{":
                    yield from self._whole_block()
                    return
                yield ToolCallDelta(index=self._index, id=self._make_id(), name=m.group(1))
                self._state, self._scan, self._sent = "args", m.end(), m.end()
                self._depth, self._in_str, self._esc = 0, False, False
            elif m is None:
                yield from self._whole_block()
        elif self._state == "args":
            yield from self._args()
        elif self._state == "closing":
            j = t.find(_END, self._pos)
            if j >= 0:
                self._pos = j + len(_END)
                self._state = "between" if self._parallel else "done"

    def _whole_block(self) -> Iterator[ToolCallDelta]:
        """A block without the usual head: parsed whole once it closes."""
        t = self._text
        j = t.find(_END, self._pos)
        if j < 0:
            return
        _, calls = Hermes().parse(t[self._pos : j + len(_END)])
        if calls:
            call = calls[0]
            yield ToolCallDelta(index=self._index, id=self._make_id(), name=call.name)
            yield ToolCallDelta(index=self._index, arguments=call.arguments)
            self._index += 1
        else:
            self._between.append(t[self._pos : j + len(_END)])
        self._pos = j + len(_END)
        self._state = "done" if calls and not self._parallel else "between"

    def _args(self) -> Iterator[ToolCallDelta]:
        t = self._text
        i = self._scan
        end = -1
        while i < len(t):
            c = t[i]
            i += 1
            if self._in_str:
                if self._esc:
                    self._esc = False
                elif c == "\\":
                    self._esc = True
                elif c == '"':
                    self._in_str = False
            elif c == '"':
                self._in_str = True
            elif c in "{[":
                self._depth += 1
            elif c in "}]":
                self._depth -= 1
                if self._depth == 0:
                    end = i
                    break
        self._scan = i
        upto = end if end >= 0 else i
        if upto > self._sent:
            yield ToolCallDelta(index=self._index, arguments=t[self._sent : upto])
            self._sent = upto
        if end >= 0:
            self._pos, self._state = end, "closing"
            self._index += 1

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        """The output ended: the content found between calls and the last deltas (a block
        cut by the length limit is parsed as far as it goes)."""
        last: list[ToolCallDelta] = []
        rest = self._text[self._pos :]
        if self._state in ("between", "head") and rest:
            _, calls = Hermes().parse(rest) if self._state == "head" else ("", [])
            if calls and (self._parallel or self._index == 0):
                call = calls[0]
                last = [
                    ToolCallDelta(index=self._index, id=self._make_id(), name=call.name),
                    ToolCallDelta(index=self._index, arguments=call.arguments),
                ]
                self._index += 1
            else:
                self._between.append(rest)
        content = "".join(self._between)
        return (content.strip() if self._index else content), last
