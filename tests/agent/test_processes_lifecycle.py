"""The supervision state machine as a pure function, and the port allocator; no sleeping."""

from __future__ import annotations

import socket

from hypothesis import given, settings
from hypothesis import strategies as st

from tightwad.agent.processes import PortAllocator, ProcessState, RestartPolicy, step
from tightwad.agent.processes import lifecycle as lc
from tightwad.clock import FakeClock

POLICY = RestartPolicy(
    initial_backoff_s=1.0, max_backoff_s=8.0, crash_loop_restarts=5, crash_loop_window_s=60.0
)


def run(events: list[tuple[float, lc.Event]]) -> tuple[lc.Supervision, list[lc.Action]]:
    clock = FakeClock(0.0)
    s, actions = lc.Supervision(), []
    for at, event in events:
        clock.now = at
        s, acts = step(s, event, clock.monotonic(), POLICY)
        actions += acts
    return s, actions


def test_start_spawns_and_health_makes_it_running() -> None:
    s, actions = run([(0, lc.Start()), (1, lc.Healthy("rpc protocol 7.0.0"))])
    assert s.state is ProcessState.RUNNING and s.healthy
    assert actions == [lc.Spawn()]


def test_consecutive_quick_failures_double_the_delay_up_to_the_cap() -> None:
    policy = RestartPolicy(initial_backoff_s=1.0, max_backoff_s=4.0, crash_loop_restarts=99)
    s, _ = step(lc.Supervision(), lc.Start(), 0.0, policy)
    delays = []
    for i in range(5):
        s, (sched,) = step(s, lc.Exited(1), float(i), policy)
        assert isinstance(sched, lc.ScheduleRestart)
        delays.append(sched.delay_s)
        s, _ = step(s, lc.BackoffElapsed(sched.generation), float(i), policy)
    assert delays == [1.0, 2.0, 4.0, 4.0, 4.0]
    assert s.restarts == 5


def test_a_stable_run_resets_the_backoff() -> None:
    policy = RestartPolicy(initial_backoff_s=1.0, stable_after_s=30.0, crash_loop_restarts=99)
    s, _ = step(lc.Supervision(), lc.Start(), 0.0, policy)
    s, (a,) = step(s, lc.Exited(1), 1.0, policy)
    s, _ = step(s, lc.BackoffElapsed(a.generation), 2.0, policy)  # type: ignore[union-attr]
    s, (b,) = step(s, lc.Exited(1), 3.0, policy)
    assert b.delay_s == 2.0  # type: ignore[union-attr]
    s, _ = step(s, lc.BackoffElapsed(b.generation), 5.0, policy)  # type: ignore[union-attr]
    s, (c,) = step(s, lc.Exited(1), 100.0, policy)
    assert c.delay_s == 1.0  # type: ignore[union-attr]


def test_five_exits_within_the_window_is_a_crash_loop_not_retried() -> None:
    s, _ = step(lc.Supervision(), lc.Start(), 0.0, POLICY)
    for i in range(5):
        s, acts = step(s, lc.Exited(1), float(i), POLICY)
        if s.state is ProcessState.BACKOFF:
            (sched,) = acts
            s, _ = step(s, lc.BackoffElapsed(sched.generation), float(i), POLICY)  # type: ignore[union-attr]
    assert s.state is ProcessState.CRASH_LOOP
    assert "crash loop" in s.message
    s2, acts = step(s, lc.BackoffElapsed(s.generation), 10.0, POLICY)
    assert (s2, acts) == (s, ())
    s3, acts = step(s, lc.Start(), 11.0, POLICY)
    assert s3.state is ProcessState.STARTING and acts == (lc.Spawn(),)
    assert s3.recent_exits == ()


def test_stop_terminates_and_an_exit_while_stopping_is_not_restarted() -> None:
    s, _ = run([(0, lc.Start()), (1, lc.Healthy())])
    s, acts = step(s, lc.Stop(3.0), 2.0, POLICY)
    assert s.state is ProcessState.STOPPING and acts == (lc.Terminate(3.0),)
    s, acts = step(s, lc.Exited(-15), 3.0, POLICY)
    assert s.state is ProcessState.STOPPED and acts == () and s.restarts == 0


def test_stop_during_backoff_cancels_the_pending_restart() -> None:
    s, _ = step(lc.Supervision(), lc.Start(), 0.0, POLICY)
    s, (sched,) = step(s, lc.Exited(1), 1.0, POLICY)
    s, acts = step(s, lc.Stop(1.0), 1.1, POLICY)
    assert s.state is ProcessState.STOPPED and acts == ()
    s, acts = step(s, lc.BackoffElapsed(sched.generation), 2.0, POLICY)  # type: ignore[union-attr]
    assert s.state is ProcessState.STOPPED and acts == ()


def test_restart_by_hand_terminates_then_spawns() -> None:
    s, _ = run([(0, lc.Start()), (1, lc.Healthy())])
    s, acts = step(s, lc.Restart(2.0), 2.0, POLICY)
    assert s.state is ProcessState.STOPPING and acts == (lc.Terminate(2.0),)
    s, acts = step(s, lc.Exited(-15), 3.0, POLICY)
    assert s.state is ProcessState.STARTING and acts == (lc.Spawn(),)


def test_spawn_failure_is_failed_and_start_timeout_terminates() -> None:
    s, _ = step(lc.Supervision(), lc.Start(), 0.0, POLICY)
    failed, acts = step(s, lc.SpawnFailed("no ggml-rpc-server found"), 0.1, POLICY)
    assert failed.state is ProcessState.FAILED and acts == ()
    s, acts = step(s, lc.StartTimedOut(30.0), 30.0, POLICY)
    assert acts and isinstance(acts[0], lc.Terminate)


def test_unhealthy_then_healthy_again_while_running() -> None:
    s, _ = run([(0, lc.Start()), (1, lc.Healthy()), (2, lc.Unhealthy("refused"))])
    assert s.state is ProcessState.RUNNING and not s.healthy
    s, _ = step(s, lc.Healthy(), 3.0, POLICY)
    assert s.healthy


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.just("alloc"), st.integers(0, 30)), max_size=60))
def test_port_allocator_never_hands_out_a_port_in_use(ops: list[object]) -> None:
    alloc = PortAllocator(low=51200, high=51219)
    held: list[int] = []
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", 51205))
        foreign.listen()
        for op in ops:
            if op == "alloc":
                try:
                    port = alloc.allocate("127.0.0.1")
                except Exception:
                    assert len(held) >= 19
                    continue
                assert port not in held and port != 51205
                held.append(port)
            elif held:
                alloc.release(held.pop(int(op) % len(held)))  # type: ignore[call-overload]
        assert set(held) == alloc.reserved
