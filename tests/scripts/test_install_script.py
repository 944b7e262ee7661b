"""scripts/install.sh names the backend before building and stops on a missing toolkit before
creating anything; it installs build_llama.sh's one wheel (no second, pip-compiled build)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _checkout(tmp: Path) -> Path:
    """A copy of scripts/ in an empty tree, so install.sh's .venv would land in ``tmp``."""
    shutil.copytree(SCRIPTS, tmp / "repo" / "scripts")
    return tmp / "repo"


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for tool in ("uname", "dirname", "date", "nproc", "cat", "mkdir", "ls", "python3"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIGHTWAD_")}
    root = tmp / "root"
    root.mkdir()
    env.update(
        PATH=str(bin_dir),
        TIGHTWAD_SYSROOT=str(root),
        TIGHTWAD_CACHE=str(tmp / "cache"),
        **extra,
    )
    return env


def test_missing_toolkit_names_the_backend_then_exits_3_before_any_venv(tmp_path: Path) -> None:
    repo = _checkout(tmp_path)
    env = _env(tmp_path, TIGHTWAD_BACKEND="rocm")
    out = subprocess.run(
        ["/bin/bash", str(repo / "scripts" / "install.sh"), "--no-models"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 3, out.stderr
    said = out.stderr.index("install: llama.cpp backend 'rocm'")
    assert said < out.stderr.index("cannot build for rocm") and "hipcc" in out.stderr
    assert not (repo / ".venv").exists() and not (tmp_path / "cache").exists()


def test_install_uses_the_one_cached_build_and_no_pip_compile() -> None:
    text = (SCRIPTS / "install.sh").read_text()
    assert "scripts/build_llama.sh wheel" in text
    assert "CMAKE_ARGS" not in text and "--no-binary" not in text  # no second, pip-built wheel
    assert "--force-reinstall" in text  # another backend's wheel of the same version is replaced


def test_unknown_backend_is_refused(tmp_path: Path) -> None:
    repo = _checkout(tmp_path)
    out = subprocess.run(
        ["/bin/bash", str(repo / "scripts" / "install.sh")],
        env=_env(tmp_path, TIGHTWAD_BACKEND="opencl"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "TIGHTWAD_BACKEND='opencl'" in out.stderr
