"""``tightwad-agent`` as a user runs it: --version, --help, --check, and SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tightwad

AGENT = [sys.executable, "-m", "tightwad.agent.main"]


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AGENT, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_version_and_help() -> None:
    out = _run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"tightwad-agent {tightwad.__version__}"
    helped = _run("--help")
    assert helped.returncode == 0
    for flag in ("--listen", "--model", "--model-id", "--check", "--max-sessions", "--name"):
        assert flag in helped.stdout


def test_bad_config_file_exits_2_with_the_reason(tmp_path: Path) -> None:
    bad = tmp_path / "cluster.yaml"
    bad.write_text("agents:\n  port: not-a-port\n")
    out = _run("-c", str(bad), "--check")
    assert out.returncode == 2 and "agents.port" in out.stderr


def test_check_reports_what_the_host_offers(tmp_path: Path) -> None:
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(f"agents:\n  model_dirs: [{tmp_path / 'missing'}]\n")
    out = _run("-c", str(cfg), "--check")
    assert "[ok] device cpu:" in out.stdout
    assert "rpc_server" in out.stdout and "llama-cpp-python" in out.stdout
    assert f"[warn] model dir {tmp_path / 'missing'}: does not exist" in out.stdout
    assert out.returncode in (0, 1)
    assert ("ready" in out.stdout.splitlines()[-1]) == (out.returncode == 0)


@pytest.mark.cluster
def test_sigterm_stops_children_and_exits_zero(tmp_path: Path) -> None:
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text("agents:\n  host: 127.0.0.1\n")
    proc = subprocess.Popen(
        [*AGENT, "-c", str(cfg), "--listen", "127.0.0.1:0", "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on 127.0.0.1:" in line, line
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.cluster
def test_children_die_with_a_killed_agent(tmp_path: Path) -> None:
    """SIGKILL leaves the agent no chance to clean up: the kernel's parent-death signal must
    still take its rpc-server down (no orphan on the worker)."""
    import asyncio

    import grpc

    from tightwad.v1 import agent_pb2, agent_pb2_grpc

    cfg = tmp_path / "cluster.yaml"
    cfg.write_text("agents:\n  host: 127.0.0.1\n")
    proc = subprocess.Popen(
        [*AGENT, "-c", str(cfg), "--listen", "127.0.0.1:0", "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        address = line.rsplit("listening on ", 1)[1].split()[0]

        async def start_rpc() -> agent_pb2.ProcessStatus:
            async with grpc.aio.insecure_channel(address) as ch:
                node = agent_pb2_grpc.NodeServiceStub(ch)
                spec = agent_pb2.ProcessSpec(name="rpc0", kind=agent_pb2.PROCESS_KIND_RPC_SERVER)
                r = await node.StartProcess(
                    agent_pb2.StartProcessRequest(spec=spec, wait_healthy=True), timeout=60
                )
                return r.status

        status = asyncio.run(start_rpc())
        child = int(status.pid)
        assert child > 0 and Path(f"/proc/{child}").exists(), (
            f"rpc-server not running: {agent_pb2.ProcessState.Name(status.state)}: {status.message}"
        )
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(child):
            time.sleep(0.05)
        assert not _alive(child), "the rpc-server outlived its killed agent"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"
