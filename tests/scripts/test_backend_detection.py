"""scripts/backend.sh picks the backend from the tools a host has, faked here with a PATH of stub
executables, a fake sysroot (TIGHTWAD_SYSROOT) and TIGHTWAD_UNAME_*; build_llama.sh refuses a
backend whose toolkit is missing with exit 3 before writing anything to the cache."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
BASH = "/bin/bash"

VULKAN_FILES = ("usr/include/vulkan/vulkan.h", "usr/lib/x86_64-linux-gnu/libvulkan.so.1")

# (tools on PATH, files/dirs under the sysroot, uname -s, uname -m, expected backend)
CASES = [
    ((), (), "Linux", "x86_64", "cpu"),
    (("nvidia-smi",), (), "Linux", "x86_64", "cuda"),
    (("nvcc",), ("proc/driver/nvidia/",), "Linux", "x86_64", "cuda"),
    (("nvcc",), (), "Linux", "x86_64", "cpu"),  # a toolkit without a driver: no GPU to run on
    (("hipcc",), (), "Linux", "x86_64", "rocm"),
    (("rocminfo",), (), "Linux", "x86_64", "rocm"),
    ((), ("opt/rocm/",), "Linux", "x86_64", "rocm"),
    ((), (), "Darwin", "arm64", "metal"),
    ((), (), "Darwin", "x86_64", "cpu"),
    (("glslc",), VULKAN_FILES, "Linux", "x86_64", "vulkan"),
    (("glslc",), ("usr/include/vulkan/vulkan.h",), "Linux", "x86_64", "cpu"),  # no loader
    ((), VULKAN_FILES, "Linux", "x86_64", "cpu"),  # no glslc
    (("nvidia-smi", "glslc"), VULKAN_FILES, "Linux", "x86_64", "cuda"),  # vendor GPU first
    (("hipcc", "glslc"), VULKAN_FILES, "Linux", "x86_64", "rocm"),
]


def _host(tmp: Path, tools: tuple[str, ...], files: tuple[str, ...]) -> tuple[Path, Path]:
    bin_dir, root = tmp / "bin", tmp / "root"
    bin_dir.mkdir()
    root.mkdir()
    for needed in ("uname", "dirname", "date", "nproc", "cat", "mkdir", "ls"):
        for d in ("/usr/bin", "/bin"):
            if Path(d, needed).exists():
                (bin_dir / needed).symlink_to(Path(d, needed))
                break
    for tool in tools:
        stub = bin_dir / tool
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    for f in files:
        p = root / f
        if f.endswith("/"):
            p.mkdir(parents=True, exist_ok=True)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("")
    return bin_dir, root


def _env(bin_dir: Path, root: Path, os_name: str, arch: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TIGHTWAD_BACKEND"}
    env.update(
        PATH=str(bin_dir),
        TIGHTWAD_SYSROOT=str(root),
        TIGHTWAD_UNAME_S=os_name,
        TIGHTWAD_UNAME_M=arch,
        **extra,
    )
    return env


@pytest.mark.parametrize(("tools", "files", "os_name", "arch", "expected"), CASES)
def test_detection_table(
    tmp_path: Path,
    tools: tuple[str, ...],
    files: tuple[str, ...],
    os_name: str,
    arch: str,
    expected: str,
) -> None:
    bin_dir, root = _host(tmp_path, tools, files)
    out = subprocess.run(
        [BASH, "-c", f"source {SCRIPTS / 'backend.sh'} && tightwad_backend"],
        env=_env(bin_dir, root, os_name, arch),
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == expected


def test_nvcc_without_driver_says_why(tmp_path: Path) -> None:
    bin_dir, root = _host(tmp_path, ("nvcc",), ())
    out = subprocess.run(
        [BASH, "-c", f"source {SCRIPTS / 'backend.sh'} && tightwad_backend"],
        env=_env(bin_dir, root, "Linux", "x86_64"),
        capture_output=True,
        text=True,
        check=True,
    )
    assert "no NVIDIA driver" in out.stderr and "TIGHTWAD_BACKEND=cuda" in out.stderr


def test_chosen_backend_wins_and_unknown_is_refused(tmp_path: Path) -> None:
    bin_dir, root = _host(tmp_path, ("nvidia-smi",), ())
    env = _env(bin_dir, root, "Linux", "x86_64", TIGHTWAD_BACKEND="cpu")
    run = [BASH, "-c", f"source {SCRIPTS / 'backend.sh'} && tightwad_backend"]
    assert subprocess.run(run, env=env, capture_output=True, text=True).stdout.strip() == "cpu"
    env["TIGHTWAD_BACKEND"] = "opencl"
    bad = subprocess.run(run, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "TIGHTWAD_BACKEND='opencl'" in bad.stderr


@pytest.mark.parametrize(
    ("backend", "named"),
    [("cuda", "nvcc"), ("vulkan", "libvulkan-dev"), ("rocm", "hipcc"), ("metal", "macOS")],
)
def test_missing_toolkit_exits_3_and_leaves_no_cache(
    tmp_path: Path, backend: str, named: str
) -> None:
    bin_dir, root = _host(tmp_path, (), ())
    cache = tmp_path / "cache"
    env = _env(
        bin_dir, root, "Linux", "x86_64", TIGHTWAD_BACKEND=backend, TIGHTWAD_CACHE=str(cache)
    )
    out = subprocess.run(
        [BASH, str(SCRIPTS / "build_llama.sh"), "all"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 3, out.stderr
    assert named in out.stderr and "TIGHTWAD_BACKEND=cpu" in out.stderr
    assert not cache.exists() or not any(cache.rglob("*"))


def test_cache_is_keyed_by_version_and_backend(tmp_path: Path) -> None:
    bin_dir, root = _host(tmp_path, (), ())
    cache = tmp_path / "cache"
    done = cache / "llama.cpp" / "9.9.9" / "cpu"
    (done / "bin").mkdir(parents=True)
    (done / "wheel").mkdir()
    for exe in ("llama-server", "ggml-rpc-server"):
        (done / "bin" / exe).write_text("#!/bin/sh\n")
        (done / "bin" / exe).chmod(0o755)
    (done / "bin" / "libllama.so").write_text("")  # a cache without it is built again
    (done / "wheel" / "llama_cpp_python-9.9.9-py3-none-any.whl").write_text("")
    (done / "build.env").write_text("backend=cpu\n")
    env = _env(
        bin_dir,
        root,
        "Linux",
        "x86_64",
        TIGHTWAD_CACHE=str(cache),
        LLAMA_CPP_PYTHON_VERSION="9.9.9",
    )
    out = subprocess.run(
        [BASH, str(SCRIPTS / "build_llama.sh"), "bin"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(done / "bin")
    env["TIGHTWAD_BACKEND"] = "vulkan"  # same version, other backend: not that cache
    other = subprocess.run(
        [BASH, str(SCRIPTS / "build_llama.sh"), "bin"], env=env, capture_output=True, text=True
    )
    assert other.returncode == 3 and not (cache / "llama.cpp" / "9.9.9" / "vulkan").exists()
    del env["TIGHTWAD_BACKEND"]
    (done / "bin" / "libllama.so").unlink()  # the binaries without their library: not done
    again = subprocess.run(
        [BASH, str(SCRIPTS / "build_llama.sh"), "bin"], env=env, capture_output=True, text=True
    )
    assert "downloading llama-cpp-python==9.9.9" in again.stderr
    assert again.stdout.strip() != str(done / "bin")
