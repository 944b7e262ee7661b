"""The gateway as the real ``openai`` client sees it: shapes, streaming, usage, request mapping."""

from __future__ import annotations

import json
import math
from typing import Any

import aiohttp
import pytest

from tightwad.gateway.api import GatewaySettings

from .conftest import API_KEY, Running, Start
from .fakes import STATS, FakeBackend, script

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}


async def read_sse(response: aiohttp.ClientResponse) -> list[str]:
    """The ``data:`` payloads of an SSE response, in order."""
    raw = (await response.read()).decode()
    assert raw.endswith("\n\n")
    frames = [frame for frame in raw.split("\n\n") if frame]
    assert all(frame.startswith("data: ") for frame in frames), frames
    return [frame.removeprefix("data: ") for frame in frames]


async def test_chat_non_stream_with_openai_client(gw: Running, backend: FakeBackend) -> None:
    client = gw.openai()
    reply = await client.chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    assert reply.model == "fake"
    assert reply.system_fingerprint
    choice = reply.choices[0]
    assert (choice.index, choice.finish_reason) == (0, "stop")
    assert choice.message.role == "assistant"
    assert choice.message.content == "Hello!"
    assert choice.logprobs is None
    assert reply.usage is not None
    usage = reply.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (7, 3, 10)
    extra = reply.model_extra or {}
    assert extra["tightwad"] == STATS.as_json()
    assert backend.closed == 1


