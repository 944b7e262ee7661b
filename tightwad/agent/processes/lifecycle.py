"""The supervision state machine, as a pure function: ``step(state, event, now, policy)``
returns the next state and the actions for the shell (:mod:`.supervisor`) to execute.

States (``ProcessState``)::

    STOPPED --Start--> STARTING --Healthy--> RUNNING
    STARTING/RUNNING --Exited(unwanted)--> BACKOFF --BackoffElapsed--> STARTING
                                       \\-> CRASH_LOOP  (``crash_loop_restarts`` exits within
                                                        ``crash_loop_window_s``: not retried
                                                        until a Start/Restart by hand)
    STARTING --StartTimedOut--> (Terminate) ... Exited --> BACKOFF / CRASH_LOOP
    any --Stop--> STOPPING --Exited--> STOPPED          (or STOPPED at once with no child)
    any --Restart--> STOPPING --Exited--> STARTING      (or STARTING at once with no child)
    STARTING --SpawnFailed--> FAILED                    (binary missing, bad spec: no retry)

Backoff: ``initial_backoff_s * multiplier**(n-1)`` for the n-th consecutive failure, capped
at ``max_backoff_s``; a run that stayed up ``stable_after_s`` resets the count. ``now`` is a
monotonic time from the injectable clock, so tests never sleep.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tightwad.agent.processes.domain import ProcessState

__all__ = [
    "Action",
    "BackoffElapsed",
    "Event",
    "Exited",
    "Healthy",
    "Restart",
    "RestartPolicy",
    "ScheduleRestart",
    "Spawn",
    "SpawnFailed",
    "Start",
    "StartTimedOut",
    "Stop",
    "Supervision",
    "Terminate",
    "Unhealthy",
    "step",
]


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    multiplier: float = 2.0
    crash_loop_restarts: int = 5
    crash_loop_window_s: float = 60.0
    stable_after_s: float = 30.0

    def backoff(self, failures: int) -> float:
        delay = self.initial_backoff_s * self.multiplier ** max(failures - 1, 0)
        return min(delay, self.max_backoff_s)


# -- events -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    """Start by hand (also clears a crash loop)."""


@dataclass(frozen=True, slots=True)
class Stop:
    grace_s: float


@dataclass(frozen=True, slots=True)
class Restart:
    grace_s: float


@dataclass(frozen=True, slots=True)
class SpawnFailed:
    reason: str


@dataclass(frozen=True, slots=True)
class Exited:
    code: int


@dataclass(frozen=True, slots=True)
class Healthy:
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Unhealthy:
    reason: str


@dataclass(frozen=True, slots=True)
class StartTimedOut:
    after_s: float


@dataclass(frozen=True, slots=True)
class BackoffElapsed:
    generation: int


Event = (
    Start
    | Stop
    | Restart
    | SpawnFailed
    | Exited
    | Healthy
    | Unhealthy
    | StartTimedOut
    | BackoffElapsed
)

# -- actions ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Spawn:
    """Start the child now."""


@dataclass(frozen=True, slots=True)
class Terminate:
    """SIGTERM the child's process group, SIGKILL after ``grace_s``."""

    grace_s: float


@dataclass(frozen=True, slots=True)
class ScheduleRestart:
    """Deliver ``BackoffElapsed(generation)`` after ``delay_s``."""

    delay_s: float
    generation: int


Action = Spawn | Terminate | ScheduleRestart

# -- state ------------------------------------------------------------------------------

_DEFAULT_GRACE_S = 5.0


@dataclass(frozen=True, slots=True)
class Supervision:
    """Everything the machine remembers about one process."""

    state: ProcessState = ProcessState.STOPPED
    restarts: int = 0
    failures: int = 0
    recent_exits: tuple[float, ...] = ()
    started_at: float | None = None
    last_exit_code: int | None = None
    healthy: bool = False
    message: str = ""
    restart_after_stop: bool = False
    generation: int = 0


def _spawn(s: Supervision, now: float, message: str) -> tuple[Supervision, tuple[Action, ...]]:
    nxt = replace(
        s,
        state=ProcessState.STARTING,
        started_at=now,
        healthy=False,
        message=message,
        restart_after_stop=False,
        generation=s.generation + 1,
    )
    return nxt, (Spawn(),)


def _on_start(s: Supervision, now: float) -> tuple[Supervision, tuple[Action, ...]]:
    if s.state.alive and s.state is not ProcessState.STOPPING:
        return s, ()
    if s.state is ProcessState.STOPPING:
        return replace(s, restart_after_stop=True), ()
    return _spawn(replace(s, failures=0, recent_exits=()), now, "started")


