"""The chat pipeline's :class:`GenerationEvent` stream as Responses API objects and events.

Owns :class:`ResponseAssembler`, a pure state machine: fed the Backend's events it returns the
Responses streaming events each one causes, numbered by ``sequence_number``, and keeps the
Response object they build; a whole (non-streamed) body is the same object, so a streamed and a
non-streamed answer cannot disagree. The order of events, as OpenAI sends them:

    response.created, response.in_progress                     (status in_progress, output [])
    per output item, in output order:
      a message:  response.output_item.added, response.content_part.added,
                  response.output_text.delta ..., response.output_text.done,
                  response.content_part.done, response.output_item.done
      a call:     response.output_item.added (arguments ""),
                  response.function_call_arguments.delta ..., .done,
                  response.output_item.done
    response.completed   or, when max_output_tokens cut the answer, response.incomplete
                         (incomplete_details.reason "max_output_tokens")
    after a failure: error, then response.failed (response.error set)

Text before a call is a message item before the call's item; the model's calls are
``function_call`` items (``call_id`` from the pipeline, ``id`` ``fc_...``). A response with
neither text nor calls still has one (empty) message item. Usage counts the pipeline's tokens
(``input_tokens_details.cached_tokens``: the prompt prefix the engine reused;
``cache_write_tokens``: the rest, which its KV cache now holds); the final
Response object carries the ``tightwad`` statistics as chat's bodies do.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tightwad.gateway.types import Finished, LogprobEntry, TextDelta, ToolCallDelta

__all__ = ["ResponseAssembler", "new_item_id", "usage_json"]


def new_item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def usage_json(finished: Finished) -> dict[str, Any]:
    usage = finished.usage
    cached = finished.stats.cached_prompt_tokens
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": cached,
            # the prompt tokens the engine computed (its KV cache keeps them for a next turn)
            "cache_write_tokens": max(usage.prompt_tokens - cached, 0),
        },
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    }


def _logprob_json(entry: LogprobEntry) -> dict[str, Any]:
    return {
        "token": entry.token,
        "logprob": entry.logprob,
        "bytes": list(entry.token_bytes),
        "top_logprobs": [
            {"token": token, "logprob": logprob, "bytes": list(raw)}
            for token, raw, logprob in entry.top
        ],
    }


@dataclass(slots=True)
class _Message:
    index: int
    id: str
    text: str = ""
    logprobs: list[dict[str, Any]] = field(default_factory=list)

    def part(self) -> dict[str, Any]:
        return {
            "type": "output_text",
            "text": self.text,
            "annotations": [],
            "logprobs": list(self.logprobs),
        }

    def item(self, status: str, *, with_part: bool = True) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": [self.part()] if with_part else [],
        }


@dataclass(slots=True)
class _Call:
    index: int
    id: str
    call_id: str
    name: str
    arguments: str = ""

    def item(self, status: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function_call",
            "status": status,
            "call_id": self.call_id,
            "name": self.name,
            "arguments": self.arguments,
        }


class ResponseAssembler:
    """One Response, built from the pipeline's events (see the module docstring)."""

    def __init__(
        self,
        response_id: str,
        model: str,
        echo: Mapping[str, Any],
        *,
        created_at: int | None = None,
        make_id: Callable[[str], str] = new_item_id,
    ) -> None:
        self._id = response_id
        self._model = model
        self._echo = dict(echo)
        self._created = int(time.time()) if created_at is None else created_at
        self._make_id = make_id
        self._seq = 0
        self._done: list[dict[str, Any]] = []  # finished output items, in order
        self._open: _Message | _Call | None = None
        self._calls: dict[int, _Call] = {}  # by ToolCallDelta.index
        self._pending_logprobs: list[dict[str, Any]] = []
        self.response: dict[str, Any] = self._snapshot("in_progress")

    # -- events in ---------------------------------------------------------------------------

    def start(self) -> list[dict[str, Any]]:
        """``response.created`` and ``response.in_progress``."""
        return [
            self._event("response.created", response=self._snapshot("in_progress")),
            self._event("response.in_progress", response=self._snapshot("in_progress")),
        ]

    def feed(self, event: TextDelta | ToolCallDelta) -> list[dict[str, Any]]:
        if isinstance(event, ToolCallDelta):
            return self._call_delta(event)
        return self._text_delta(event)

    def finish(self, finished: Finished) -> list[dict[str, Any]]:
        """Close the open item and end with ``response.completed`` (or ``.incomplete``)."""
        incomplete = finished.finish_reason == "length"
        events: list[dict[str, Any]] = []
        if self._open is None and not self._done:
            events += self._open_message()
        events += self._close("incomplete" if incomplete else "completed")
        status = "incomplete" if incomplete else "completed"
        self.response = self._snapshot(status, finished)
        kind = "response.incomplete" if incomplete else "response.completed"
        events.append(self._event(kind, response=self.response))
        return events

    def fail(self, error: Mapping[str, Any]) -> list[dict[str, Any]]:
        """After a failure mid-stream: an ``error`` event, then ``response.failed``.
        ``error`` is an OpenAI error body's inner object (message, type, param, code)."""
        message = str(error.get("message") or "The server had an error.")
        code = error.get("code") or error.get("type") or "server_error"
        events = [
            self._event("error", code=code, message=message, param=error.get("param")),
        ]
        self.response = self._snapshot("failed")
        self.response["error"] = {"code": "server_error", "message": message}
        events.append(self._event("response.failed", response=self.response))
        return events

    # -- items -------------------------------------------------------------------------------

    def _next_index(self) -> int:
        return len(self._done) + (1 if self._open is not None else 0)

    def _open_message(self) -> list[dict[str, Any]]:
        msg = _Message(self._next_index(), self._make_id("msg"))
        self._open = msg
        return [
            self._event(
                "response.output_item.added",
                output_index=msg.index,
                item=msg.item("in_progress", with_part=False),
            ),
            self._event(
                "response.content_part.added",
                item_id=msg.id,
                output_index=msg.index,
                content_index=0,
                part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
            ),
        ]

    def _text_delta(self, delta: TextDelta) -> list[dict[str, Any]]:
        self._pending_logprobs += [_logprob_json(e) for e in delta.logprobs]
        if not delta.text:
            return []
        events: list[dict[str, Any]] = []
        if not isinstance(self._open, _Message):
            events += self._close("completed")
            events += self._open_message()
        msg = self._open
        assert isinstance(msg, _Message)
        logprobs, self._pending_logprobs = self._pending_logprobs, []
        msg.text += delta.text
        msg.logprobs += logprobs
        events.append(
            self._event(
                "response.output_text.delta",
                item_id=msg.id,
                output_index=msg.index,
                content_index=0,
                delta=delta.text,
                logprobs=logprobs,
            )
        )
        return events

    def _call_delta(self, delta: ToolCallDelta) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        call = self._calls.get(delta.index)
        if call is None:
            events += self._close("completed")
            call = _Call(self._next_index(), self._make_id("fc"), delta.id, delta.name)
            self._calls[delta.index] = call
            self._open = call
            events.append(
                self._event(
                    "response.output_item.added",
                    output_index=call.index,
                    item=call.item("in_progress"),
                )
            )
        if delta.arguments:
            call.arguments += delta.arguments
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=call.id,
                    output_index=call.index,
                    delta=delta.arguments,
                )
            )
        return events

    def _close(self, status: str) -> list[dict[str, Any]]:
        item, self._open = self._open, None
        if item is None:
            return []
        if isinstance(item, _Call):
            done = item.item(status)
            self._done.append(done)
            return [
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item.id,
                    output_index=item.index,
                    arguments=item.arguments,
                ),
                self._event("response.output_item.done", output_index=item.index, item=done),
            ]
        item.logprobs += self._pending_logprobs
        self._pending_logprobs = []
        done = item.item(status)
        self._done.append(done)
        where = {"item_id": item.id, "output_index": item.index, "content_index": 0}
        return [
            self._event(
                "response.output_text.done", **where, text=item.text, logprobs=item.logprobs
            ),
            self._event("response.content_part.done", **where, part=item.part()),
            self._event("response.output_item.done", output_index=item.index, item=done),
        ]

    # -- objects -----------------------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return event

    def _snapshot(self, status: str, finished: Finished | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self._id,
            "object": "response",
            "created_at": self._created,
            "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": None,
            "incomplete_details": (
                {"reason": "max_output_tokens"} if status == "incomplete" else None
            ),
            "model": self._model,
            "output": [dict(item) for item in self._done],
            "usage": usage_json(finished) if finished is not None else None,
            **self._echo,
        }
        if finished is not None:
            body["tightwad"] = finished.stats.as_json()
        return body
