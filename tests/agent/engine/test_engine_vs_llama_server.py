"""Generate through the embedded engine equals the real llama-server (built from the same
llama.cpp source) for the same model, prompt tokens and chat template: greedy, 5 prompts.

llama-server prefills in larger batches than our aligned 64-token chunks, so a difference is
tolerated only at a near-tie of the target's top two logprobs (tests/support.py)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import NEAR_TIE_LOGPROB_GAP, first_divergence

from tightwad.agent.binaries import BinaryKind, find_binary
from tightwad.engine.contract import Message
from tightwad.engine.engine_config import EngineConfig
from tightwad.engine.llama_engine import Engine
from tightwad.spec.sampling import SamplingConfig

pytestmark = [pytest.mark.engine, pytest.mark.cluster]

PROMPTS = [
    "Write a Python function that checks whether a number is even.",
    "What is the capital of Spain?",
    "List four programming languages.",
    "Explain recursion in one sentence.",
    "Write a limerick about a cat.",
]
N = 32


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def llama_server(smollm_path: Path) -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [
            str(find_binary(BinaryKind.LLAMA_SERVER)),
            "-m",
            str(smollm_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "-c",
            "2048",
            "-t",
            "2",
            "-np",
            "1",
            "-fa",
            "on",
            "--no-webui",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        else:
            raise TimeoutError("llama-server did not become healthy")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _server_greedy(url: str, tokens: list[int]) -> list[int]:
    body = {
        "prompt": tokens,
        "n_predict": N,
        "temperature": 0,
        "top_k": 1,
        "cache_prompt": False,
        "return_tokens": True,
    }
    req = urllib.request.Request(
        f"{url}/completion",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return list(json.loads(r.read())["tokens"])


async def test_generate_matches_llama_server(smollm_path: Path, llama_server: str) -> None:
    engine = await Engine.load(EngineConfig("m", smollm_path, ctx_size=1024, max_sessions=2))
    identical = 0
    try:
        for text in PROMPTS:
            _, prompt = await engine.render_chat(
                [Message("user", text)], add_generation_prompt=True
            )
            s, _, _ = await engine.open_session(prompt, SamplingConfig(), top_logprobs=2)
            ours, gaps = [], []
            async for tok, lp, _why in s.generate(N):
                if tok < 0:
                    break
                assert lp is not None
                gaps.append(lp.top[0][1] - lp.top[1][1])
                if tok in engine.eog:
                    break
                ours.append(tok)
            s.release()
            theirs = [t for t in _server_greedy(llama_server, prompt) if t not in engine.eog]
            i = first_divergence(ours, theirs)
            if i is None:
                identical += 1
            else:
                assert i < len(gaps) and gaps[i] < NEAR_TIE_LOGPROB_GAP, (text, i, ours, theirs)
    finally:
        await engine.close()
    assert identical >= 4
