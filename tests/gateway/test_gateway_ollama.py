"""A route whose target is an Ollama server, end to end, called with the real ``openai`` client.

The cluster file names the Ollama endpoint (and asks for n-gram drafting, which an Ollama
target cannot honour); ``build_routes`` serves it with the passthrough backend: chat through
Ollama's ``/api/chat``, completions through ``/api/generate`` (raw), counts in Ollama's own
tokens. Ollama itself is the documented-wire-format double of ``tests/agent/fake_ollama.py``
(its tokens are words: ``eval_count`` is the number of pieces it streamed).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import openai
import pytest
from agent.fake_ollama import FakeOllama, continuation, render_chat, serve

from tightwad.config import config_from_mapping
from tightwad.gateway.api import GatewaySettings
from tightwad.gateway.routes import BuiltRoutes, build_routes
from tightwad.gateway.server import GatewayServer

STORY_CHAT = [{"role": "user", "content": "Tell me a story"}]


@dataclass
class Stack:
    fake: FakeOllama
    built: BuiltRoutes
    gateway: GatewayServer
    client: openai.AsyncOpenAI
    stop_server: object = None


def _config(url: str) -> dict[str, object]:
    return {
        "routes": [
            {
                "name": "llama",
                "target": {"url": url, "model_name": "toy", "backend": "ollama"},
                "draft": "ngram",
            }
        ]
    }


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    fake = FakeOllama()
    server = serve(fake)
    url = await anext(server)
    built = await build_routes(config_from_mapping(_config(url)))
    gateway = GatewayServer(
        built.specs, GatewaySettings(), host="127.0.0.1", port=0, passthrough=built.backends
    )
    base = await gateway.start()
    client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    try:
        yield Stack(fake, built, gateway, client, server)
    finally:
        await client.close()
        await gateway.stop()
        await built.close()
        await server.aclose()


def _no_speculation(stats: dict[str, object]) -> None:
    assert stats["mode"] == "none"
    assert (stats["rounds"], stats["drafted"], stats["accepted"]) == (0, 0, 0)


def _words(text: str) -> int:
    return len(text.split())


async def test_the_route_is_a_passthrough(stack: Stack) -> None:
    assert stack.built.specs == [] and list(stack.built.backends) == ["llama"]
    models = await stack.client.models.list()
    assert [m.id for m in models.data] == ["llama"]


async def test_chat_goes_through_ollamas_chat_api_with_its_counts(stack: Stack) -> None:
    resp = await stack.client.chat.completions.create(
        model="llama",
        messages=STORY_CHAT,
        temperature=0,  # type: ignore[arg-type]
    )
    sent = stack.fake.requests[-1]
    assert sent["messages"] == STORY_CHAT and "prompt" not in sent  # Ollama applies its template
    rendered = render_chat(STORY_CHAT)
    expected, reason = continuation(rendered, 1000)
    assert reason == "stop"
    assert resp.choices[0].message.content == expected
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == _words(rendered)  # Ollama's prompt_eval_count
    assert resp.usage.completion_tokens == _words(expected)  # Ollama's eval_count
    _no_speculation(resp.model_extra["tightwad"])  # type: ignore[index]


async def test_streamed_chat_equals_the_whole_answer(stack: Stack) -> None:
    whole = await stack.client.chat.completions.create(
        model="llama",
        messages=STORY_CHAT,
        temperature=0,  # type: ignore[arg-type]
    )
    stream = await stack.client.chat.completions.create(
        model="llama",
        messages=STORY_CHAT,  # type: ignore[arg-type]
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
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        whole.usage.prompt_tokens,
        whole.usage.completion_tokens,
    )
    assert stats is not None
    _no_speculation(stats)


@pytest.mark.parametrize("stream", [False, True])
async def test_max_tokens_counts_the_models_tokens(stack: Stack, stream: bool) -> None:
    prompt = "Look at the quick"
    expected, _ = continuation(prompt, 3)
    text, finish, usage = await _complete(stack, prompt, stream, max_tokens=3)
    sent = stack.fake.requests[-1]
    assert sent["raw"] is True and sent["prompt"] == prompt
    assert sent["options"]["num_predict"] == 3
    assert text == expected and _words(text) == 3
    assert finish == "length"
    assert usage == (_words(prompt), 3)


async def _complete(
    stack: Stack, prompt: str, stream: bool, **kwargs: object
) -> tuple[str, str | None, tuple[int, int] | None]:
    if not stream:
        resp = await stack.client.completions.create(
            model="llama",
            prompt=prompt,
            temperature=0,
            **kwargs,  # type: ignore[arg-type]
        )
        u = resp.usage
        usage = (u.prompt_tokens, u.completion_tokens) if u else None
        return resp.choices[0].text, resp.choices[0].finish_reason, usage
    chunks = await stack.client.completions.create(
        model="llama",
        prompt=prompt,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        **kwargs,  # type: ignore[arg-type]
    )
    parts: list[str] = []
    finish, usage = None, None
    async for c in chunks:
        if c.usage:
            usage = (c.usage.prompt_tokens, c.usage.completion_tokens)
        for ch in c.choices:
            parts.append(ch.text)
            finish = ch.finish_reason or finish
    return "".join(parts), finish, usage


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("honour_stop", [True, False])
async def test_stop_strings_are_exact_even_split_across_chunks(
    stack: Stack, stream: bool, honour_stop: bool
) -> None:
    """ " lazy do" straddles two streamed pieces (" lazy", " dogs"). Ollama gets the stop; when
    it does not cut there (honour_stop False) the gateway's own scanner does."""
    stack.fake.honour_stop = honour_stop
    prompt = "Look at the quick"
    full, _ = continuation(prompt, 12)
    assert " lazy dogs" in full
    text, finish, usage = await _complete(stack, prompt, stream, max_tokens=12, stop=[" lazy do"])
    assert stack.fake.requests[-1]["options"]["stop"] == [" lazy do"]
    assert text == full[: full.index(" lazy do")]
    assert finish == "stop"
    assert usage is not None and usage[0] == _words(prompt)
    if honour_stop:  # Ollama's own count of what it generated
        assert usage[1] == _words(full[: full.index(" lazy do")])
    else:  # it generated on to max_tokens; its count is still the one reported
        assert usage[1] == 12


