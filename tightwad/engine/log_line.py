"""One line a supervised child process wrote: captured by an agent, streamed to the controller
and ``tightwadctl logs``."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LogLine"]


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line a child wrote; ``stream`` is ``stdout`` or ``stderr``; ``time`` Unix seconds."""

    seq: int
    time: float
    stream: str
    line: str
