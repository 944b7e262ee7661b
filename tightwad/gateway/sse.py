"""OpenAI response shapes (whole bodies and stream chunks) and the Server-Sent Events writer.

Owns :class:`ChatRenderer` and :class:`CompletionRenderer`, which turn the Backend's
:class:`TextDelta` / :class:`Finished` events into the exact JSON OpenAI returns, and
:class:`SSEWriter`, which frames chunks as ``data: {...}\\n\\n`` and ends with ``data: [DONE]``.

Stream shapes (as OpenAI sends them):

- chat: a role chunk (``delta = {"role": "assistant", "content": ""}``), one chunk per content
  delta, a finish chunk (empty delta, ``finish_reason``), then, with
  ``stream_options.include_usage``, a usage chunk with ``choices: []``; every other chunk then
  carries ``"usage": null``.
- completions: one chunk per text delta, a finish chunk (empty text, ``finish_reason``), then the
  optional usage chunk.

The finish chunk, the usage chunk and every whole body carry a ``tightwad`` object
(:meth:`GenerationStats.as_json`). Usage is always the Backend's own count.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tightwad.gateway.openai_schema import ParsedRequest
from tightwad.gateway.tools.stream import assemble_tool_calls, tool_call_chunk
from tightwad.gateway.types import (
    Finished,
    GenerationStats,
    LogprobEntry,
    TextDelta,
    ToolCallDelta,
    Usage,
)

__all__ = [
    "ChatRenderer",
    "CompletionRenderer",
    "Renderer",
    "SSEWriter",
    "combined",
    "merge_bodies",
    "renderer_for",
    "summed_stats",
]

SYSTEM_FINGERPRINT = "fp_tightwad"


@dataclass(slots=True)
class _Base:
    response_id: str
    model: str
    logprobs: bool
    include_usage: bool
    created: int = field(default_factory=lambda: int(time.time()))
    # The choice this renderer writes (OpenAI ``index``; one renderer per choice).
    index: int = 0

    def _envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.response_id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        }
        if self.include_usage:
            body["usage"] = None
        return body


def _usage(finished: Finished) -> dict[str, int]:
    usage = finished.usage
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def _with_stats(chunk: dict[str, Any], finished: Finished) -> dict[str, Any]:
    chunk["tightwad"] = finished.stats.as_json()
    return chunk


@dataclass(slots=True)
class ChatRenderer(_Base):
    """``chat.completion`` bodies and ``chat.completion.chunk`` chunks."""

    def start_chunks(self) -> list[dict[str, Any]]:
        delta = {"role": "assistant", "content": ""}
        return [self._chunk(delta, None, None)]

    def delta_chunk(self, delta: TextDelta | ToolCallDelta) -> dict[str, Any] | None:
        if isinstance(delta, ToolCallDelta):
            return self._chunk({"tool_calls": [tool_call_chunk(delta)]}, None, None)
        if not delta.text and not delta.logprobs:
            return None
        return self._chunk({"content": delta.text}, self._logprobs(delta.logprobs), None)

    def finish_chunks(self, finished: Finished) -> list[dict[str, Any]]:
        chunks = [self.finish_chunk(finished)]
        if self.include_usage:
            chunks.append(self.usage_chunk(finished))
        return chunks

    def finish_chunk(self, finished: Finished) -> dict[str, Any]:
        return _with_stats(self._chunk({}, None, finished.finish_reason), finished)

    def usage_chunk(self, finished: Finished) -> dict[str, Any]:
        usage = self._envelope("chat.completion.chunk", [])
        usage["usage"] = _usage(finished)
        return _with_stats(usage, finished)

    def body(
        self, events: Sequence[TextDelta | ToolCallDelta], finished: Finished
    ) -> dict[str, Any]:
        deltas = [e for e in events if isinstance(e, TextDelta)]
        calls = [e for e in events if isinstance(e, ToolCallDelta)]
        entries = [entry for delta in deltas for entry in delta.logprobs]
        content = "".join(delta.text for delta in deltas)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": content or (None if calls else ""),
            "refusal": None,
        }
        if calls:
            message["tool_calls"] = assemble_tool_calls(calls)
        choice = {
            "index": self.index,
            "message": message,
            "logprobs": self._logprobs(entries),
            "finish_reason": finished.finish_reason,
        }
        body = self._envelope("chat.completion", [choice])
        body["usage"] = _usage(finished)
        return _with_stats(body, finished)

    def _chunk(
        self, delta: dict[str, Any], logprobs: dict[str, Any] | None, finish: str | None
    ) -> dict[str, Any]:
        choice = {
            "index": self.index,
            "delta": delta,
            "logprobs": logprobs,
            "finish_reason": finish,
        }
        return self._envelope("chat.completion.chunk", [choice])

    def _logprobs(self, entries: Sequence[LogprobEntry]) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        return {"content": [_chat_entry(entry) for entry in entries], "refusal": None}


def _chat_entry(entry: LogprobEntry) -> dict[str, Any]:
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
class CompletionRenderer(_Base):
    """``text_completion`` bodies and chunks (legacy completions API).

    ``text_offset`` counts characters from the start of the returned text, echoed prompt
    included (the Backend emits the echo as ordinary text before the completion).
    """

    offset: int = 0

    def start_chunks(self) -> list[dict[str, Any]]:
        return []

    def delta_chunk(self, delta: TextDelta) -> dict[str, Any] | None:
        if not delta.text and not delta.logprobs:
            return None
        return self._chunk(delta.text, self._logprobs([delta]), None)

    def finish_chunks(self, finished: Finished) -> list[dict[str, Any]]:
        chunks = [self.finish_chunk(finished)]
        if self.include_usage:
            chunks.append(self.usage_chunk(finished))
        return chunks

    def finish_chunk(self, finished: Finished) -> dict[str, Any]:
        return _with_stats(self._chunk("", None, finished.finish_reason), finished)

    def usage_chunk(self, finished: Finished) -> dict[str, Any]:
        usage = self._envelope("text_completion", [])
        usage["usage"] = _usage(finished)
        return _with_stats(usage, finished)

    def body(self, deltas: Sequence[TextDelta], finished: Finished) -> dict[str, Any]:
        text = "".join(delta.text for delta in deltas)
        choice = self._choice(text, self._logprobs(deltas), finished.finish_reason)
        body = self._envelope("text_completion", [choice])
        body["usage"] = _usage(finished)
        return _with_stats(body, finished)

    def _chunk(
        self, text: str, logprobs: dict[str, Any] | None, finish: str | None
    ) -> dict[str, Any]:
        return self._envelope("text_completion", [self._choice(text, logprobs, finish)])

    def _choice(
        self, text: str, logprobs: dict[str, Any] | None, finish: str | None
    ) -> dict[str, Any]:
        return {"text": text, "index": self.index, "logprobs": logprobs, "finish_reason": finish}

    def _logprobs(self, deltas: Sequence[TextDelta]) -> dict[str, Any] | None:
        """Logprobs of ``deltas``, advancing the running text offset past them."""
        result: dict[str, list[Any]] = {
            "tokens": [],
            "token_logprobs": [],
            "top_logprobs": [],
            "text_offset": [],
        }
        for delta in deltas:
            position = self.offset
            for entry in delta.logprobs:
                result["tokens"].append(entry.token)
                result["token_logprobs"].append(entry.logprob)
                result["top_logprobs"].append({token: lp for token, _, lp in entry.top})
                result["text_offset"].append(position)
                position += len(entry.token)
            self.offset += len(delta.text)
        return result if self.logprobs else None


Renderer = ChatRenderer | CompletionRenderer


def renderer_for(parsed: ParsedRequest, response_id: str, index: int = 0) -> Renderer:
    """The renderer of choice ``index`` for a parsed request's endpoint."""
    cls = ChatRenderer if parsed.endpoint == "chat" else CompletionRenderer
    return cls(
        response_id=response_id,
        model=parsed.request.model,
        logprobs=parsed.request.logprobs,
        include_usage=parsed.include_usage,
        index=index,
    )


