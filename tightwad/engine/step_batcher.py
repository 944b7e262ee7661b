"""One forward pass for the pending steps of several sessions (continuous batching, first step).

Sessions hand their Verify (and so every plain step: ``verify([])``, Generate) to the batcher
instead of the compute thread. The batcher queues one drain on the compute thread; the drain
takes every step pending by then, lays them back to back in one ``llama_batch`` (each session's
``[pending, d1..dk]`` at its own positions of its own sequence, every row an output), runs one
``llama_decode``, and hands each session its rows for acceptance, sampling and grammar exactly
as a lone Verify would.

Guarantees:
- A session has at most one step in a batch (its next step needs this one's token).
- Steps of one session keep their order with its other commands: a drain that will take a step
  is on the compute thread's queue before anything the session queues afterwards.
- A failed decode fails the steps of that batch only; a step's own error fails only it.
- Batch mates change a session's numerics in the last bits (different matrix shapes): greedy
  output equals the session decoding alone or differs first at a near-tie of its top two
  logits (tests/support.py's bound).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tightwad.engine.contract import VerifyResult
from tightwad.spec.sampling import SparseDist

if TYPE_CHECKING:
    from tightwad.engine.binding import LlamaModel
    from tightwad.engine.session import Session

__all__ = ["BatchStats", "StepBatcher"]


@dataclass(slots=True)
class _Step:
    session: Session
    draft: list[int]
    q: Sequence[SparseDist] | None
    fut: asyncio.Future[VerifyResult]
    loop: asyncio.AbstractEventLoop


@dataclass(frozen=True, slots=True)
class BatchStats:
    """Decodes run, steps served and tokens decoded by them (occupancy = steps / decodes)."""

    decodes: int
    steps: int
    tokens: int


def _deliver(fut: asyncio.Future[VerifyResult], result: Any, error: BaseException | None) -> None:
    if fut.done():  # the caller gave up on it (cancelled)
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


class StepBatcher:
    def __init__(self, model: LlamaModel, executor: Executor) -> None:
        self._m = model
        self._exec = executor
        self._lock = threading.Lock()
        self._pending: list[_Step] = []
        self._queued = False
        self._decodes = 0
        self._steps = 0
        self._tokens = 0

    @property
    def stats(self) -> BatchStats:
        return BatchStats(self._decodes, self._steps, self._tokens)

    def submit(
        self, session: Session, draft: list[int], q: Sequence[SparseDist] | None
    ) -> asyncio.Future[VerifyResult]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[VerifyResult] = loop.create_future()
        with self._lock:
            self._pending.append(_Step(session, draft, q, fut, loop))
            if not self._queued:
                self._exec.submit(self._drain)
                self._queued = True
        return fut

    # Runs on the compute thread.
    def _drain(self) -> None:
        with self._lock:
            steps, self._pending = self._pending, []
            self._queued = False
        cap = self._m.batch_capacity
        while steps:
            batch: list[_Step] = []
            later: list[_Step] = []
            used = 0
            seen: set[int] = set()
            for st in steps:
                width = len(st.draft) + 1
                if id(st.session) in seen or (batch and used + width > cap):
                    later.append(st)
                    continue
                seen.add(id(st.session))
                batch.append(st)
                used += width
            self._run(batch)
            steps = later

    def _run(self, batch: list[_Step]) -> None:
        t0 = time.perf_counter()
        ready: list[tuple[_Step, list[int], Sequence[SparseDist] | None]] = []
        for st in batch:
            try:
                draft, q = st.session.verify_prepare(st.draft, st.q)
            except Exception as exc:
                st.loop.call_soon_threadsafe(_deliver, st.fut, None, exc)
                continue
            ready.append((st, draft, q))
        if not ready:
            return
        parts = [st.session.verify_part(draft) for st, draft, _q in ready]
        try:
            if len(parts) == 1:
                self._m.decode(*parts[0])  # may exceed one batch: decode chunks it
            else:
                self._m.decode_many(parts)
        except Exception as exc:
            for st, _d, _q in ready:
                st.loop.call_soon_threadsafe(_deliver, st.fut, None, exc)
            return
        self._decodes += 1
        self._steps += len(parts)
        self._tokens += sum(len(p[1]) for p in parts)
        offset = 0
        for (st, draft, q), part in zip(ready, parts, strict=True):
            try:
                res = st.session.verify_finish(draft, q, offset, t0)
            except Exception as exc:
                st.loop.call_soon_threadsafe(_deliver, st.fut, None, exc)
            else:
                st.loop.call_soon_threadsafe(_deliver, st.fut, res, None)
            offset += len(part[1])