def _on_stop(s: Supervision, grace: float, restart: bool) -> tuple[Supervision, tuple[Action, ...]]:
    if s.state in (ProcessState.STARTING, ProcessState.RUNNING):
        why = "restarting" if restart else "stopping"
        nxt = replace(
            s, state=ProcessState.STOPPING, message=why, restart_after_stop=restart, healthy=False
        )
        return nxt, (Terminate(grace),)
    if s.state is ProcessState.STOPPING:
        return replace(s, restart_after_stop=restart), ()
    stopped = replace(
        s,
        state=ProcessState.STOPPED,
        message="stopped",
        healthy=False,
        generation=s.generation + 1,
    )
    return stopped, ()


def _on_exit(
    s: Supervision, code: int, now: float, policy: RestartPolicy
) -> tuple[Supervision, tuple[Action, ...]]:
    if s.state is ProcessState.STOPPING:
        done = replace(s, last_exit_code=code, healthy=False)
        if s.restart_after_stop:
            return _spawn(replace(done, failures=0, recent_exits=()), now, "restarted by hand")
        return replace(done, state=ProcessState.STOPPED, message="stopped"), ()
    if not s.state.alive:
        return s, ()
    ran = now - s.started_at if s.started_at is not None else 0.0
    failures = 1 if ran >= policy.stable_after_s else s.failures + 1
    window_start = now - policy.crash_loop_window_s
    recent = (*(t for t in s.recent_exits if t >= window_start), now)
    base = replace(s, last_exit_code=code, healthy=False, failures=failures, recent_exits=recent)
    if len(recent) >= policy.crash_loop_restarts:
        msg = (
            f"crash loop: exited {len(recent)} times within {policy.crash_loop_window_s:g}s "
            f"(last exit code {code}); not restarted until started by hand"
        )
        return replace(base, state=ProcessState.CRASH_LOOP, message=msg), ()
    delay = policy.backoff(failures)
    gen = s.generation + 1
    msg = f"exited with code {code}; restarting in {delay:g}s"
    nxt = replace(base, state=ProcessState.BACKOFF, message=msg, generation=gen)
    return nxt, (ScheduleRestart(delay, gen),)


def step(
    s: Supervision, event: Event, now: float, policy: RestartPolicy
) -> tuple[Supervision, tuple[Action, ...]]:
    """The next state and the actions to take. Pure: no I/O, no clock."""
    match event:
        case Start():
            return _on_start(s, now)
        case Stop(grace_s=grace):
            return _on_stop(s, grace, restart=False)
        case Restart(grace_s=grace):
            if not s.state.alive:
                return _spawn(replace(s, failures=0, recent_exits=()), now, "restarted by hand")
            return _on_stop(s, grace, restart=True)
        case SpawnFailed(reason=reason):
            if s.state is not ProcessState.STARTING:
                return s, ()
            return replace(s, state=ProcessState.FAILED, message=reason, healthy=False), ()
        case Exited(code=code):
            nxt, actions = _on_exit(s, code, now, policy)
            return replace(nxt, restarts=nxt.restarts + _counts(s, nxt)), actions
        case Healthy(detail=detail):
            if s.state not in (ProcessState.STARTING, ProcessState.RUNNING):
                return s, ()
            msg = f"healthy{': ' + detail if detail else ''}"
            return replace(s, state=ProcessState.RUNNING, healthy=True, message=msg), ()
        case Unhealthy(reason=reason):
            if s.state is not ProcessState.RUNNING:
                return s, ()
            return replace(s, healthy=False, message=f"unhealthy: {reason}"), ()
        case StartTimedOut(after_s=after):
            if s.state is not ProcessState.STARTING:
                return s, ()
            msg = f"not healthy within {after:g}s; terminating"
            return replace(s, message=msg), (Terminate(_DEFAULT_GRACE_S),)
        case BackoffElapsed(generation=gen):
            if s.state is not ProcessState.BACKOFF or gen != s.generation:
                return s, ()
            return _spawn(s, now, f"restart {s.restarts}")
    raise AssertionError(f"unknown event {event!r}")  # pragma: no cover


def _counts(before: Supervision, after: Supervision) -> int:
    """An unwanted exit that leads to a restart (now or scheduled) counts as one restart."""
    return int(before.state is not ProcessState.STOPPING and after.state is ProcessState.BACKOFF)
