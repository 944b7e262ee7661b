"""The Responses translation layer, pure: request bodies into the chat request, the pipeline's
events into Responses events and objects, each event validated against the pinned ``openai``
SDK's own types."""

from __future__ import annotations

import json
import typing
from typing import Any

import pytest
from openai.types.responses import Response, ResponseStreamEvent

from tightwad.errors import InvalidRequestError, UnsupportedParameterError
from tightwad.gateway.openai_schema import Limits
from tightwad.gateway.responses.render import ResponseAssembler
from tightwad.gateway.responses.request import parse_responses
from tightwad.gateway.types import (
    Finished,
    GenerationStats,
    LogprobEntry,
    TextDelta,
    ToolCallDelta,
    Usage,
)

LIMITS = Limits(max_tokens_cap=256, default_max_tokens=64, default_temperature=1.0)
# Each event type's model in the pinned SDK (its union has no discriminator).
EVENTS = {
    typing.get_args(model.model_fields["type"].annotation)[0]: model
    for model in typing.get_args(typing.get_args(ResponseStreamEvent)[0])
}
TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather of a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def parse(**body: Any) -> Any:
    return parse_responses({"model": "m", "input": "hi", **body}, LIMITS, "rid")


# ---------------------------------------------------------------------------------------------
# Requests.


def test_text_input_and_instructions_become_system_then_user() -> None:
    r = parse(instructions="Be brief.", input="Hello")
    assert [(m.role, m.content) for m in r.chat.messages] == [
        ("system", "Be brief."),
        ("user", "Hello"),
    ]
    assert r.chat.max_tokens == 64 and r.chat.sampling.temperature == 1.0
    assert r.echo["instructions"] == "Be brief." and r.echo["store"] is False
    assert r.stream is False


def test_items_map_to_a_chat_with_calls_and_results() -> None:
    r = parse(
        input=[
            {"role": "developer", "content": "sys"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "w?"}]},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Let me", "annotations": []}],
            },
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"a":1}'},
            {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "one"},
            {"type": "function_call_output", "call_id": "c2", "output": "two"},
        ]
    )
    m = r.chat.messages
    assert [x.role for x in m] == ["system", "user", "assistant", "tool", "tool"]
    assert m[2].content == "Let me" and [c.id for c in m[2].tool_calls] == ["c1", "c2"]
    assert (m[3].tool_call_id, m[3].content) == ("c1", "one")


def test_a_call_without_a_message_before_it_starts_an_assistant_turn() -> None:
    r = parse(
        input=[
            {"role": "user", "content": "x"},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "ok"},
        ]
    )
    assert [(x.role, x.content) for x in r.chat.messages][1] == ("assistant", "")


def test_tools_choice_and_format_are_checked_like_chat() -> None:
    r = parse(tools=[TOOL], tool_choice={"type": "function", "name": "get_weather"})
    assert r.chat.tools[0].name == "get_weather"
    assert (r.chat.tool_choice.mode, r.chat.tool_choice.name) == ("function", "get_weather")
    assert r.echo["tools"][0]["name"] == "get_weather"
    assert r.echo["tool_choice"] == {"type": "function", "name": "get_weather"}
    assert parse(tools=[TOOL]).chat.tool_choice.mode == "auto"
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    fmt = {"type": "json_schema", "name": "N", "schema": schema, "strict": True}
    r = parse(text={"format": fmt})
    assert r.chat.grammar is not None and json.loads(r.chat.grammar.source) == schema
    assert r.echo["text"]["format"] == fmt
    assert parse(text={"format": {"type": "json_object"}}).chat.grammar is not None
    assert parse(text={"format": {"type": "text"}}).chat.grammar is None


def test_sampling_limits_logprobs_and_extensions() -> None:
    r = parse(
        temperature=0,
        top_p=0.5,
        max_output_tokens=100,
        top_logprobs=2,
        seed=7,
        prediction={"type": "content", "content": "guess"},
        max_tool_calls=1,
        tools=[TOOL],
    )
    c = r.chat
    assert (c.sampling.temperature, c.sampling.top_p, c.max_tokens) == (0.0, 0.5, 100)
    assert (c.logprobs, c.top_logprobs, c.seed, c.prediction) == (True, 2, 7, "guess")
    assert c.parallel_tool_calls is False
    assert parse(include=["message.output_text.logprobs"]).chat.logprobs is True


