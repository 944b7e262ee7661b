"""`tightwad up` as a user runs it: a subprocess, the printed URL, the real openai client,
then Ctrl-C (SIGINT) and SIGTERM both end it cleanly."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import openai
import pytest

pytestmark = pytest.mark.engine

UP = Path(sys.executable).parent / "tightwad"


def _start(*args: str) -> tuple[subprocess.Popen[str], str, list[str]]:
    proc = subprocess.Popen(
        [str(UP), "up", "--port", "0", "--threads", "2", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "TIGHTWAD_API_KEY"},
    )
    lines: list[str] = []
    deadline = time.monotonic() + 120
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"serving '([^']+)' at (http://\S+)/v1", line)
        if m:
            return proc, m.group(2), lines
    proc.kill()
    raise AssertionError("tightwad up did not print its URL:\n" + "".join(lines))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_up_serves_the_default_model_and_stops_cleanly(sig: signal.Signals) -> None:
    proc, url, lines = _start()
    try:
        banner = "".join(lines)
        while "curl" not in banner:
            banner += proc.stdout.readline() if proc.stdout else ""
        # The printed curl works as printed.
        curl = next(line for line in banner.splitlines() if line.strip().startswith("curl"))
        body = json.loads(re.search(r"-d '(.+)'$", curl.strip()).group(1))  # type: ignore[union-attr]
        req = urllib.request.Request(
            f"{url}/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            payload = json.loads(resp.read())
        assert payload["object"] == "chat.completion"
        assert payload["choices"][0]["message"]["content"]
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        models = [m.id for m in client.models.list()]
        assert models == [body["model"]]
        r = client.chat.completions.create(
            model=body["model"],
            messages=[{"role": "user", "content": "Count to three."}],
            max_tokens=8,
            temperature=0,
        )
        assert r.usage is not None and r.usage.completion_tokens == 8
        assert r.model_extra["tightwad"]["mode"] == "ngram"
    finally:
        proc.send_signal(sig)
        rc = proc.wait(timeout=60)
    assert rc == 0


def test_up_refuses_a_missing_target_with_a_clear_message(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(UP), "up", "--port", "0", "--target", str(tmp_path / "nope.gguf")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "--target" in proc.stdout + proc.stderr
    assert "nope.gguf" in proc.stdout + proc.stderr
