"""Node liveness with real processes: a ``tightwad-controller`` and a ``tightwad-agent``
registered over the real Register heartbeat stream (heartbeat 0.2 s, timeout 1.5 s).

- SIGSTOP the agent: heartbeats stop while its TCP connection stays open, so only the
  heartbeat timeout can tell; the node turns UNREACHABLE within the timeout (plus one sweep)
  and a ``node_unreachable`` event says why ("not heard from for over 1.5 s");
- SIGCONT: heartbeats resume on the same stream and the node is READY again (``node_ready``);
- SIGKILL: the stream closes (``node_disconnected``) and the node turns UNREACHABLE; it stays
  listed (the controller keeps its record, so a restarted agent re-attaches under its name).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tightwad.rpc import client_channel
from tightwad.v1 import controller_pb2, controller_pb2_grpc

pytestmark = [pytest.mark.cluster]

TOKEN = "liveness-token"
TIMEOUT_S = 1.5
READY = controller_pb2.NODE_STATE_READY
UNREACHABLE = controller_pb2.NODE_STATE_UNREACHABLE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", *args], stdout=out, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


async def _until(what: str, check: Callable[[], object], timeout_s: float) -> float:
    """Seconds until ``check`` holds (raises after ``timeout_s``)."""
    started = time.monotonic()
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = _free_port()
        self.config = tmp / "cluster.yaml"
        self.config.write_text(
            f"cluster:\n  token: {TOKEN}\n"
            f"controller:\n  heartbeat_interval_s: 0.2\n  heartbeat_timeout_s: {TIMEOUT_S}\n"
            "  reconcile_interval_s: 0.1\n"
        )
        self.channel = client_channel(f"127.0.0.1:{self.port}", token=TOKEN)
        self.ctl = controller_pb2_grpc.ControllerServiceStub(self.channel)
        self.procs: list[subprocess.Popen[bytes]] = []

    def start_controller(self) -> None:
        args = ["tightwad.controller.main", "-c", str(self.config)]
        args += ["--listen", f"127.0.0.1:{self.port}", "--state", str(self.tmp / "state.db")]
        self.procs.append(_spawn(args, self.tmp / "controller.log"))

    def start_agent(self) -> subprocess.Popen[bytes]:
        args = ["tightwad.agent.main", "-c", str(self.config), "--name", "n1"]
        args += ["--listen", f"127.0.0.1:{_free_port()}"]
        args += ["--controller", f"127.0.0.1:{self.port}"]
        proc = _spawn(args, self.tmp / "agent.log")
        self.procs.append(proc)
        return proc

    async def state(self) -> int | None:
        try:
            nodes = (await self.ctl.ListNodes(controller_pb2.ListNodesRequest(), timeout=2)).nodes
        except Exception:
            return None
        return next((n.state for n in nodes if n.node_id == "n1"), None)

    async def events(self, kind: str) -> list[controller_pb2.Event]:
        stream = self.ctl.WatchEvents(controller_pb2.WatchEventsRequest(follow=False), timeout=5)
        return [r.event async for r in stream if r.event.kind == kind and r.event.node_id == "n1"]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path)
    c.start_controller()
    try:
        yield c
    finally:
        for proc in c.procs:
            _stop(proc)
        await c.channel.close()


async def test_stopped_agent_turns_unreachable_and_recovers_killed_one_stays_unreachable(
    cluster: Cluster,
) -> None:
    c = cluster
    agent = c.start_agent()
    await _until("agent READY", lambda: _is(c, READY), 30.0)

    # SIGSTOP: the connection stays open, only the heartbeat timeout can tell
    os.kill(agent.pid, signal.SIGSTOP)
    took = await _until("UNREACHABLE after SIGSTOP", lambda: _is(c, UNREACHABLE), 10.0)
    assert took <= TIMEOUT_S + 1.0, took  # the timeout, plus a sweep and a poll
    # ListNodes computes the state from the clock; the event comes with the next sweep.
    await _until("node_unreachable event", lambda: _unreachable_events(c, 1), 5.0)
    [event] = await c.events("node_unreachable")
    assert f"not heard from for over {TIMEOUT_S:g} s" in event.message, event
    assert event.level == controller_pb2.EVENT_LEVEL_WARNING
    assert not await c.events("node_disconnected")  # the stream never closed

    # SIGCONT: heartbeats resume on the same stream
    os.kill(agent.pid, signal.SIGCONT)
    await _until("READY after SIGCONT", lambda: _is(c, READY), 10.0)
    await _until("node_ready event", lambda: _ready_events(c, 1), 5.0)

    # SIGKILL: the stream closes; the node is UNREACHABLE and stays listed
    os.kill(agent.pid, signal.SIGKILL)
    agent.wait(10)
    await _until("node_disconnected event", lambda: c.events("node_disconnected"), 10.0)
    took = await _until("UNREACHABLE after SIGKILL", lambda: _is(c, UNREACHABLE), 10.0)
    assert took <= TIMEOUT_S + 1.0, took
    await _until("second node_unreachable event", lambda: _unreachable_events(c, 2), 5.0)
    nodes = (await c.ctl.ListNodes(controller_pb2.ListNodesRequest(), timeout=2)).nodes
    assert [n.node_id for n in nodes] == ["n1"]  # kept, to re-attach under its name


async def _is(c: Cluster, state: int) -> bool:
    return await c.state() == state


async def _ready_events(c: Cluster, n: int) -> bool:
    return len(await c.events("node_ready")) >= n


async def _unreachable_events(c: Cluster, n: int) -> bool:
    return len(await c.events("node_unreachable")) >= n
