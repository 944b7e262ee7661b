"""Tools end to end: a gateway over a real Qwen2.5-Coder-1.5B engine (its template takes
tools), called with the real ``openai`` client: a required call whose arguments validate
against the tool's schema, a text answer after a ``tool`` result, and streamed tool-call
deltas that assemble to the non-streamed call."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import jsonschema
import openai
import pytest
from support import live_gateway

pytestmark = [pytest.mark.engine, pytest.mark.slow]

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather of a city",
            "parameters": SCHEMA,
        },
    }
]
ASK = [{"role": "user", "content": "What is the weather in Paris, in celsius?"}]


@pytest.fixture
async def client(qwen_target_path: Path) -> AsyncIterator[openai.AsyncOpenAI]:
    async with live_gateway("qwen", qwen_target_path, ctx_size=2048) as url:
        c = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        try:
            yield c
        finally:
            await c.close()


async def test_required_call_validates_against_the_schema(client: openai.AsyncOpenAI) -> None:
    r = await client.chat.completions.create(
        model="qwen",
        messages=ASK,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="required",
        temperature=0,
        max_tokens=96,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert len(calls) >= 1
    call = calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert call.id.startswith("call_")
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, SCHEMA)
    assert "paris" in args["city"].lower()


async def test_a_tool_result_gets_a_text_answer(client: openai.AsyncOpenAI) -> None:
    # Without a system prompt Qwen2.5-Coder-1.5B (greedy) echoes the call as text after the
    # tool result, grammar or not; with one it answers in words, tools still offered (auto).
    system = {
        "role": "system",
        "content": "You are a helpful assistant. When a tool result arrives, answer the "
        "user's question in one sentence using it.",
    }
    history = [
        system,
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "arguments": json.dumps({"city": "Paris", "unit": "celsius"}),
                    },
                }
            ],
        },
        {
            "role": "tool",
            "tool_call_id": "call_1",
            "content": '{"temperature": 21, "sky": "sunny"}',
        },
    ]
    r = await client.chat.completions.create(
        model="qwen",
        messages=history,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=64,
    )
    choice = r.choices[0]
    assert not choice.message.tool_calls
    assert choice.finish_reason in ("stop", "length")
    assert "21" in (choice.message.content or "")


async def test_streamed_call_assembles_to_the_same_call(client: openai.AsyncOpenAI) -> None:
    kw = {
        "model": "qwen",
        "messages": ASK,
        "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "temperature": 0,
        "max_tokens": 96,
    }
    whole = await client.chat.completions.create(**kw)  # type: ignore[call-overload]
    expected = whole.choices[0].message.tool_calls
    assert expected and len(expected) == 1
    stream = await client.chat.completions.create(stream=True, **kw)  # type: ignore[call-overload]
    name, args, ids, finish = "", "", set(), None
    async for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        for tc in delta.tool_calls or []:
            assert tc.index == 0
            if tc.id:
                ids.add(tc.id)
                name += tc.function.name or ""
            args += (tc.function.arguments or "") if tc.function else ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert len(ids) == 1 and next(iter(ids)).startswith("call_")
    assert name == expected[0].function.name == "get_weather"
    assert json.loads(args) == json.loads(expected[0].function.arguments)
    jsonschema.validate(json.loads(args), SCHEMA)


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "languages": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    },
    "required": ["name", "age", "languages"],
    "additionalProperties": False,
}
BIO = [
    {
        "role": "user",
        "content": "Extract the person: Ada is a 36 year old engineer who writes Python and C.",
    }
]


async def test_json_schema_output_validates_streamed_and_not(client: openai.AsyncOpenAI) -> None:
    kw = {
        "model": "qwen",
        "messages": BIO,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": PERSON, "strict": True},
        },
        "temperature": 0,
        "max_tokens": 96,
    }
    r = await client.chat.completions.create(**kw)  # type: ignore[call-overload]
    choice = r.choices[0]
    assert choice.finish_reason == "stop"
    value = json.loads(choice.message.content or "")
    jsonschema.validate(value, PERSON)
    assert value["name"] == "Ada" and value["age"] == 36
    assert r.tightwad["forced_drafted"] > 0  # type: ignore[attr-defined]
    stream = await client.chat.completions.create(stream=True, **kw)  # type: ignore[call-overload]
    text = ""
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
    assert json.loads(text) == value


async def test_json_object_output_parses(client: openai.AsyncOpenAI) -> None:
    r = await client.chat.completions.create(
        model="qwen",
        messages=[{"role": "user", "content": "Give the capital of France as JSON."}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=48,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(json.loads(choice.message.content or ""), dict)
