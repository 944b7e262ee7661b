"""Refusals: every bad request is an OpenAI error body with the right status, type and param."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import openai
import pytest

from tightwad.errors import ContextLengthError, UnavailableError

from .conftest import Running, Start
from .fakes import FakeBackend

MSG = [{"role": "user", "content": "hi"}]
INVALID = "invalid_request_error"
UNSUPPORTED = "unsupported_parameter"

# (name, path, body, status, error.type, error.param, error.code)
BAD_REQUESTS: list[tuple[str, str, dict[str, Any], int, str, str | None, str | None]] = [
    ("missing model", "chat", {"messages": MSG}, 400, INVALID, "model", None),
    ("model not a string", "chat", {"model": 3, "messages": MSG}, 400, INVALID, "model", None),
    ("unknown model", "chat", {"model": "gpt-9", "messages": MSG}, 404, INVALID, None,
     "model_not_found"),
    ("missing messages", "chat", {"model": "fake"}, 400, INVALID, "messages", None),
    ("empty messages", "chat", {"model": "fake", "messages": []}, 400, INVALID, "messages", None),
    ("messages not a list", "chat", {"model": "fake", "messages": "hi"}, 400, INVALID,
     "messages", None),
    ("bad role", "chat", {"model": "fake", "messages": [{"role": "robot", "content": "x"}]}, 400,
     INVALID, "messages[0].role", None),
    ("content wrong type", "chat", {"model": "fake", "messages": [{"role": "user", "content": 5}]},
     400, INVALID, "messages[0].content", None),
    ("image part", "chat", {"model": "fake", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}]}]},
     400, INVALID, "messages[0].content[1].type", UNSUPPORTED),
    ("tool calls in message", "chat", {"model": "fake", "messages": [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "x"}]}]},
     400, INVALID, "messages[0].tool_calls[0].function", None),
    ("tool message answering no call", "chat", {"model": "fake", "messages": [
        *MSG, {"role": "tool", "tool_call_id": "call_1", "content": "42"}]},
     400, INVALID, "messages[1].tool_call_id", None),
    ("unknown message key", "chat", {"model": "fake", "messages": [
        {"role": "user", "content": "x", "mood": "happy"}]}, 400, INVALID, "messages[0].mood",
     None),
    ("unknown field", "chat", {"model": "fake", "messages": MSG, "frobnicate": 1}, 400, INVALID,
     "frobnicate", None),
    ("tools", "chat", {"model": "fake", "messages": MSG, "tools": [{"type": "function"}]}, 400,
     INVALID, "tools[0].function", None),
    ("tool_choice without tools", "chat", {"model": "fake", "messages": MSG,
     "tool_choice": "auto"}, 400, INVALID, "tool_choice", None),
    ("functions", "chat", {"model": "fake", "messages": MSG, "functions": [{"name": "f"}]}, 400,
     INVALID, "functions", UNSUPPORTED),
    ("invalid json_schema", "chat", {"model": "fake", "messages": MSG, "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
     400, INVALID, "response_format.json_schema.schema.type", None),
    ("audio", "chat", {"model": "fake", "messages": MSG, "audio": {"voice": "x"}}, 400, INVALID,
     "audio", UNSUPPORTED),
    ("modalities", "chat", {"model": "fake", "messages": MSG, "modalities": ["text", "audio"]},
     400, INVALID, "modalities", UNSUPPORTED),
    ("n > cap", "chat", {"model": "fake", "messages": MSG, "n": 9}, 400, INVALID, "n", None),
    ("n > 128", "chat", {"model": "fake", "messages": MSG, "n": 129}, 400, INVALID, "n", None),
    ("modalities audio", "chat", {"model": "fake", "messages": MSG, "modalities": ["audio"]},
     400, INVALID, "modalities", UNSUPPORTED),
    ("web search", "chat", {"model": "fake", "messages": MSG, "web_search_options": {}},
     400, INVALID, "web_search_options", UNSUPPORTED),
    ("metadata without store", "chat", {"model": "fake", "messages": MSG, "metadata": {"a": "b"}},
     400, INVALID, "metadata", None),
    ("metadata value", "chat",
     {"model": "fake", "messages": MSG, "store": True, "metadata": {"a": 1}},
     400, INVALID, "metadata.a", None),
    ("service_tier", "chat", {"model": "fake", "messages": MSG, "service_tier": "gold"},
     400, INVALID, "service_tier", None),
    ("reasoning_effort", "chat", {"model": "fake", "messages": MSG, "reasoning_effort": "max!"},
     400, INVALID, "reasoning_effort", None),
    ("verbosity type", "chat", {"model": "fake", "messages": MSG, "verbosity": 3},
     400, INVALID, "verbosity", None),
    ("store type", "chat", {"model": "fake", "messages": MSG, "store": "yes"},
     400, INVALID, "store", None),
    ("cache options", "chat",
     {"model": "fake", "messages": MSG, "prompt_cache_options": {"ttl": "1h"}},
     400, INVALID, "prompt_cache_options.ttl", None),
    ("best_of < n", "completion", {"model": "fake", "prompt": "a", "n": 2, "best_of": 1},
     400, INVALID, "best_of", None),

    ("n = 0", "chat", {"model": "fake", "messages": MSG, "n": 0}, 400, INVALID, "n", None),
    ("temperature too high", "chat", {"model": "fake", "messages": MSG, "temperature": 2.5}, 400,
     INVALID, "temperature", None),
    ("temperature a string", "chat", {"model": "fake", "messages": MSG, "temperature": "hot"},
     400, INVALID, "temperature", None),
    ("top_p zero", "chat", {"model": "fake", "messages": MSG, "top_p": 0}, 400, INVALID, "top_p",
     None),
    ("top_k negative", "chat", {"model": "fake", "messages": MSG, "top_k": -1}, 400, INVALID,
     "top_k", None),
    ("presence_penalty", "chat", {"model": "fake", "messages": MSG, "presence_penalty": 3}, 400,
     INVALID, "presence_penalty", None),
    ("frequency_penalty", "chat", {"model": "fake", "messages": MSG, "frequency_penalty": -2.1},
     400, INVALID, "frequency_penalty", None),
    ("repeat_penalty zero", "chat", {"model": "fake", "messages": MSG, "repeat_penalty": 0}, 400,
     INVALID, "repeat_penalty", None),
    ("logit_bias key", "chat", {"model": "fake", "messages": MSG, "logit_bias": {"x": 1}}, 400,
     INVALID, "logit_bias", None),
    ("logit_bias value", "chat", {"model": "fake", "messages": MSG, "logit_bias": {"5": 101}},
     400, INVALID, "logit_bias", None),
    ("seed a float", "chat", {"model": "fake", "messages": MSG, "seed": 1.5}, 400, INVALID, "seed",
     None),
    ("five stops", "chat", {"model": "fake", "messages": MSG, "stop": ["a", "b", "c", "d", "e"]},
     400, INVALID, "stop", None),
    ("stop a number", "chat", {"model": "fake", "messages": MSG, "stop": 3}, 400, INVALID, "stop",
     None),
    ("max_tokens over cap", "chat", {"model": "fake", "messages": MSG, "max_tokens": 5000}, 400,
     INVALID, "max_tokens", None),
    ("max_completion_tokens over cap", "chat", {"model": "fake", "messages": MSG,
     "max_tokens": 5, "max_completion_tokens": 5000}, 400, INVALID, "max_completion_tokens",
     None),
    ("max_tokens zero", "chat", {"model": "fake", "messages": MSG, "max_tokens": 0}, 400, INVALID,
     "max_tokens", None),
    ("logprobs not bool", "chat", {"model": "fake", "messages": MSG, "logprobs": 2}, 400, INVALID,
     "logprobs", None),
    ("top_logprobs without logprobs", "chat", {"model": "fake", "messages": MSG,
     "top_logprobs": 3}, 400, INVALID, "top_logprobs", None),
    ("top_logprobs too many", "chat", {"model": "fake", "messages": MSG, "logprobs": True,
     "top_logprobs": 21}, 400, INVALID, "top_logprobs", None),
    ("stream not bool", "chat", {"model": "fake", "messages": MSG, "stream": "yes"}, 400, INVALID,
     "stream", None),
    ("stream_options without stream", "chat", {"model": "fake", "messages": MSG,
     "stream_options": {"include_usage": True}}, 400, INVALID, "stream_options", None),
    ("stream_options unknown key", "chat", {"model": "fake", "messages": MSG, "stream": True,
     "stream_options": {"everything": True}}, 400, INVALID, "stream_options.everything", None),
    ("prediction type", "chat", {"model": "fake", "messages": MSG,
     "prediction": {"type": "diff", "content": "x"}}, 400, INVALID, "prediction.type", None),
    ("user not a string", "chat", {"model": "fake", "messages": MSG, "user": 5}, 400, INVALID,
     "user", None),
    ("missing prompt", "completion", {"model": "fake"}, 400, INVALID, "prompt", None),
    ("prompt batch", "completion", {"model": "fake", "prompt": ["a", "b"]}, 400, INVALID,
     "prompt", UNSUPPORTED),
    ("prompt token batch", "completion", {"model": "fake", "prompt": [[1, 2], [3]]}, 400, INVALID,
     "prompt", UNSUPPORTED),
    ("prompt an object", "completion", {"model": "fake", "prompt": {"text": "a"}}, 400, INVALID,
     "prompt", None),
    ("completion logprobs too many", "completion", {"model": "fake", "prompt": "a",
     "logprobs": 6}, 400, INVALID, "logprobs", None),
    ("completion logprobs bool", "completion", {"model": "fake", "prompt": "a",
     "logprobs": True}, 400, INVALID, "logprobs", None),
    ("suffix", "completion", {"model": "fake", "prompt": "a", "suffix": "z"}, 400, INVALID,
     "suffix", UNSUPPORTED),
    ("best_of", "completion", {"model": "fake", "prompt": "a", "best_of": 3}, 400, INVALID,
     "best_of", UNSUPPORTED),
    ("messages on completions", "completion", {"model": "fake", "prompt": "a", "messages": MSG},
     400, INVALID, "messages", None),
    ("echo not bool", "completion", {"model": "fake", "prompt": "a", "echo": 1}, 400, INVALID,
     "echo", None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "body", "status", "kind", "param", "code"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
async def test_bad_request(
    gw: Running,
    backend: FakeBackend,
    path: str,
    body: dict[str, Any],
    status: int,
    kind: str,
    param: str | None,
    code: str | None,
) -> None:
    url = "/v1/chat/completions" if path == "chat" else "/v1/completions"
    response = await gw.post(url, body)
    assert response.status == status
    error = (await response.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == (kind, param, code)
    assert error["message"]
    assert backend.started == 0


@pytest.mark.parametrize(
    ("raw", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"[1, 2]", "application/json"),
        (b'"a string"', "application/json"),
        (b"", "application/json"),
        (b'{"model": NaN}', "application/json"),
        (b"\xff\xfe", "application/json"),
    ],
)
async def test_body_that_is_not_a_json_object(gw: Running, raw: bytes, content_type: str) -> None:
    headers = {**gw.auth, "Content-Type": content_type}
    response = await gw.session.post(f"{gw.url}/v1/chat/completions", data=raw, headers=headers)
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["type"] == INVALID and error["param"] is None


async def test_unknown_url_and_method_are_openai_errors(gw: Running) -> None:
    missing = await gw.get("/v1/engines")
    assert missing.status == 404
    assert (await missing.json())["error"]["type"] == INVALID
    wrong = await gw.get("/v1/chat/completions")
    assert wrong.status == 405
    assert (await wrong.json())["error"]["code"] == "method_not_allowed"
    assert wrong.headers["Allow"] == "POST"


async def test_openai_client_raises_on_bad_request(gw: Running) -> None:
    client = gw.openai()
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="fake", messages=MSG, modalities=["audio"])  # type: ignore[arg-type]
    assert info.value.code == UNSUPPORTED
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="fake", messages=MSG, n=9)  # type: ignore[arg-type]
    assert info.value.param == "n"
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="nope", messages=MSG)  # type: ignore[arg-type]


@pytest.mark.parametrize("stream", [False, True])
async def test_backend_error_before_first_event_keeps_its_status(
    start: Start, stream: bool
) -> None:
    backend = FakeBackend(fail_at=0, error=ContextLengthError("too long", param="messages"))
    gw = await start({"fake": backend})
    response = await gw.post(
        "/v1/chat/completions", {"model": "fake", "messages": MSG, "stream": stream}
    )
    assert response.status == 400
    assert response.headers["Content-Type"].startswith("application/json")
    error = (await response.json())["error"]
    assert (error["code"], error["param"]) == ("context_length_exceeded", "messages")
    assert backend.closed == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_unknown_exception_is_a_generic_500(start: Start, stream: bool) -> None:
    backend = FakeBackend(fail_at=0, error=RuntimeError("secret internals"))
    gw = await start({"fake": backend})
    response = await gw.post(
        "/v1/chat/completions", {"model": "fake", "messages": MSG, "stream": stream}
    )
    assert response.status == 500
    error = (await response.json())["error"]
    assert error["type"] == "server_error"
    assert "secret" not in error["message"]


@pytest.mark.parametrize(
    ("error", "code"),
    [(UnavailableError("target engine went away"), "service_unavailable"),
     (RuntimeError("secret internals"), None)],
)  # fmt: skip
async def test_error_after_stream_started_is_an_sse_error_without_done(
    start: Start, error: BaseException, code: str | None
) -> None:
    backend = FakeBackend(fail_at=2, error=error)
    gw = await start({"fake": backend})
    body = {"model": "fake", "messages": MSG, "stream": True}
    response = await gw.post("/v1/chat/completions", body)
    assert response.status == 200
    raw = (await response.read()).decode()
    frames = [frame.removeprefix("data: ") for frame in raw.split("\n\n") if frame]
    assert "[DONE]" not in frames
    assert [json.loads(f)["choices"][0]["delta"] for f in frames[:3]] == [
        {"role": "assistant", "content": ""},
        {"content": "Hel"},
        {"content": "lo"},
    ]
    last = json.loads(frames[-1])
    assert last["error"]["code"] == code
    assert "secret" not in last["error"]["message"]
    assert backend.closed == 1


async def test_openai_client_sees_a_mid_stream_error(start: Start) -> None:
    backend = FakeBackend(fail_at=1, error=UnavailableError("target engine went away"))
    gw = await start({"fake": backend})
    stream = await gw.openai().chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(openai.APIError, match="target engine went away"):
        async for _ in stream:
            pass


async def test_backend_that_ends_without_finished_is_a_500(start: Start) -> None:
    backend = FakeBackend(events=[])
    gw = await start({"fake": backend})
    response = await gw.post("/v1/chat/completions", {"model": "fake", "messages": MSG})
    assert response.status == 500
    assert isinstance(response, aiohttp.ClientResponse)