def test_accepted_and_ignored_fields_pass() -> None:
    r = parse(
        store=True,
        metadata={"k": "v"},
        user="u",
        safety_identifier="s",
        prompt_cache_key="p",
        service_tier="auto",
        reasoning={"effort": "low"},
        truncation="disabled",
        background=False,
        previous_response_id=None,
        stream=True,
        stream_options={"include_obfuscation": False},
    )
    assert r.stream and r.echo["metadata"] == {"k": "v"} and r.echo["store"] is False


UNS, BAD = UnsupportedParameterError, InvalidRequestError


@pytest.mark.parametrize(
    ("body", "error", "param", "words"),
    [
        ({"previous_response_id": "resp_1"}, UNS, "previous_response_id", "stateless"),
        ({"background": True}, UNS, "background", "not supported"),
        ({"conversation": "conv_1"}, UNS, "conversation", "stateless"),
        ({"truncation": "auto"}, UNS, "truncation", "auto"),
        ({"bogus": 1}, BAD, "bogus", "Unrecognized"),
        ({"input": [{"role": "user", "content": "a"}, {"type": "reasoning", "summary": []}]},
         UNS, "input[1].type", "Input item 1"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, UNS,
         "input[0].type", "Input item 0"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]},
         UNS, "input[0].content[0].type", "input_image"),
        ({"input": [{"role": "user", "content": [{"type": "output_text", "text": "a"}]}]},
         BAD, "input[0].content[0].type", "input_text"),
        ({"input": [{"role": "tool", "content": "a"}]}, BAD, "input[0].role", "role"),
        ({"input": [{"type": "function_call_output", "call_id": "nope", "output": "x"}]},
         BAD, "input[0].tool_call_id", "answers no tool call"),
        ({"input": []}, BAD, "input", "empty"),
        ({"input": None}, BAD, "input", "input"),
        ({"max_output_tokens": 8}, BAD, "max_output_tokens", ">= 16"),
        ({"max_output_tokens": 10_000}, BAD, "max_output_tokens", "at most 256"),
        ({"temperature": 3}, BAD, "temperature", "outside"),
        ({"tools": [{"type": "web_search"}]}, UNS, "tools[0].type", "function"),
        ({"tools": [{**TOOL, "name": "bad name"}]}, BAD, "tools[0].name", "letters"),
        ({"tools": [{**TOOL, "parameters": {"type": 5}}]}, BAD,
         "tools[0].parameters.type", "JSON Schema"),
        ({"tools": [TOOL], "tool_choice": {"type": "function", "name": "other"}},
         BAD, "tool_choice.name", "not one of the tools"),
        ({"tool_choice": "required"}, BAD, "tool_choice", "no tools"),
        ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "nope"}}}},
         BAD, "text.format.schema.type", "JSON Schema"),
        ({"text": {"format": {"type": "yaml"}}}, BAD, "text.format.type", "yaml"),
        ({"model": ""}, BAD, "model", "model"),
    ],
)  # fmt: skip
def test_bad_requests_are_refused_naming_the_field(
    body: dict[str, Any], error: type[Exception], param: str, words: str
) -> None:
    with pytest.raises(error) as info:
        parse(**body)
    assert isinstance(info.value, InvalidRequestError)
    assert info.value.param == param
    assert words in info.value.message


# ---------------------------------------------------------------------------------------------
# Events and objects.

STATS = GenerationStats(mode="ngram", rounds=2, drafted=5, accepted=3, cached_prompt_tokens=4)


def finished(reason: str = "stop") -> Finished:
    return Finished(reason, Usage(prompt_tokens=11, completion_tokens=6), STATS)  # type: ignore[arg-type]


