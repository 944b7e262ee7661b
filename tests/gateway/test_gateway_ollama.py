"""A route whose target is an Ollama server, end to end, called with the real ``openai`` client.

The cluster file names the Ollama endpoint (and asks for n-gram drafting, which an Ollama
target cannot honour); ``build_routes`` fronts it with the Ollama adapter in the embedded
agent, over the real gRPC Engine service, and the real gateway serves it. Ollama itself is the
documented-wire-format double of ``tests/agent/fake_ollama.py``: the answers must be exactly
the text it produced, and the ``tightwad`` stats must show that nothing was speculated.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import openai
import pytest
from agent.fake_ollama import FakeOllama, continuation, serve

from tightwad.config import config_from_mapping
from tightwad.gateway.api import GatewaySettings
from tightwad.gateway.routes import BuiltRoutes, build_routes
from tightwad.gateway.server import GatewayServer


@dataclass
class Stack:
    fake: FakeOllama
    built: BuiltRoutes
    gateway: GatewayServer
    client: openai.AsyncOpenAI


def _config(url: str, **extra: object) -> dict[str, object]:
    return {
        "routes": [
            {
                "name": "llama",
                "target": {"url": url, "model_name": "toy", "backend": "ollama"},
                "draft": "ngram",
            }
        ],
        **extra,
    }


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    fake = FakeOllama()
    async for url in serve(fake):
        built = await build_routes(config_from_mapping(_config(url)))
        gateway = GatewayServer(built.specs, GatewaySettings(), host="127.0.0.1", port=0)
        base = await gateway.start()
        client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        try:
            yield Stack(fake, built, gateway, client)
        finally:
            await client.close()
            await gateway.stop()
            await built.close()


def _no_speculation(stats: dict[str, object]) -> None:
    assert stats["mode"] == "none"
    assert (stats["rounds"], stats["drafted"], stats["accepted"]) == (0, 0, 0)
    assert isinstance(stats["plain_steps"], int) and stats["plain_steps"] > 0


async def test_the_route_serves_plainly(stack: Stack) -> None:
    assert [s.draft_mode for s in stack.built.specs] == ["none"]  # ngram asked, not honoured
    models = await stack.client.models.list()
    assert [m.id for m in models.data] == ["llama"]


async def test_chat_returns_the_text_ollama_produced(stack: Stack) -> None:
    resp = await stack.client.chat.completions.create(
        model="llama", messages=[{"role": "user", "content": "Tell me a story"}], temperature=0
    )
    prompt = "<|user|>Tell me a story\n<|assistant|>"
    assert stack.fake.requests[-1]["prompt"] == prompt and stack.fake.requests[-1]["raw"]
    expected, reason = continuation(prompt, 1000)
    assert reason == "stop"
    assert resp.choices[0].message.content == expected
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None and resp.usage.prompt_tokens == len(prompt.encode())
    _no_speculation(resp.model_extra["tightwad"])  # type: ignore[index]


async def test_streamed_chat_equals_the_whole_answer(stack: Stack) -> None:
    messages = [{"role": "user", "content": "Tell me a story"}]
    whole = await stack.client.chat.completions.create(
        model="llama",
        messages=messages,  # type: ignore[arg-type]
        temperature=0,
    )
    stream = await stack.client.chat.completions.create(
        model="llama",
        messages=messages,  # type: ignore[arg-type]
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts: list[str] = []
    finish, usage, stats = None, None, None
    async for chunk in stream:
        usage = chunk.usage or usage
        stats = (chunk.model_extra or {}).get("tightwad") or stats
        for ch in chunk.choices:
            parts.append(ch.delta.content or "")
            finish = ch.finish_reason or finish
    assert len([p for p in parts if p]) > 3  # streamed as produced, not in one piece
    assert "".join(parts) == whole.choices[0].message.content
    assert finish == "stop"
    assert usage is not None and whole.usage is not None
    assert usage.completion_tokens == whole.usage.completion_tokens
    assert stats is not None
    _no_speculation(stats)


async def test_completion_stop_and_max_tokens_are_exact(stack: Stack) -> None:
    prompt = "Look at the quick"
    expected, _ = continuation(prompt, 100)
    resp = await stack.client.completions.create(
        model="llama", prompt=prompt, max_tokens=500, stop=[" lazy"], temperature=0
    )
    assert resp.choices[0].text == expected[: expected.index(" lazy")]
    assert resp.choices[0].finish_reason == "stop"
    # Tokens of an Ollama route are bytes (Ollama shows no token ids).
    resp = await stack.client.completions.create(
        model="llama", prompt=prompt, max_tokens=10, temperature=0
    )
    assert resp.choices[0].text == expected[:10] and resp.choices[0].finish_reason == "length"
    _no_speculation(resp.model_extra["tightwad"])  # type: ignore[index]


async def test_logprobs_are_refused_not_invented(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError, match="no token probabilities"):
        await stack.client.completions.create(model="llama", prompt="Hi", logprobs=2)