async def test_chat_stream_with_usage_with_openai_client(gw: Running) -> None:
    client = gw.openai()
    stream = await client.chat.completions.create(
        model="fake",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello!"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 10
    assert all(c.id == chunks[0].id for c in chunks)


async def test_chat_stream_exact_sequence(gw: Running) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    response = await gw.post("/v1/chat/completions", body)
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    frames = await read_sse(response)
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(frame) for frame in frames[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    deltas = [c["choices"][0]["delta"] if c["choices"] else None for c in chunks]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"content": "Hel"},
        {"content": "lo"},
        {"content": "!"},
        {},
        None,
    ]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks[:-1]]
    assert finishes == [None, None, None, None, "stop"]
    assert [c["usage"] for c in chunks[:-1]] == [None] * 5
    assert chunks[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert chunks[-1]["choices"] == []
    assert chunks[-2]["tightwad"] == STATS.as_json()
    assert "tightwad" not in chunks[1]


async def test_chat_stream_without_include_usage_has_no_usage_key(gw: Running) -> None:
    response = await gw.post("/v1/chat/completions", {**CHAT, "stream": True})
    frames = await read_sse(response)
    chunks = [json.loads(frame) for frame in frames[:-1]]
    assert frames[-1] == "[DONE]"
    assert len(chunks) == 5
    assert all("usage" not in chunk for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_stream_and_non_stream_agree(start: Start, path: str) -> None:
    backend = FakeBackend(events=script(["a", "β", " c", "\n"], finish="length", prompt_tokens=3))
    gw = await start({"fake": backend})
    body: dict[str, Any] = dict(CHAT) if "chat" in path else {"model": "fake", "prompt": "say"}
    whole = await (await gw.post(path, body)).json()
    stream_body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    frames = await read_sse(await gw.post(path, stream_body))
    chunks = [json.loads(frame) for frame in frames[:-1]]
    key = "message" if "chat" in path else None
    whole_text = whole["choices"][0]["message"]["content"] if key else whole["choices"][0]["text"]
    pieces = [
        (c["choices"][0]["delta"].get("content", "") if key else c["choices"][0]["text"])
        for c in chunks
        if c["choices"]
    ]
    assert "".join(pieces) == whole_text == "aβ c\n"
    assert chunks[-1]["usage"] == whole["usage"]
    assert whole["choices"][0]["finish_reason"] == "length"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"


async def test_completions_with_openai_client(gw: Running, backend: FakeBackend) -> None:
    client = gw.openai()
    reply = await client.completions.create(model="fake", prompt="Say", max_tokens=5)
    assert reply.object == "text_completion"
    assert reply.id.startswith("cmpl-")
    assert reply.choices[0].text == "Hello!"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens == 3
    assert backend.requests[0].prompt == "Say"
    assert backend.requests[0].max_tokens == 5


async def test_completions_stream_with_openai_client(gw: Running) -> None:
    client = gw.openai()
    stream = await client.completions.create(
        model="fake", prompt="Say", stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Hello!"
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 7


async def test_completions_echo_and_logprobs(start: Start) -> None:
    backend = FakeBackend(events=script(["ab", "c"], with_logprobs=True))
    gw = await start({"fake": backend})
    body = {"model": "fake", "prompt": "Q:", "echo": True, "logprobs": 2}
    reply = await (await gw.post("/v1/completions", body)).json()
    choice = reply["choices"][0]
    assert choice["text"] == "Q:abc"
    assert choice["logprobs"] == {
        "tokens": ["ab", "c"],
        "token_logprobs": [-0.1, -0.2],
        "top_logprobs": [{"ab": -0.1, "zz": -2.5}, {"c": -0.1, "zz": -2.5}],
        "text_offset": [2, 4],
    }
    request = backend.requests[0]
    assert (request.echo, request.logprobs, request.top_logprobs) == (True, True, 2)


async def test_chat_logprobs_shape(start: Start) -> None:
    gw = await start({"fake": FakeBackend(events=script(["é"], with_logprobs=True))})
    body = {**CHAT, "logprobs": True, "top_logprobs": 2}
    reply = await (await gw.post("/v1/chat/completions", body)).json()
    assert reply["choices"][0]["logprobs"] == {
        "content": [
            {
                "token": "é",
                "logprob": -0.1,
                "bytes": [195, 169],
                "top_logprobs": [
                    {"token": "é", "logprob": -0.1, "bytes": [195, 169]},
                    {"token": "zz", "logprob": -2.5, "bytes": [122, 122]},
                ],
            }
        ],
        "refusal": None,
    }
    stream = await gw.post("/v1/chat/completions", {**body, "stream": True})
    chunks = [json.loads(frame) for frame in (await read_sse(stream))[:-1]]
    assert chunks[1]["choices"][0]["logprobs"]["content"][0]["token"] == "é"


async def test_models_list_and_get(start: Start) -> None:
    gw = await start({"small": FakeBackend(), "big": FakeBackend()})
    client = gw.openai()
    models = await client.models.list()
    assert [m.id for m in models.data] == ["small", "big"]
    assert all(m.object == "model" and m.owned_by == "tightwad" for m in models.data)
    one = await client.models.retrieve("big")
    assert one.id == "big"
    missing = await gw.get("/v1/models/nope")
    assert missing.status == 404
    assert (await missing.json())["error"]["code"] == "model_not_found"


async def test_request_fields_reach_the_backend(gw: Running, backend: FakeBackend) -> None:
    body = {
        "model": "fake",
        "messages": [
            {"role": "developer", "content": "be brief"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
            {"role": "assistant", "content": None, "name": "bot"},
        ],
        "max_tokens": 9,
        "max_completion_tokens": 11,
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 40,
        "min_p": 0.05,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "repeat_penalty": 1.1,
        "logit_bias": {"42": -100, "7": 3.5},
        "seed": 1234,
        "stop": ["\n\n", "END"],
        "prediction": {"type": "content", "content": [{"type": "text", "text": "old code"}]},
        "user": "someone",
        "n": 1,
        "tool_choice": "none",
        "response_format": {"type": "text"},
    }
    assert (await gw.post("/v1/chat/completions", body)).status == 200
    request = backend.requests[0]
    assert [(m.role, m.content, m.name) for m in request.messages or ()] == [
        ("developer", "be brief", ""),
        ("user", "ab", ""),
        ("assistant", "", "bot"),
    ]
    assert request.max_tokens == 11
    sampling = request.sampling
    assert (sampling.temperature, sampling.top_p, sampling.top_k) == (0.5, 0.9, 40)
    assert (sampling.min_p, sampling.repeat_penalty) == (0.05, 1.1)
    assert (sampling.presence_penalty, sampling.frequency_penalty) == (0.5, -0.5)
    assert dict(sampling.logit_bias) == {42: -100.0, 7: 3.5}
    assert request.seed == 1234
    assert request.stop == ("\n\n", "END")
    assert request.prediction == "old code"
    assert request.request_id and request.prompt is None


async def test_defaults_and_token_prompts(start: Start, backend: FakeBackend) -> None:
    settings = GatewaySettings(api_key=API_KEY, default_max_tokens=33)
    gw = await start({"fake": backend}, settings)
    assert (await gw.post("/v1/chat/completions", CHAT)).status == 200
    assert (await gw.post("/v1/completions", {"model": "fake", "prompt": [1, 2, 3]})).status == 200
    assert (await gw.post("/v1/completions", {"model": "fake", "prompt": ["one"]})).status == 200
    chat, tokens, single = backend.requests
    assert chat.max_tokens == 33
    assert math.isclose(chat.sampling.temperature, 1.0)
    assert chat.stop == () and chat.seed is None and not chat.logprobs
    assert tokens.prompt_tokens == (1, 2, 3) and tokens.prompt is None
    assert single.prompt == "one"


async def test_completions_stream_exact_sequence(gw: Running) -> None:
    body = {
        "model": "fake",
        "prompt": "Say",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    frames = await read_sse(await gw.post("/v1/completions", body))
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(frame) for frame in frames[:-1]]
    assert all(c["object"] == "text_completion" and c["id"].startswith("cmpl-") for c in chunks)
    choices = [
        (c["choices"][0]["text"], c["choices"][0]["finish_reason"]) if c["choices"] else None
        for c in chunks
    ]
    assert choices == [("Hel", None), ("lo", None), ("!", None), ("", "stop"), None]
    assert chunks[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert chunks[-2]["tightwad"]["accepted"] == 4
