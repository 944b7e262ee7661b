"""A bounded ring of a process's log lines, with followers that see new lines as they come.

``tail(n)`` is a snapshot; ``follow(after_seq)`` yields lines with ``seq > after_seq`` until
the caller stops iterating, waking on each append (no polling task, no background task). A
slow follower that falls more than the ring's capacity behind skips the lines it lost; it never
blocks the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

from tightwad.agent.processes.domain import LogLine

__all__ = ["LogRing"]


class LogRing:
    def __init__(self, capacity: int = 2000) -> None:
        self._lines: deque[LogLine] = deque(maxlen=capacity)
        self._seq = 0
        self._waiters: set[asyncio.Future[None]] = set()

    @property
    def last_seq(self) -> int:
        return self._seq

    def append(self, time: float, stream: str, line: str) -> LogLine:
        self._seq += 1
        entry = LogLine(seq=self._seq, time=time, stream=stream, line=line)
        self._lines.append(entry)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()
        return entry

    def tail(self, n: int = 0) -> list[LogLine]:
        """The last ``n`` lines (``0``: all that the ring holds)."""
        lines = list(self._lines)
        return lines[-n:] if n > 0 else lines

    def since(self, seq: int) -> list[LogLine]:
        return [line for line in self._lines if line.seq > seq]

    async def follow(self, after_seq: int, wake_s: float = 5.0) -> AsyncIterator[LogLine]:
        """Lines after ``after_seq`` as they come; each wait lasts at most ``wake_s``."""
        seen = after_seq
        while True:
            for line in self.since(seen):
                seen = line.seq
                yield line
            if self._seq != seen:
                continue
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.add(waiter)
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter, wake_s)
            finally:
                self._waiters.discard(waiter)
