"""``TIGHTWAD_BACKEND=vulkan scripts/up.sh`` on this host: what up.sh runs after the install
(scripts/backend.sh's ``tightwad_vulkan_visible``, then ``tightwad up``) serves with every layer
on the Vulkan device, says where the model went, answers a chat completion, and stops cleanly
on Ctrl-C. The install step itself is tests/scripts/test_install_script.py's."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from gpu.vk import VK_ENV, child_env, ggml_devices, pick_gpu, port

pytestmark = [pytest.mark.gpu, pytest.mark.engine, pytest.mark.slow]

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
TIGHTWAD = Path(sys.executable).with_name("tightwad")


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    out: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.put(line)
        out.put("")  # end of output

    threading.Thread(target=pump, daemon=True).start()
    return out


def test_up_with_vulkan_asked_for_serves_with_its_layers_on_the_vulkan_device(
    smollm_path: Path,
) -> None:
    device = pick_gpu(ggml_devices(child_env(gpu=True)))
    if device is None or not str(device["name"]).startswith("Vulkan"):
        pytest.skip("no Vulkan device visible to ggml here (a Vulkan build and a driver needed)")
    name = str(device["name"])
    env = {k: v for k, v in os.environ.items() if k != VK_ENV}  # as a user's shell has it
    env["TIGHTWAD_BACKEND"] = "vulkan"
    p = port()
    script = (
        f"set -euo pipefail; source {SCRIPTS / 'backend.sh'}; "
        f"tightwad_vulkan_visible {sys.executable}; "
        f"exec {TIGHTWAD} up --target {smollm_path} --model-name smollm --port {p} "
        "--threads 2 --ctx-size 512 --max-sessions 1"
    )
    proc = subprocess.Popen(
        ["/bin/bash", "-c", script],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines, seen = _lines(proc), []
    try:
        deadline = time.monotonic() + 420
        while not any(x.startswith("  smollm: ") for x in seen):  # the Placement block
            assert time.monotonic() < deadline, "".join(seen)[-3000:]
            line = lines.get(timeout=max(1.0, deadline - time.monotonic()))
            assert line, f"tightwad up exited {proc.wait()}:\n" + "".join(seen)[-3000:]
            seen.append(line)
        text = "".join(seen)
        assert "Tightwad is serving 'smollm'" in text, text[-3000:]
        placed = next(x for x in seen if x.startswith("  smollm: "))
        assert placed.startswith(f"  smollm: 30/30 layers on {name} "), placed
        body = json.dumps(
            {
                "model": "smollm",
                "messages": [{"role": "user", "content": "Name a colour."}],
                "max_tokens": 6,
            }
        ).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{p}/v1/chat/completions",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=300) as r:
            answer = json.loads(r.read())
        assert answer["choices"][0]["message"]["content"], answer
        assert answer["usage"]["completion_tokens"] >= 1, answer
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert rc == 0, "".join(seen)[-3000:]
