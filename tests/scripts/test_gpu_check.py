"""scripts/gpu_check.sh's dry run (what CI runs so the device check does not rot): the plan
for this host's backend, every step with its timeout, and nothing built or written; the
toolkit check and bad arguments stop it with their exit codes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
TOOLS = ("uname", "dirname", "date", "sed", "timeout", "cat", "mkdir", "nproc")


def _host(tmp: Path, *fake: str) -> tuple[Path, dict[str, str]]:
    """A checkout holding only scripts/, and a PATH with the basic tools plus ``fake`` ones
    (empty executables: detection looks only at their presence)."""
    repo = tmp / "repo"
    shutil.copytree(SCRIPTS, repo / "scripts")
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        if found := shutil.which(tool):
            (bin_dir / tool).symlink_to(found)
    for tool in fake:
        (bin_dir / tool).write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / tool).chmod(0o755)
    (tmp / "root").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIGHTWAD_", "GGML_"))}
    env.update(PATH=str(bin_dir), TIGHTWAD_SYSROOT=str(tmp / "root"), HOME=str(tmp / "home"))
    return repo, env


def _run(repo: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/bash", str(repo / "scripts" / "gpu_check.sh"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cpu_dry_run_prints_every_step_and_writes_nothing(tmp_path: Path) -> None:
    repo, env = _host(tmp_path)
    out = _run(repo, env, "--backend", "cpu", "--dry-run")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "gpu_check: backend cpu (chosen" in text and "CMake flags: none + -DGGML_RPC=ON" in text
    steps = re.findall(r"^\s+(\d+)\. (\S+)\s+timeout\s+(\d+)s\s+(.+)$", text, re.M)
    assert [s[1] for s in steps] == [
        "install",
        "models",
        "devices",
        "gpu-tier",
        "bench-engine",
        "bench-model-draft",
        "bench-draft-free",
    ]
    cmds = {name: cmd for _, name, _, cmd in steps}
    assert cmds["install"] == "TIGHTWAD_BACKEND=cpu scripts/install.sh --no-models"
    assert "-m pytest -q -m gpu tests/gpu" in cmds["gpu-tier"]
    for scenario in ("engine", "model-draft", "draft-free"):
        assert (
            f"benchmarks.run --out benchmarks/results/gpu --log-level warning {scenario} "
            in (cmds[f"bench-{scenario}"])
        )
    assert all(0 < int(t) <= 600 for _, _, t, _ in steps)
    assert sorted(p.name for p in repo.iterdir()) == ["scripts"]  # no .venv, no results
    assert not (tmp_path / "home").exists()  # no cache


def test_dry_run_without_install_or_bench_leaves_those_steps_out(tmp_path: Path) -> None:
    repo, env = _host(tmp_path)
    out = _run(repo, env, "--backend", "cpu", "--dry-run", "--no-install", "--no-bench")
    assert out.returncode == 0, out.stderr
    assert re.findall(r"^\s+\d+\. (\S+)", out.stdout, re.M) == ["models", "devices", "gpu-tier"]


def test_a_faked_nvidia_host_is_planned_as_a_cuda_build_for_its_own_gpu(tmp_path: Path) -> None:
    repo, env = _host(tmp_path, "nvidia-smi", "nvcc")
    out = _run(repo, env, "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "backend cuda (detected)" in out.stdout
    assert "-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=native" in out.stdout
    assert "TIGHTWAD_BACKEND=cuda scripts/install.sh" in out.stdout


def test_a_missing_toolkit_fails_the_dry_run_with_what_to_install(tmp_path: Path) -> None:
    repo, env = _host(tmp_path, "nvidia-smi")  # a driver, no nvcc
    out = _run(repo, env, "--dry-run")
    assert out.returncode == 3
    assert "backend cuda (detected)" in out.stdout and "nvcc" in out.stderr
    assert "a real run would stop before step 1" in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--bogus",), "unknown argument '--bogus'"),
        (("--budget", "ten"), "--budget must be whole seconds"),
        (("--backend", "opencl", "--dry-run"), "unknown TIGHTWAD_BACKEND='opencl'"),
    ],
)
def test_bad_arguments_exit_2_naming_the_argument(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    repo, env = _host(tmp_path)
    out = _run(repo, env, *args)
    assert out.returncode == 2 and message in out.stderr