async def test_sampling_parameters_go_by_ollamas_names(stack: Stack) -> None:
    await stack.client.completions.create(
        model="llama",
        prompt="Hi",
        max_tokens=2,
        temperature=0.7,
        top_p=0.9,
        seed=42,
        presence_penalty=0.5,
        frequency_penalty=0.25,
    )
    options = stack.fake.requests[-1]["options"]
    assert options["temperature"] == pytest.approx(0.7)
    assert options["top_p"] == pytest.approx(0.9)
    assert options["seed"] == 42
    assert options["presence_penalty"] == pytest.approx(0.5)
    assert options["frequency_penalty"] == pytest.approx(0.25)
    assert options["num_predict"] == 2


async def test_what_ollama_cannot_do_is_refused_with_400(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError, match="no token probabilities"):
        await stack.client.completions.create(model="llama", prompt="Hi", logprobs=2)
    with pytest.raises(openai.BadRequestError, match="no token probabilities"):
        await stack.client.chat.completions.create(
            model="llama",
            messages=STORY_CHAT,  # type: ignore[arg-type]
            logprobs=True,
        )
    with pytest.raises(openai.BadRequestError, match="logit bias"):
        await stack.client.completions.create(model="llama", prompt="Hi", logit_bias={"5": 1})
    with pytest.raises(openai.BadRequestError, match="token ids"):
        await stack.client.completions.create(model="llama", prompt=[1, 2, 3])
    assert stack.fake.requests == []  # refused before Ollama was asked


async def test_an_ollama_error_is_503_before_the_first_byte(stack: Stack) -> None:
    stack.fake.fail_status = 500
    with pytest.raises(openai.APIStatusError) as info:
        await stack.client.chat.completions.create(
            model="llama",
            messages=STORY_CHAT,  # type: ignore[arg-type]
        )
    assert info.value.status_code == 503
    with pytest.raises(openai.APIStatusError) as info:
        await stack.client.completions.create(model="llama", prompt="Hi", stream=True)
    assert info.value.status_code == 503


async def test_an_error_mid_stream_is_an_sse_error_event(stack: Stack) -> None:
    stack.fake.fail_after = 3
    stream = await stack.client.chat.completions.create(
        model="llama",
        messages=STORY_CHAT,  # type: ignore[arg-type]
        stream=True,
    )
    parts: list[str] = []
    with pytest.raises(openai.APIError, match="error was encountered while running the model"):
        async for chunk in stream:
            parts.extend(ch.delta.content or "" for ch in chunk.choices)
    expected, _ = continuation(render_chat(STORY_CHAT), 3)
    assert "".join(parts) == expected  # what came before the error, nothing invented


async def test_an_unreachable_server_is_503(stack: Stack) -> None:
    await stack.stop_server.aclose()  # type: ignore[attr-defined]
    with pytest.raises(openai.APIStatusError) as info:
        await stack.client.completions.create(model="llama", prompt="Hi")
    assert info.value.status_code == 503
    assert "Ollama" in info.value.message
