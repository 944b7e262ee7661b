"""``POST /v1/responses`` over HTTP on a scripted Backend, called with the real ``openai``
client and raw aiohttp: plain and streamed answers, function calls, errors before and after
the first byte, and that the generator is always closed."""

from __future__ import annotations

import json

import openai
import pytest

from tightwad.errors import UnavailableError
from tightwad.gateway.types import Finished, GenerationStats, TextDelta, Usage

from .conftest import Running, Start
from .fakes import FakeBackend, script

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]


async def test_plain_response_with_the_openai_client(gw: Running, backend: FakeBackend) -> None:
    client = gw.openai()
    r = await client.responses.create(
        model="fake", input="Say hello", instructions="Be nice.", max_output_tokens=32
    )
    assert r.object == "response" and r.status == "completed"
    assert r.id.startswith("resp_") and r.model == "fake"
    assert r.output_text == "Hello!"
    assert r.usage is not None
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (7, 3, 10)
    assert r.instructions == "Be nice." and r.max_output_tokens == 32
    assert r.model_extra is not None and r.model_extra["tightwad"]["accepted"] == 4
    sent = backend.requests[0]
    assert [(m.role, m.content) for m in sent.messages or ()] == [
        ("system", "Be nice."),
        ("user", "Say hello"),
    ]
    assert sent.max_tokens == 32
    assert backend.closed == 1


async def test_streamed_response_events_in_order(gw: Running) -> None:
    client = gw.openai()
    stream = await client.responses.create(model="fake", input="hi", stream=True)
    events = [event async for event in stream]
    kinds = [e.type for e in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Hello!"
    done = events[-1]
    assert done.type == "response.completed"
    assert done.response.output_text == "Hello!" and done.response.usage is not None


async def test_stream_framing_names_each_event_and_has_no_done(gw: Running) -> None:
    r = await gw.post("/v1/responses", {"model": "fake", "input": "hi", "stream": True})
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    text = await r.text()
    frames = [f for f in text.split("\n\n") if f]
    assert "[DONE]" not in text
    for frame in frames:
        event_line, data_line = frame.split("\n")
        assert event_line.startswith("event: ") and data_line.startswith("data: ")
        assert json.loads(data_line[6:])["type"] == event_line[7:]


async def test_stream_and_whole_agree(start: Start) -> None:
    gw = await start({"fake": FakeBackend(script(["a", "b", "c"]))})
    client = gw.openai()
    whole = await client.responses.create(model="fake", input="x")
    stream = await client.responses.create(model="fake", input="x", stream=True)
    final = [e async for e in stream][-1]
    a, b = whole.model_dump(), final.response.model_dump()  # type: ignore[union-attr]
    for key in ("id", "created_at", "completed_at"):
        a.pop(key), b.pop(key)
    for item in a["output"] + b["output"]:
        item.pop("id")
    assert a == b


async def test_function_calls_as_items(start: Start) -> None:
    backend = FakeBackend(script(["I'll check. ", CALL], finish="stop"))
    gw = await start({"fake": backend})
    client = gw.openai()
    r = await client.responses.create(model="fake", input="weather?", tools=TOOLS)  # type: ignore[arg-type]
    assert [item.type for item in r.output] == ["message", "function_call"]
    call = r.output[1]
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.call_id.startswith("call_") and json.loads(call.arguments) == {"city": "Paris"}
    assert r.status == "completed"
    stream = await client.responses.create(
        model="fake",
        input="weather?",
        tools=TOOLS,  # type: ignore[arg-type]
        stream=True,
    )
    events = [e async for e in stream]
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert json.loads(args) == json.loads(done.arguments) == {"city": "Paris"}
    sent = backend.requests[0]
    assert sent.tools[0].name == "get_weather" and sent.tool_choice.mode == "auto"


async def test_a_tool_result_round_trip_reaches_the_backend(
    gw: Running, backend: FakeBackend
) -> None:
    client = gw.openai()
    await client.responses.create(
        model="fake",
        tools=TOOLS,  # type: ignore[arg-type]
        input=[
            {"role": "user", "content": "weather?"},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        ],
    )
    m = backend.requests[0].messages or ()
    assert [x.role for x in m] == ["user", "assistant", "tool"]
    assert m[1].tool_calls[0].id == "c1" and m[2].tool_call_id == "c1"


async def test_length_is_incomplete(start: Start) -> None:
    gw = await start({"fake": FakeBackend(script(["a", "b"], finish="length"))})
    r = await gw.openai().responses.create(model="fake", input="x")
    assert r.status == "incomplete"
    assert r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id", "stateless"),
        ({"background": True}, "background", "not supported"),
        ({"input": [{"type": "computer_call_output", "call_id": "x"}]}, "input[0].type", "item 0"),
        ({"max_output_tokens": 4}, "max_output_tokens", ">= 16"),
        ({"frobnicate": 1}, "frobnicate", "Unrecognized"),
    ],
)
async def test_bad_requests_are_openai_400s(
    gw: Running, backend: FakeBackend, extra: dict[str, object], param: str, words: str
) -> None:
    r = await gw.post("/v1/responses", {"model": "fake", "input": "x", **extra})
    assert r.status == 400
    error = (await r.json())["error"]
    assert error["param"] == param and words in error["message"]
    assert error["type"] == "invalid_request_error"
    assert backend.started == 0


async def test_unknown_model_is_404_and_errors_before_streaming_are_http(start: Start) -> None:
    gw = await start({"fake": FakeBackend(fail_at=0, error=UnavailableError("engine down"))})
    client = gw.openai()
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(model="nope", input="x")
    with pytest.raises(openai.APIStatusError) as info:
        await client.responses.create(model="fake", input="x", stream=True)
    assert info.value.status_code == 503


async def test_failure_mid_stream_is_error_then_failed(start: Start) -> None:
    backend = FakeBackend(fail_at=1, error=UnavailableError("engine down"))
    gw = await start({"fake": backend})
    stream = await gw.openai().responses.create(model="fake", input="x", stream=True)
    events = [e async for e in stream]
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    assert "engine down" in events[-2].message  # type: ignore[union-attr]
    assert events[-1].response.status == "failed"  # type: ignore[union-attr]
    assert backend.closed == 1


async def test_logprobs_when_included(start: Start) -> None:
    gw = await start({"fake": FakeBackend(script(["Hi", "!"], with_logprobs=True))})
    r = await gw.openai().responses.create(
        model="fake", input="x", include=["message.output_text.logprobs"], top_logprobs=1
    )
    part = r.output[0].content[0]  # type: ignore[union-attr]
    assert [lp.token for lp in part.logprobs] == ["Hi", "!"]


async def test_empty_answer_still_has_a_message(start: Start) -> None:
    done = Finished("stop", Usage(3, 0), GenerationStats())
    gw = await start({"fake": FakeBackend([TextDelta(""), done])})
    r = await gw.openai().responses.create(model="fake", input="x")
    assert r.output_text == "" and r.output[0].type == "message"
