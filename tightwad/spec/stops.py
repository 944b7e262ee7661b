"""Stop conditions of a completion: stop strings over streamed text, EOS and max_tokens.

Owns :class:`StopScanner` (text level) and :class:`OutputGuard` (token level, for the gateway's
accepted blocks). Guarantees: text after the start of a stop string is never emitted; a tail
that could still become a stop string is held back until it cannot (or the stream ends); inside
an accepted block, tokens after an EOS/EOG token, after the token completing a stop string or
past ``max_tokens`` are neither emitted nor counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from tightwad.spec.detok import IncrementalDetokenizer

__all__ = ["BlockResult", "FinishReason", "OutputGuard", "StopScanner"]

FinishReason = Literal["stop", "length"]


class StopScanner:
    """Scans streamed text for stop strings (empty strings are ignored)."""

    __slots__ = ("_held", "_stops", "matched", "stopped")

    def __init__(self, stop_strings: Iterable[str]) -> None:
        self._stops: tuple[str, ...] = tuple(sorted({s for s in stop_strings if s}))
        self._held = ""
        self.stopped = False
        self.matched: str | None = None

    @property
    def held(self) -> str:
        """Text withheld because it may be the start of a stop string."""
        return self._held

    def feed(self, text: str) -> str:
        """Text safe to emit now. After a match: the text before the stop, then always ""."""
        if self.stopped:
            return ""
        buf = self._held + text
        hit = self._earliest_match(buf)
        if hit is not None:
            at, stop = hit
            self._held, self.stopped, self.matched = "", True, stop
            return buf[:at]
        keep = self._holdback(buf)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        """End of stream: release held text (it can no longer become a stop)."""
        out, self._held = ("" if self.stopped else self._held), ""
        return out

    def _earliest_match(self, buf: str) -> tuple[int, str] | None:
        """The stop a token-by-token stream would have hit first: the earliest to *end*.

        Ties (same end) go to the earliest start. Ranking by end, not start, makes the result
        independent of how the text was cut into chunks (stops ["a", "\\naa"] on "\\naa" stop at
        "\\n", since "a" completes before "\\naa" does).
        """
        best: tuple[int, int, str] | None = None
        for stop in self._stops:
            at = buf.find(stop)
            if at >= 0:
                key = (at + len(stop), at, stop)
                if best is None or key < best:
                    best = key
        return None if best is None else (best[1], best[2])

    def _holdback(self, buf: str) -> int:
        """Length of the longest suffix of buf that is a proper prefix of some stop string."""
        longest = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(buf)), longest, -1):
                if buf.endswith(stop[:n]):
                    longest = n
                    break
        return longest


@dataclass(frozen=True, slots=True)
class BlockResult:
    """What to do with one accepted block of tokens.

    ``kept``: how many leading tokens of the block count as output; ``text``: text to emit now;
    ``finish_reason``: set when the completion ends inside this block.
    """

    kept: int
    text: str
    finish_reason: FinishReason | None


class OutputGuard:
    """Applies EOS/EOG, ``max_tokens`` and stop strings to accepted blocks, token by token.

    An EOG token ends the completion with "stop" and is not counted; the token completing a
    stop string is counted, its text cut before the stop; reaching ``max_tokens`` ends it with
    "length". Once finished, every later block keeps nothing.
    """

    def __init__(
        self,
        pieces: Sequence[bytes],
        *,
        stop_strings: Iterable[str] = (),
        eog_token_ids: Iterable[int] = (),
        max_tokens: int | None = None,
    ) -> None:
        if max_tokens is not None and max_tokens < 0:
            raise ValueError("max_tokens: must be >= 0")
        self._detok = IncrementalDetokenizer(pieces)
        self._scanner = StopScanner(stop_strings)
        self._eog = frozenset(int(t) for t in eog_token_ids)
        self.max_tokens = max_tokens
        self.count = 0
        self.finish_reason: FinishReason | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def push_block(self, tokens: Sequence[int]) -> BlockResult:
        """Process an accepted block (accepted draft tokens + the next token)."""
        parts: list[str] = []
        kept = 0
        for token in tokens:
            if self._budget_spent():
                self._finish("length", parts)
            if self.finished:
                break
            if token in self._eog:
                self._finish("stop", parts)
                break
            kept += 1
            self.count += 1
            parts.append(self._scanner.feed(self._detok.push(token)))
            if self._scanner.stopped:
                self.finish_reason = "stop"
                break
        if not self.finished and self._budget_spent():
            self._finish("length", parts)
        return BlockResult(kept=kept, text="".join(parts), finish_reason=self.finish_reason)

    def finish(self) -> str:
        """The stream ended for another reason (context full, engine done): release held text."""
        parts: list[str] = []
        if not self.finished:
            self._flush(parts)
        return "".join(parts)

    def _budget_spent(self) -> bool:
        return self.max_tokens is not None and self.count >= self.max_tokens

    def _finish(self, reason: FinishReason, parts: list[str]) -> None:
        if not self.finished:
            self._flush(parts)
            self.finish_reason = reason

    def _flush(self, parts: list[str]) -> None:
        parts.append(self._scanner.feed(self._detok.flush()))
        if self._scanner.stopped:
            self.finish_reason = "stop"
        else:
            parts.append(self._scanner.flush())
