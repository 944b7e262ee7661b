"""One forward pass for the pending work of every session (continuous batching).

Sessions hand their work to the batcher instead of the compute thread: a Verify (and so every
plain step, ``verify([])``, and Generate), a draft engine's sync and draft steps, and the
prefill of a new session's prompt. The batcher queues one drain on the compute thread; a drain
takes the work pending by then and lays it back to back in ``llama_batch``es of at most
``batch_capacity`` tokens (each session's tokens at its own positions of its own sequence),
runs one ``llama_decode`` per batch, and hands each job its rows: acceptance, sampling and
grammar happen exactly as for a lone command.

Scheduling (decode first, chunked prefill):
- Every step pending when a drain starts runs in that drain (one per session per decode; more
  decodes when their widths exceed the capacity).
- A prefill advances by one aligned chunk (``prefill_chunk`` positions) per decode, in the room
  the steps leave; a long prompt spans many drains, so a step submitted meanwhile waits at most
  one decode of ``batch_capacity`` tokens, never the whole prompt.
- A drain with only prefill work, right after a decode that had steps, first waits a moment
  (``step_wait_s``) for those sessions' next steps, which are on their way back from the
  event loop, so that they ride along with the next chunk instead of waiting behind it.
- A prefill that copies a cached prefix from a sequence still being prefilled waits until that
  prefix is in the cache.

Guarantees:
- A session has at most one job in a decode (its next step needs this one's token).
- A session's jobs run in the order it queued them, one per decode: its commands that decode
  nothing (rewind, the undo of an abandoned step, the release) are jobs too
  (:meth:`FnJob.call`), so nothing of a session overtakes its queued step.
- A decode that finds the KV cache full drops cached prefixes of idle sequences, oldest first
  (``make_room``), and retries: cached prefixes never crowd out live sessions.
- A job of a closed session is refused; a failed multi-session decode is retried part by part,
  so a decode error fails only the jobs whose own part fails; a job's own error fails only it.
- Alone, a session decodes exactly as unbatched (the same ``decode`` calls). Batch mates change
  its numerics in the last bits (different matrix shapes): greedy output equals the session
  decoding alone or differs first at a near-tie of its top two logits (tests/support.py).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tightwad.engine import session_rules as rules
from tightwad.errors import OverloadedError, UnavailableError

if TYPE_CHECKING:
    from tightwad.engine.binding import LlamaModel

__all__ = ["WAIT", "BatchStats", "Job", "Part", "StepBatcher"]

#: What one job decodes in one batch: (seq_id, tokens, start position, output rows).
Part = tuple[int, Sequence[int], int, Sequence[int]]


class _Wait:
    def __repr__(self) -> str:
        return "WAIT"


#: ``Job.prepare`` returns this when the job cannot run yet (it stays queued).
WAIT: Any = _Wait()
#: ``Job.finish`` returns this when the job has more to decode (a prefill not done).
MORE: Any = _Wait()


class Job:
    """One session's work: ``prepare`` (on the compute thread) says what to decode this time
    (a :data:`Part`, None for nothing, or :data:`WAIT`), ``finish(offset, t0)`` reads the rows
    from batch index ``offset`` and returns the result (or :data:`MORE`)."""

    fill = False  # a prefill: runs in the room steps leave and may span drains
    closed_ok = False  # runs even once its session is closed (the release's bookkeeping)
    __slots__ = ("fut", "loop", "owner")

    def __init__(self, owner: Any) -> None:
        self.owner = owner  # the session (``closed``: refuse the job)
        self.loop = asyncio.get_running_loop()
        self.fut: asyncio.Future[Any] = self.loop.create_future()

    def width(self) -> int:
        raise NotImplementedError

    def prepare(self) -> Part | None:
        raise NotImplementedError

    def finish(self, offset: int, t0: float) -> Any:
        raise NotImplementedError


class FnJob(Job):
    """A job from functions: ``width`` (the tokens it will decode, a packing hint),
    ``prepare`` and ``finish``."""

    __slots__ = ("_finish", "_prepare", "_width", "closed_ok", "fill")

    def __init__(
        self,
        owner: Any,
        width: Callable[[], int],
        prepare: Callable[[], Part | None],
        finish: Callable[[int, float], Any],
        *,
        fill: bool = False,
        closed_ok: bool = False,
    ) -> None:
        super().__init__(owner)
        self._width = width
        self._prepare = prepare
        self._finish = finish
        self.fill = fill
        self.closed_ok = closed_ok

    @classmethod
    def call(cls, owner: Any, fn: Callable[[], Any], *, closed_ok: bool = False) -> FnJob:
        """A command of ``owner`` that decodes nothing (rewind, undo, release...): run in
        order with its other jobs."""
        out: list[Any] = []

        def prepare() -> None:
            out.append(fn())

        return cls(owner, lambda: 0, prepare, lambda _o, _t: out[0], closed_ok=closed_ok)

    def width(self) -> int:
        return self._width()

    def prepare(self) -> Part | None:
        return self._prepare()

    def finish(self, offset: int, t0: float) -> Any:
        return self._finish(offset, t0)


@dataclass(slots=True)
class BatchStats:
    """What the batcher did: decodes run, jobs served by them, tokens decoded (prefill tokens
    among them), the most jobs and tokens one decode held. Occupancy = jobs / decodes."""

    decodes: int = 0
    steps: int = 0
    tokens: int = 0
    prefill_tokens: int = 0
    max_jobs: int = 0
    max_tokens: int = 0
    widths: list[int] = field(default_factory=list, repr=False)  # jobs per decode, recent

    def snapshot(self) -> BatchStats:
        return BatchStats(
            self.decodes,
            self.steps,
            self.tokens,
            self.prefill_tokens,
            self.max_jobs,
            self.max_tokens,
            list(self.widths),
        )


def _deliver(fut: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if fut.done():  # the caller gave up on it (cancelled)
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


def _fail(job: Job, exc: BaseException) -> None:
    job.loop.call_soon_threadsafe(_deliver, job.fut, None, exc)


def _done(job: Job, result: Any) -> None:
    job.loop.call_soon_threadsafe(_deliver, job.fut, result, None)


class StepBatcher:
    def __init__(
        self,
        model: LlamaModel,
        executor: Executor,
        *,
        name: str = "",
        step_wait_s: float = 0.005,
        make_room: Callable[[], bool] | None = None,
    ) -> None:
        self._m = model
        self._make_room = make_room
        self._exec = executor
        self._name = name
        self._step_wait_s = step_wait_s
        self._lock = threading.Condition()
        self._stepped = False  # the last decode had steps
        self._pending: list[Job] = []
        self._queued = False
        self._closed = False
        self._stats = BatchStats()

    @property
    def stats(self) -> BatchStats:
        return self._stats.snapshot()

    def submit(self, job: Job) -> asyncio.Future[Any]:
        """Queue ``job``; its future resolves on the caller's event loop."""
        with self._lock:
            if self._closed:
                raise UnavailableError(f"engine {self._name} is closed")
            self._pending.append(job)
            self._queue_drain()
            self._lock.notify()
        return job.fut

    def close(self) -> None:
        """Refuse every queued and later job (on the compute thread, before the model goes)."""
        with self._lock:
            self._closed = True
            jobs, self._pending = self._pending, []
        for job in jobs:
            _fail(job, UnavailableError(f"engine {self._name} is closed"))

    def _queue_drain(self) -> None:  # under the lock
        if not self._queued:
            self._exec.submit(self._drain)
            self._queued = True

    # -- the compute thread ---------------------------------------------------------------

    def _drain(self) -> None:
        with self._lock:
            if self._stepped and not any(not j.fill for j in self._pending):
                self._lock.wait_for(
                    lambda: any(not j.fill for j in self._pending), timeout=self._step_wait_s
                )
            jobs, self._pending = self._pending, []
            self._queued = False
            closed = self._closed
        if closed:  # a drain queued after close()
            for job in jobs:
                _fail(job, UnavailableError(f"engine {self._name} is closed"))
            return
        steps = [j for j in jobs if not j.fill]
        fills = [j for j in jobs if j.fill]
        cap = self._m.batch_capacity
        progressed = False
        self._stepped = bool(steps)
        while True:
            batch: list[Job] = []
            later: list[Job] = []
            used = 0
            seen: set[int] = set()
            for job in steps:
                w = job.width()
                if id(job.owner) in seen or (batch and used + w > cap):
                    later.append(job)
                    continue
                seen.add(id(job.owner))
                batch.append(job)
                used += w
            for job in fills:
                w = job.width()
                if id(job.owner) in seen or (batch and used + w > cap):
                    continue
                seen.add(id(job.owner))
                batch.append(job)
                used += w
            left, ran = self._run(batch)
            progressed |= ran
            fills = [j for j in fills if j not in batch or j in left]
            steps = later
            if not steps:
                break
        if fills:
            with self._lock:
                self._pending[:0] = fills  # prefills keep their turn before newer work
                if not self._closed:
                    self._queue_drain()
            if not progressed:
                time.sleep(0.001)  # only waiting prefills: let their source move on

    def _run(self, batch: list[Job]) -> tuple[list[Job], bool]:
        """Decode ``batch``; returns the jobs that stay queued (WAIT or MORE) and whether
        anything was decoded or answered."""
        t0 = time.perf_counter()
        stay: list[Job] = []
        ready: list[tuple[Job, Part]] = []
        answered = False
        for job in batch:
            try:
                if not job.closed_ok:  # released while its job waited
                    rules.check_live(bool(job.owner.closed))
                part = job.prepare()
            except Exception as exc:
                _fail(job, exc)
                answered = True
                continue
            if part is WAIT:
                stay.append(job)
            elif part is None:
                answered = True
                self._finish(job, -1, t0, stay)
            else:
                ready.append((job, part))
        if not ready:
            return stay, answered
        if len(ready) == 1:
            job, part = ready[0]
            try:
                self.decode(part)  # may exceed one batch: decode chunks it
            except Exception as exc:
                _fail(job, exc)
            else:
                self._count([part], [job])
                self._finish(job, 0, t0, stay)
            return stay, True
        parts = [p for _j, p in ready]
        try:
            self._with_room(lambda: self._m.decode_many(parts))
        except Exception:
            # Find whose part fails: trim what the failed decode may have left, decode alone.
            for job, part in ready:
                try:
                    self._m.seq_rm(part[0], part[2], -1)
                    self.decode(part)
                except Exception as exc:
                    _fail(job, exc)
                else:
                    self._count([part], [job])
                    self._finish(job, 0, t0, stay)
            return stay, True
        self._count(parts, [j for j, _p in ready])
        offset = 0
        for job, part in ready:
            self._finish(job, offset, t0, stay)
            offset += len(part[1])
        return stay, True

    def decode(self, part: Part) -> None:
        """Decode one part alone, making room in the KV cache when it is full."""
        self._with_room(lambda: self._m.decode(*part))

    def _with_room(self, fn: Callable[[], None]) -> None:
        while True:
            try:
                fn()
                return
            except OverloadedError:  # the KV cache is full: drop a cached prefix, retry
                if self._make_room is None or not self._make_room():
                    raise

    def _finish(self, job: Job, offset: int, t0: float, stay: list[Job]) -> None:
        try:
            res = job.finish(offset, t0)
        except Exception as exc:
            _fail(job, exc)
            return
        if res is MORE:
            stay.append(job)
        else:
            _done(job, res)

    def _count(self, parts: Sequence[Part], jobs: Sequence[Job]) -> None:
        s = self._stats
        n = sum(len(p[1]) for p in parts)
        s.decodes += 1
        s.steps += len(parts)
        s.tokens += n
        s.prefill_tokens += sum(len(p[1]) for p, j in zip(parts, jobs, strict=True) if j.fill)
        s.max_jobs = max(s.max_jobs, len(parts))
        s.max_tokens = max(s.max_tokens, n)
        s.widths.append(len(parts))
        del s.widths[:-256]
