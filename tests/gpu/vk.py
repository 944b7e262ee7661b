"""Helpers of the gpu tier: environments for child processes with the Vulkan device shown or
hidden, and ggml's device list as such a child sees it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

VK_ENV = "GGML_VK_VISIBLE_DEVICES"


def child_env(*, vulkan: bool) -> dict[str, str]:
    """This process's environment with the Vulkan device shown (``vulkan``) or hidden."""
    env = {k: v for k, v in os.environ.items() if k != VK_ENV}
    if vulkan:
        env[VK_ENV] = "0"
    return env


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