def assembler() -> ResponseAssembler:
    ids = iter(range(100))
    echo = parse(tools=[TOOL]).echo
    return ResponseAssembler(
        "resp_x", "m", echo, created_at=1, make_id=lambda p: f"{p}_{next(ids)}"
    )


def run(events: list[Any]) -> tuple[list[dict[str, Any]], ResponseAssembler]:
    a = assembler()
    out = a.start()
    for e in events:
        out += a.finish(e) if isinstance(e, Finished) else a.feed(e)
    for event in out:
        EVENTS[event["type"]].model_validate(event)  # the pinned SDK's own shape
    Response.model_validate(a.response)
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    return out, a


def test_text_stream_follows_openais_order() -> None:
    out, a = run([TextDelta("Hel"), TextDelta(""), TextDelta("lo"), finished()])
    assert [e["type"] for e in out] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert out[0]["response"]["status"] == "in_progress" and out[0]["response"]["output"] == []
    assert out[6]["text"] == "Hello"
    r = a.response
    assert r["status"] == "completed" and r["incomplete_details"] is None
    assert r["output"] == [out[8]["item"]]
    assert r["output"][0]["content"][0]["text"] == "Hello"
    assert r["usage"] == {
        "input_tokens": 11,
        "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 7},
        "output_tokens": 6,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 17,
    }
    assert r["tightwad"]["accepted"] == 3 and out[-1]["response"] == r
    assert Response.model_validate(r).output_text == "Hello"


def test_text_then_calls_are_separate_items_in_order() -> None:
    out, a = run(
        [
            TextDelta("Sure."),
            ToolCallDelta(0, "call_a", "get_weather"),
            ToolCallDelta(0, arguments='{"city":'),
            ToolCallDelta(0, arguments='"Paris"}'),
            ToolCallDelta(1, "call_b", "get_weather"),
            ToolCallDelta(1, arguments='{"city":"Rome"}'),
            finished("tool_calls"),
        ]
    )
    kinds = [e["type"] for e in out]
    assert kinds[2:] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    added = out[8]
    assert added["output_index"] == 1 and added["item"]["arguments"] == ""
    assert added["item"]["status"] == "in_progress"
    calls = a.response["output"][1:]
    assert [(c["type"], c["call_id"], c["id"]) for c in calls] == [
        ("function_call", "call_a", "fc_1"),
        ("function_call", "call_b", "fc_2"),
    ]
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}
    assert out[11]["arguments"] == calls[0]["arguments"]
    assert a.response["status"] == "completed"


def test_length_ends_incomplete_and_empty_output_still_has_a_message() -> None:
    out, a = run([TextDelta("cut"), finished("length")])
    assert out[-1]["type"] == "response.incomplete"
    assert a.response["status"] == "incomplete"
    assert a.response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert a.response["output"][0]["status"] == "incomplete"
    out, a = run([finished()])
    assert [e["type"] for e in out][2:] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert a.response["output"][0]["content"][0]["text"] == ""


def test_logprobs_ride_on_the_delta_that_carries_their_text() -> None:
    entry = LogprobEntry("Hi", b"Hi", -0.25, (("Hi", b"Hi", -0.25), ("Yo", b"Yo", -2.0)))
    out, a = run([TextDelta("", (1,), (entry,)), TextDelta("Hi", (2,)), finished()])
    delta = next(e for e in out if e["type"] == "response.output_text.delta")
    assert delta["logprobs"][0]["token"] == "Hi"
    assert delta["logprobs"][0]["top_logprobs"][1] == {
        "token": "Yo",
        "logprob": -2.0,
        "bytes": [89, 111],
    }
    assert a.response["output"][0]["content"][0]["logprobs"] == delta["logprobs"]


def test_a_failure_is_an_error_event_then_failed() -> None:
    a = assembler()
    out = a.start() + a.feed(TextDelta("x"))
    out += a.fail({"message": "engine down", "type": "server_error", "code": None})
    assert [e["type"] for e in out[-2:]] == ["error", "response.failed"]
    for event in out:
        EVENTS[event["type"]].model_validate(event)
    assert out[-1]["response"]["status"] == "failed"
    assert out[-1]["response"]["error"]["message"] == "engine down"
