"""Helpers of the gpu tier: environments for child processes with the GPUs shown or hidden,
free ports and waits for the servers they start,
and ggml's device list as such a child sees it.

Shown: Vulkan's device 0 is made visible (``GGML_VK_VISIBLE_DEVICES=0``: Mesa's llvmpipe is a
Vulkan device of type CPU, which ggml skips otherwise); CUDA, ROCm and the rest show theirs by
themselves. Hidden: every backend's visibility variable is set to none, so the CPU reference
computes on the CPU even on a host with a real GPU. ``TIGHTWAD_GPU_TEST_DEVICE`` (e.g. ``CUDA1``)
picks the device the tier tests; the default is the first GPU ggml lists.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

VK_ENV = "GGML_VK_VISIBLE_DEVICES"
_HIDE = {VK_ENV: "", "CUDA_VISIBLE_DEVICES": "", "HIP_VISIBLE_DEVICES": "-1"}
# ggml device name prefix -> the backend scripts/backend.sh and build.env call it
_BACKENDS = (
    ("CUDA", "cuda"),
    ("ROCm", "rocm"),
    ("HIP", "rocm"),
    ("Vulkan", "vulkan"),
    ("MTL", "metal"),
    ("Metal", "metal"),
    ("SYCL", "sycl"),
)


def child_env(*, gpu: bool) -> dict[str, str]:
    """This process's environment with the GPUs shown (``gpu``) or hidden."""
    env = {k: v for k, v in os.environ.items() if k not in _HIDE}
    if gpu:
        env[VK_ENV] = os.environ.get(VK_ENV) or "0"
    else:
        env.update(_HIDE)
    return env


def run_child(script: Path, *args: object, gpu: bool, timeout: float = 600) -> dict[str, Any]:
    """Run one of the tier's child scripts with the GPUs shown (``gpu``) or hidden, and return
    the JSON object of its ``RESULT`` line; a child that fails (a crash too) fails the test
    with its return code and the tails of its output."""
    out = subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        env=child_env(gpu=gpu),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, f"rc {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    return dict(json.loads(line[len("RESULT ") :]))


def backend_of(ggml_name: str) -> str:
    """``vulkan`` of ``Vulkan0``, ``cuda`` of ``CUDA1``; ``""`` when unknown."""
    return next((b for prefix, b in _BACKENDS if ggml_name.startswith(prefix)), "")


def ggml_devices(env: dict[str, str]) -> list[dict[str, object]]:
    out = subprocess.run(
        [sys.executable, "-m", "tightwad.engine.ggml_devices"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def pick_gpu(devices: list[dict[str, object]]) -> dict[str, object] | None:
    """The device the tier tests (see the module docstring)."""
    wanted = os.environ.get("TIGHTWAD_GPU_TEST_DEVICE", "")
    gpus = [d for d in devices if d.get("type") in ("gpu", "igpu")]
    if wanted:
        return next((d for d in gpus if d["name"] == wanted), None)
    return gpus[0] if gpus else None


def port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{what} exited with {proc.returncode}"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not listen on {port}")


def wait_health(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"llama-server exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError("llama-server did not become healthy")
