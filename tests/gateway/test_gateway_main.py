"""``tightwad-gateway -c FILE`` as a real process, called with the real ``openai`` client.

- a route to a running engine (``grpc://``) of an in-test agent serving SmolLM2: the chat
  answer is the target's own greedy continuation; SIGTERM exits 0;
- the seed's ``proxy`` section over a real llama-server: served plainly (the server cannot
  verify drafts), the status says so, the text is llama-server's own greedy answer;
- a bad file exits 2 naming the key path.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import openai
import pytest
from agent.test_adapters_llama_server import run_llama_server

from tightwad.agent.server import AgentServer
from tightwad.gateway.engine_client import EngineClient
from tightwad.gateway.main import main
from tightwad.spec.sampling import SamplingConfig

pytestmark = [pytest.mark.engine, pytest.mark.cluster]

API_KEY = "sk-gateway-main"
GATEWAY = Path(sys.executable).with_name("tightwad-gateway")
QUESTION = "What is the capital of France?"


class Gateway:
    """A ``tightwad-gateway`` child process; ``url`` once it prints that it listens."""

    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [str(GATEWAY), "-c", str(config), "--port", "0", "--api-key", API_KEY],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "TIGHTWAD_LOG_JSON": "0"},
        )
        self.url = ""

    async def ready(self, timeout_s: float = 60.0) -> str:
        assert self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout_s):
            while True:
                line = await loop.run_in_executor(None, self.proc.stdout.readline)
                if not line:
                    err = self.proc.stderr.read() if self.proc.stderr else ""
                    raise AssertionError(f"gateway exited ({self.proc.wait()}): {err[-2000:]}")
                if line.startswith("tightwad-gateway listening on "):
                    self.url = line.split(" on ", 1)[1].strip()
                    return self.url

    def client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=API_KEY, max_retries=0)

    def terminate(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
async def gateways() -> AsyncIterator[list[Gateway]]:
    started: list[Gateway] = []
    yield started
    for g in started:
        g.terminate()


async def _target_alone(address: str, question: str, n: int) -> str:
    client = EngineClient(address, "smollm")
    try:
        prompt = await client.render_chat([("user", question, "")])
        pieces, _special, _fp = await client.vocabulary()
        eog = (await client.info()).eog_token_ids
        s = client.session(timeout_s=30)
        await s.open(prompt, SamplingConfig())
        out: list[int] = []
        for _ in range(n):
            tok = (await s.verify([])).next_token
            if tok in eog:
                break
            out.append(tok)
        await s.close()
        return b"".join(pieces[t] for t in out).decode("utf-8", "replace")
    finally:
        await client.close()


async def test_engine_address_route_serves_chat_and_sigterm_exits_0(
    tmp_path: Path, smollm_agent: AgentServer, gateways: list[Gateway]
) -> None:
    host, port = smollm_agent.address.rsplit(":", 1)
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(
        f"routes:\n  - name: smollm\n    target: grpc://{host}:{port}\n    draft: ngram\n"
    )
    g = Gateway(cfg)
    gateways.append(g)
    await g.ready()
    async with g.client() as client:
        resp = await client.chat.completions.create(
            model="smollm",
            messages=[{"role": "user", "content": QUESTION}],
            max_tokens=16,
            temperature=0,
        )
        models = await client.models.list()
    assert [m.id for m in models.data] == ["smollm"]
    expected = await _target_alone(smollm_agent.address, QUESTION, 16)
    assert resp.choices[0].message.content == expected
    assert resp.usage is not None and 0 < resp.usage.completion_tokens <= 16
    assert g.terminate() == 0


async def test_seed_proxy_over_llama_server_serves_plainly(
    tmp_path: Path, smollm_path: Path, gateways: list[Gateway]
) -> None:
    with run_llama_server(smollm_path) as url:
        cfg = tmp_path / "seed.yaml"
        cfg.write_text(
            "proxy:\n  host: 127.0.0.1\n  port: 8089\n  max_draft_tokens: 8\n"
            f"  draft:\n    url: {url}\n    model_name: smol-draft\n    backend: llamacpp\n"
            f"  target:\n    url: {url}\n    model_name: smol\n    backend: llamacpp\n"
        )
        g = Gateway(cfg)
        gateways.append(g)
        await g.ready()
        async with aiohttp.ClientSession() as http:
            async with http.get(
                f"{g.url}/v1/tightwad/status", headers={"Authorization": f"Bearer {API_KEY}"}
            ) as r:
                assert r.status == 200
                status = await r.json()
            # llama-server's own greedy answer to the same chat.
            async with http.post(
                f"{url}/apply-template", json={"messages": [{"role": "user", "content": QUESTION}]}
            ) as r:
                prompt = (await r.json())["prompt"]
            async with http.post(
                f"{url}/completion",
                json={
                    "prompt": prompt,
                    "n_predict": 16,
                    "temperature": 0,
                    "top_k": 0,
                    "top_p": 1.0,
                    "min_p": 0.0,
                    "cache_prompt": False,
                },
            ) as r:
                expected = (await r.json())["content"]
        routes = {r["name"]: r for r in status["routes"]}
        assert routes["smol"]["can_verify"] is False
        assert routes["smol"]["draft_mode"] == "none"
        async with g.client() as client:
            stream = await client.chat.completions.create(
                model="smol",
                messages=[{"role": "user", "content": QUESTION}],
                max_tokens=16,
                temperature=0,
                stream=True,
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == expected
        assert g.terminate() == 0


def test_bad_config_exits_2_with_the_key_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("gateway:\n  port: 99999\n")
    assert main(["-c", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "gateway.port" in err and "line 2" in err


def test_version_and_help() -> None:
    out = subprocess.run([str(GATEWAY), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("tightwad-gateway ")
    out = subprocess.run([str(GATEWAY), "--help"], capture_output=True, text=True, check=True)
    assert "-c CONFIG" in out.stdout and "--api-key" in out.stdout
