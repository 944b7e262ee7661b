"""The node registry: what a heartbeat snapshot may and may not undo."""

from __future__ import annotations

from pathlib import Path

from tightwad.clock import SystemClock
from tightwad.controller.domain import ProcessKind, ProcessView
from tightwad.controller.events import EventLog
from tightwad.controller.ids import NodeId
from tightwad.controller.registry import Join, Registry
from tightwad.controller.store import Store
from tightwad.engine.device_facts import HostFacts

from .factories import GiB

A = NodeId("a")


def registry(tmp_path: Path) -> Registry:
    store = Store.open(tmp_path / "c.db")
    reg = Registry(store, EventLog(store, SystemClock()), token=None, timeout_s=10.0, now=0.0)
    host = HostFacts("a", "linux", "x86_64", 4, 16 * GiB, 16 * GiB)
    reg.join(Join(A, "", "127.0.0.1:1", host, (), ()), 0.0)
    return reg


def rpc(state: str = "running", since: float = 100.0) -> ProcessView:
    healthy = state == "running"
    return ProcessView("rpc0", ProcessKind.RPC_SERVER, state, healthy=healthy, since=since)


def names(reg: Registry) -> dict[str, str]:
    return {p.name: p.state for p in reg.get(A).processes}


def test_a_snapshot_older_than_a_start_reply_does_not_undo_the_start(tmp_path: Path) -> None:
    reg = registry(tmp_path)
    reg.observe(A, process=rpc(since=100.0))
    reg.heartbeat(A, 1.0, processes=[], snapshot_time=99.5)  # gathered before the start
    assert names(reg) == {"rpc0": "running"}
    stale = rpc("stopped", since=50.0)  # an earlier run, reported stopped before the restart
    reg.heartbeat(A, 1.5, processes=[stale], snapshot_time=99.9)
    assert names(reg) == {"rpc0": "running"}


def test_a_snapshot_newer_than_the_start_reply_is_the_truth(tmp_path: Path) -> None:
    reg = registry(tmp_path)
    reg.observe(A, process=rpc(since=100.0))
    reg.heartbeat(A, 1.0, processes=[rpc("backoff", since=101.0)], snapshot_time=101.0)
    assert names(reg) == {"rpc0": "backoff"}
    reg.heartbeat(A, 2.0, processes=[], snapshot_time=102.0)  # it is gone: believed
    assert names(reg) == {}
    reg.heartbeat(A, 3.0, processes=[], snapshot_time=99.0)  # the start no longer outranks
    assert names(reg) == {}


def test_an_unstamped_snapshot_is_taken_as_is(tmp_path: Path) -> None:
    reg = registry(tmp_path)
    reg.observe(A, process=rpc(since=100.0))
    reg.heartbeat(A, 1.0, processes=[])  # an agent that sends no time: the old rule
    assert names(reg) == {}
