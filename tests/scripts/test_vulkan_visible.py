"""scripts/backend.sh's ``tightwad_vulkan_visible`` (what up.sh runs before ``tightwad up``):
asked for Vulkan on a host whose only Vulkan device is of type CPU (Mesa's llvmpipe, which ggml
skips without ``GGML_VK_VISIBLE_DEVICES``), it makes that device visible and says so; a real
Vulkan GPU, a value of the user's own, or another backend leave the environment as it is.

ggml's device list is faked by a stand-in "python" that prints what ``python -m
tightwad.engine.ggml_devices`` would for the host described (the real listing on this host is
checked by tests/gpu/test_up_vulkan.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
VK = '{"name": "Vulkan0", "description": "llvmpipe", "type": "gpu"}'
CPU = '{"name": "CPU", "description": "host", "type": "cpu"}'

# host: which listing ggml gives: "cpu-type" only with the variable set, "gpu" always, "none"
LISTING = {
    "cpu-type": f"[ -n \"${{GGML_VK_VISIBLE_DEVICES+set}}\" ] && echo '{VK}'; echo '{CPU}'",
    "gpu": f"echo '{VK}'; echo '{CPU}'",
    "none": f"echo '{CPU}'",
}


def _run(tmp: Path, host: str, env: dict[str, str]) -> tuple[str, str]:
    py = tmp / "python"
    py.write_text(f"#!/bin/bash\n{LISTING[host]}\n")
    py.chmod(0o755)
    script = (
        f"set -euo pipefail; source {SCRIPTS / 'backend.sh'}; tightwad_vulkan_visible {py}; "
        'echo "VK=${GGML_VK_VISIBLE_DEVICES-unset}"'
    )
    base = {k: v for k, v in os.environ.items() if k != "GGML_VK_VISIBLE_DEVICES"}
    base.pop("TIGHTWAD_BACKEND", None)
    out = subprocess.run(
        ["/bin/bash", "-c", script],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1], out.stderr


@pytest.mark.parametrize(
    ("host", "env", "visible", "said"),
    [
        ("cpu-type", {"TIGHTWAD_BACKEND": "vulkan"}, "0", "GGML_VK_VISIBLE_DEVICES=0"),
        ("gpu", {"TIGHTWAD_BACKEND": "vulkan"}, "unset", ""),  # a real GPU is seen as it is
        ("none", {"TIGHTWAD_BACKEND": "vulkan"}, "unset", "runs on the CPU"),
        ("cpu-type", {"TIGHTWAD_BACKEND": "vulkan", "GGML_VK_VISIBLE_DEVICES": "1"}, "1", ""),
        ("cpu-type", {"TIGHTWAD_BACKEND": "vulkan", "GGML_VK_VISIBLE_DEVICES": ""}, "", ""),
        ("cpu-type", {"TIGHTWAD_BACKEND": "cpu"}, "unset", ""),
        ("cpu-type", {}, "unset", ""),  # detected, not asked for: llvmpipe is no speed-up
    ],
)
def test_llvmpipe_is_made_visible_only_when_vulkan_is_asked_for(
    tmp_path: Path, host: str, env: dict[str, str], visible: str, said: str
) -> None:
    line, err = _run(tmp_path, host, env)
    assert line == f"VK={visible}", (line, err)
    if said:
        assert said in err, err
    else:
        assert err == "", err
