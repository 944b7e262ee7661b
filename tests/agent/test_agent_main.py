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
