"""The Supervisor with real ``ggml-rpc-server`` and ``llama-server`` binaries on loopback."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tightwad.agent.binaries import BinaryKind, BinaryLocator
from tightwad.agent.processes import (
    ProcessKind,
    ProcessSpec,
    ProcessState,
    RestartPolicy,
    Supervisor,
    SupervisorSettings,
    rpc_hello,
)
from tightwad.errors import InvalidRequestError, NotFoundError

pytestmark = pytest.mark.cluster

FAST = SupervisorSettings(
    restart=RestartPolicy(initial_backoff_s=0.1, max_backoff_s=0.2, crash_loop_restarts=3),
    stop_grace_s=2.0,
    port_low=51300,
    port_high=51399,
)


@pytest.fixture(scope="module")
def binaries() -> BinaryLocator:
    locator = BinaryLocator()
    if locator.try_find(BinaryKind.RPC_SERVER) is None:
        pytest.skip("no ggml-rpc-server built: run scripts/build_llama.sh bin")
    return locator


@pytest.fixture
async def sup(binaries: BinaryLocator) -> AsyncIterator[Supervisor]:
    supervisor = Supervisor(binaries, settings=FAST)
    try:
        yield supervisor
    finally:
        await supervisor.close(1.0)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


async def _until(sup: Supervisor, pred: Callable[[], bool], limit_s: float = 20.0) -> None:
    """Wait for ``pred`` on the supervisor's change notifications, with a deadline."""
    async with asyncio.timeout(limit_s):
        seen = sup.changes.version
        while not pred():
            seen = await sup.changes.wait(seen, 1.0)


async def test_rpc_server_is_probed_killed_restarted_and_stopped(sup: Supervisor) -> None:
    spec = ProcessSpec(name="rpc-cpu", kind=ProcessKind.RPC_SERVER)
    st = await sup.start(spec, wait_healthy=True)
    assert st.state is ProcessState.RUNNING and st.healthy and st.pid > 0
    assert st.protocol_version.count(".") == 2 and int(st.protocol_version.split(".")[0]) >= 3
    assert await rpc_hello(st.host, st.port) == st.protocol_version
    assert st.binary.endswith(("ggml-rpc-server", "rpc-server"))
    first_pid = st.pid
    os.kill(first_pid, signal.SIGKILL)
    await _until(sup, lambda: sup.status("rpc-cpu").restarts == 1 and sup.status("rpc-cpu").healthy)
    again = sup.status("rpc-cpu")
    assert again.pid not in (0, first_pid) and again.last_exit_code == -signal.SIGKILL
    assert again.port == st.port
    assert any("RPC server" in line.line for line in sup.logs("rpc-cpu").tail())
    stopped = await sup.stop("rpc-cpu")
    assert stopped.state is ProcessState.STOPPED and stopped.pid == 0
    assert _gone(again.pid) and _group_members(again.pid) == []


async def test_llama_server_serves_health_and_close_leaves_no_orphans(
    sup: Supervisor, smollm_path: Path
) -> None:
    spec = ProcessSpec(
        name="llama",
        kind=ProcessKind.LLAMA_SERVER,
        args=("-m", str(smollm_path), "-c", "512", "-t", "1", "-np", "1"),
    )
    rpc = await sup.start(ProcessSpec(name="rpc", kind=ProcessKind.RPC_SERVER), wait_healthy=True)
    st = await sup.start(spec, wait_healthy=True, timeout_s=120)
    assert st.state is ProcessState.RUNNING and st.healthy, st.message
    assert "200" in st.message
    assert st.port != rpc.port
    pids = [st.pid, rpc.pid]
    await sup.close(2.0)
    for pid in pids:
        assert _gone(pid), f"pid {pid} survived the supervisor"
        assert _group_members(pid) == []


async def test_a_binary_that_exits_at_once_is_reported_as_crash_loop(sup: Supervisor) -> None:
    spec = ProcessSpec(
        name="broken",
        kind=ProcessKind.LLAMA_SERVER,
        args=("-m", "/nonexistent/model.gguf"),
    )
    await sup.start(spec)
    await _until(sup, lambda: sup.status("broken").state is ProcessState.CRASH_LOOP, 60)
    st = sup.status("broken")
    assert st.restarts == 2 and st.last_exit_code not in (None, 0)
    assert "crash loop" in st.message
    await asyncio.sleep(0.5)
    assert sup.status("broken").state is ProcessState.CRASH_LOOP  # not retried


async def test_binding_policy_refuses_wildcard_without_opt_in(sup: Supervisor) -> None:
    with pytest.raises(InvalidRequestError, match="no authentication"):
        await sup.start(ProcessSpec(name="pub", kind=ProcessKind.RPC_SERVER, host="0.0.0.0"))
    with pytest.raises(InvalidRequestError, match="not on this host"):
        await sup.start(
            ProcessSpec(name="gpu", kind=ProcessKind.RPC_SERVER, device_ids=("GPU-nope",))
        )
    with pytest.raises(NotFoundError):
        sup.status("pub")


async def test_missing_binary_is_failed_with_where_it_looked(tmp_path: Path) -> None:
    def nothing(kind: BinaryKind) -> Path:
        raise NotFoundError(f"no {kind.value} found; looked in {tmp_path}")

    supervisor = Supervisor(nothing, settings=FAST)
    try:
        st = await supervisor.start(
            ProcessSpec(name="rpc", kind=ProcessKind.RPC_SERVER), wait_healthy=True
        )
        assert st.state is ProcessState.FAILED and str(tmp_path) in st.message
    finally:
        await supervisor.close(1.0)


async def test_wait_healthy_waits_through_a_first_attempt_that_dies(
    binaries: BinaryLocator, tmp_path: Path
) -> None:
    """A loaded host can lose a child's first start; ``wait_healthy`` is an answer about health,
    so it waits for the supervisor's own restart instead of answering "backoff"."""
    real = binaries.find(BinaryKind.RPC_SERVER)
    marker = tmp_path / "died-once"
    wrapper = tmp_path / "ggml-rpc-server"
    wrapper.write_text(
        f'#!/bin/sh\nif [ ! -e "{marker}" ]; then touch "{marker}"; exit 3; fi\n'
        f'exec "{real}" "$@"\n'
    )
    wrapper.chmod(0o755)
    supervisor = Supervisor(lambda _kind: wrapper, settings=FAST)
    try:
        st = await supervisor.start(
            ProcessSpec(name="rpc", kind=ProcessKind.RPC_SERVER), wait_healthy=True
        )
        assert marker.exists(), "the first attempt never ran"
        assert st.state is ProcessState.RUNNING and st.healthy and st.pid > 0, st.message
        assert st.restarts == 1 and st.last_exit_code == 3
    finally:
        await supervisor.close(1.0)