def combined(finished: Sequence[Finished]) -> Finished:
    """The end of ``n`` choices as one: usage as OpenAI counts it (the prompt once, the
    completions summed), the first choice's reason; its stats summed over the choices."""
    first = finished[0]
    if len(finished) == 1:
        return first
    usage = Usage(first.usage.prompt_tokens, sum(f.usage.completion_tokens for f in finished))
    return Finished(first.finish_reason, usage, summed_stats([f.stats for f in finished]))


def summed_stats(stats: Sequence[GenerationStats]) -> GenerationStats:
    """The counters and times of several runs added up (the mode is the first run's)."""
    fields_ = [f.name for f in dataclasses.fields(GenerationStats)]
    values: dict[str, Any] = {"mode": stats[0].mode}
    for name in fields_:
        if name == "mode":
            continue
        if name == "accepted_by_position":
            width = max(len(s.accepted_by_position) for s in stats)
            values[name] = tuple(
                sum(s.accepted_by_position[i] for s in stats if i < len(s.accepted_by_position))
                for i in range(width)
            )
            continue
        values[name] = sum(getattr(s, name) for s in stats)
    return GenerationStats(**values)


def merge_bodies(bodies: Sequence[dict[str, Any]], finished: Finished) -> dict[str, Any]:
    """One response body from the bodies of each choice (rendered alone), with the usage and
    stats of ``finished`` (see :func:`combined`)."""
    body = dict(bodies[0])
    body["choices"] = [choice for b in bodies for choice in b["choices"]]
    body["usage"] = _usage(finished)
    return _with_stats(body, finished)


class SSEWriter:
    """Writes ``text/event-stream`` frames to one aiohttp response."""

    def __init__(self, request: web.Request, headers: dict[str, str] | None = None) -> None:
        self._request = request
        self.response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
                **(headers or {}),
            },
        )

    async def prepare(self) -> None:
        await self.response.prepare(self._request)

    async def send(self, payload: dict[str, Any]) -> None:
        data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        await self.response.write(f"data: {data}\n\n".encode())

    async def done(self) -> None:
        await self.response.write(b"data: [DONE]\n\n")
        await self.response.write_eof()

    async def end(self) -> None:
        """End the stream without ``[DONE]`` (after an error event)."""
        await self.response.write_eof()
