"""What a fuzzer of the published schema found at the edges: wire-format bounds (``int32``
sampling fields and token ids, ``float32`` penalties) and empty prompts are 400s naming the
field, never a 500 from a failed encoding or an engine's refusal without ``param``; token ids
given as integral floats (JSON Schema's integers) are taken; the published schema says the
same as the validator on each of these bodies; a busy engine is a 429 with ``Retry-After``;
a malformed HTTP request is logged as one line, not a traceback."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import jsonschema
import openai
import pytest

from tightwad.errors import OverloadedError
from tightwad.gateway.openapi import openapi_document

from .conftest import Running, Start
from .fakes import FakeBackend

MSG = [{"role": "user", "content": "hi"}]
INT32_MAX = 2**31 - 1
CHAT, COMPLETION = "/v1/chat/completions", "/v1/completions"

# (name, path, body, param)
OUT_OF_BOUNDS: list[tuple[str, str, dict[str, Any], str]] = [
    ("top_k 2^31", CHAT, {"messages": MSG, "top_k": INT32_MAX + 1}, "top_k"),
    ("top_k 2^40", COMPLETION, {"prompt": "a", "top_k": 2**40}, "top_k"),
    ("penalty_last_n 2^31", CHAT, {"messages": MSG, "penalty_last_n": INT32_MAX + 1},
     "penalty_last_n"),
    ("repeat_penalty past float32", COMPLETION, {"prompt": "a", "repeat_penalty": 1e39},
     "repeat_penalty"),
    ("logit_bias id 2^31", CHAT, {"messages": MSG, "logit_bias": {str(INT32_MAX + 1): 1}},
     "logit_bias"),
    ("logit_bias id 2^31 zero-padded", CHAT,
     {"messages": MSG, "logit_bias": {"000" + str(INT32_MAX + 1): 1}}, "logit_bias"),
    ("prompt id 2^31", COMPLETION, {"prompt": [5, INT32_MAX + 1]}, "prompt"),
    ("prompt id 1.5", COMPLETION, {"prompt": [1.5]}, "prompt"),
    ("prompt id negative", COMPLETION, {"prompt": [[-1]]}, "prompt"),
    ("empty prompt", COMPLETION, {"prompt": ""}, "prompt"),
    ("empty prompt in a batch of one", COMPLETION, {"prompt": [""]}, "prompt"),
]  # fmt: skip
ACCEPTED: list[tuple[str, str, dict[str, Any]]] = [
    ("top_k int32 max", CHAT, {"messages": MSG, "top_k": INT32_MAX}),
    ("penalty_last_n int32 max", COMPLETION, {"prompt": "a", "penalty_last_n": INT32_MAX}),
    ("logit_bias id int32 max", CHAT, {"messages": MSG, "logit_bias": {str(INT32_MAX): 1}}),
    ("integral float ids", COMPLETION, {"prompt": [15.0, 3]}),
    ("integral float ids in a batch of one", COMPLETION, {"prompt": [[15.0]]}),
]


def _schema(path: str) -> jsonschema.Draft202012Validator:
    doc = openapi_document()
    name = "ChatCompletionRequest" if path == CHAT else "CompletionRequest"
    return jsonschema.Draft202012Validator(doc["components"]["schemas"][name])


@pytest.mark.parametrize(
    ("path", "body", "param"), [c[1:] for c in OUT_OF_BOUNDS], ids=[c[0] for c in OUT_OF_BOUNDS]
)
async def test_out_of_bounds_is_a_400_naming_the_field(
    gw: Running, backend: FakeBackend, path: str, body: dict[str, Any], param: str
) -> None:
    body = {"model": "fake", **body}
    response = await gw.post(path, body)
    assert response.status == 400
    error = (await response.json())["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert backend.started == 0
    assert not _schema(path).is_valid(body), "the published schema must refuse it too"


@pytest.mark.parametrize(("path", "body"), [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
async def test_values_at_the_bounds_are_served(
    gw: Running, backend: FakeBackend, path: str, body: dict[str, Any]
) -> None:
    body = {"model": "fake", **body}
    _schema(path).validate(body)
    response = await gw.post(path, body)
    assert response.status == 200, await response.text()
    request = backend.requests[0]
    if path == COMPLETION and not isinstance(body["prompt"], str):
        ids = body["prompt"][0] if isinstance(body["prompt"][0], list) else body["prompt"]
        assert request.prompt_tokens == tuple(int(i) for i in ids)
        assert all(type(i) is int for i in request.prompt_tokens or ())


BUSY = "engine fake is busy: 4 live sessions (max 4) and none freed within 10 s; retry later"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_busy_engine_is_a_429_with_retry_after(start: Start, stream: bool) -> None:
    backend = FakeBackend(fail_at=0, error=OverloadedError(BUSY))
    gw = await start({"fake": backend})
    response = await gw.post(CHAT, {"model": "fake", "messages": MSG, "stream": stream})
    assert response.status == 429
    assert response.headers["Retry-After"] == "1"
    assert response.headers["Content-Type"].startswith("application/json")
    error = (await response.json())["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert "busy" in error["message"]
    assert backend.closed == 1


async def test_the_openai_client_sees_a_rate_limit_with_retry_after(start: Start) -> None:
    gw = await start({"fake": FakeBackend(fail_at=0, error=OverloadedError(BUSY))})
    with pytest.raises(openai.RateLimitError) as info:
        await gw.openai().chat.completions.create(model="fake", messages=MSG)  # type: ignore[arg-type]
    assert info.value.response.headers["retry-after"] == "1"
    assert info.value.code == "rate_limit_exceeded"


async def test_a_malformed_http_request_is_logged_in_one_line(
    gw: Running, caplog: pytest.LogCaptureFixture
) -> None:
    host, port = gw.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    raw = "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n\r\n"
    with caplog.at_level(logging.DEBUG, logger="aiohttp.server"):
        writer.write(raw.encode("latin-1"))
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(0.05)
    assert status_line.split(b" ")[1] == b"400"
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert records, "aiohttp logged nothing about the malformed request"
    for record in records:
        assert record.exc_info is None and record.levelno == logging.INFO
        line = record.getMessage()
        assert "\n" not in line and line.startswith("malformed_http_request")
        assert "status=400" in line


def test_the_429_is_documented_with_retry_after() -> None:
    doc = openapi_document()
    assert "Retry-After" in doc["components"]["responses"]["E429"]["headers"]
