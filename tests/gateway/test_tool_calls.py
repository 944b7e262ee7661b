"""Tool calling without a model: request checks, per-family parsers, streaming deltas."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tightwad.errors import InvalidRequestError
from tightwad.gateway.tools.request import (
    check_tool_history,
    parse_tool_calls,
    parse_tool_choice,
    parse_tools,
)
from tightwad.gateway.tools.stream import (
    CallSplitter,
    assemble_tool_calls,
    tool_call_events,
)
from tightwad.gateway.tools.syntax import ParsedCall, syntax_named
from tightwad.gateway.types import (
    Finished,
    GenerationEvent,
    GenerationStats,
    TextDelta,
    ToolCallDelta,
    Usage,
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
FAMILIES = ("hermes", "llama3", "mistral")


# -- request checks --------------------------------------------------------------------------


def test_tools_and_choice_parse() -> None:
    tools = parse_tools([WEATHER])
    assert tools[0].name == "get_weather" and tools[0].parameters["required"] == ["city"]
    assert tools[0].as_openai() == WEATHER
    assert parse_tool_choice(None, tools).mode == "auto"
    assert parse_tool_choice(None, ()).mode == "none"
    assert parse_tool_choice("required", tools).forces_call
    named = parse_tool_choice({"type": "function", "function": {"name": "get_weather"}}, tools)
    assert (named.mode, named.name) == ("function", "get_weather")


@pytest.mark.parametrize(
    ("tools", "choice", "param", "match"),
    [
        ("x", None, "tools", "array"),
        ([{"type": "retrieval"}], None, "tools[0].type", "'function'"),
        (
            [{"type": "function", "function": {"name": "a b"}}],
            None,
            "tools[0].function.name",
            "1-64",
        ),
        ([WEATHER, WEATHER], None, "tools[1].function.name", "twice"),
        (
            [{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}],
            None,
            "tools[0].function.parameters.type",
            "not a valid JSON Schema",
        ),
        ([WEATHER], "always", "tool_choice", "Supported values"),
        (
            [WEATHER],
            {"type": "function", "function": {"name": "get_time"}},
            "tool_choice.function.name",
            "not one of the tools",
        ),
        (None, "required", "tool_choice", "no tools"),
    ],
)
def test_bad_tools_name_the_field(tools: object, choice: object, param: str, match: str) -> None:
    with pytest.raises(InvalidRequestError, match=match) as e:
        parse_tool_choice(choice, parse_tools(tools))
    assert e.value.param == param


def test_history_checks_name_the_message() -> None:
    calls = parse_tool_calls(
        [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}],
        "messages[1].tool_calls",
    )
    assert calls[0].arguments == '{"a":1}'
    with pytest.raises(InvalidRequestError) as e:
        parse_tool_calls(
            [{"id": "c1", "function": {"name": "f", "arguments": "{oops"}}],
            "messages[3].tool_calls",
        )
    assert e.value.param == "messages[3].tool_calls[0].function.arguments"
    check_tool_history([("user", (), ""), ("assistant", calls, ""), ("tool", (), "c1")])
    with pytest.raises(InvalidRequestError) as e:
        check_tool_history([("user", (), ""), ("tool", (), "c1"), ("assistant", calls, "")])
    assert e.value.param == "messages[1].tool_call_id"


def test_template_without_tools_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="cannot take tools") as e:
        syntax_named("", model="smollm")
    assert e.value.param == "tools"


# -- parsers ---------------------------------------------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
_calls = st.lists(
    st.builds(
        ParsedCall,
        name=st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True),
        arguments=st.dictionaries(st.text(max_size=8), _json_values, max_size=4).map(
            lambda d: json.dumps(d, ensure_ascii=False)
        ),
    ),
    min_size=1,
    max_size=3,
)


@pytest.mark.parametrize("family", FAMILIES)
@given(calls=_calls)
@settings(max_examples=60, deadline=None)
def test_written_calls_parse_back(family: str, calls: list[ParsedCall]) -> None:
    syntax = syntax_named(family)
    content, parsed = syntax.parse(syntax.write(calls))
    assert content == ""
    assert [(c.name, json.loads(c.arguments)) for c in parsed] == [
        (c.name, json.loads(c.arguments)) for c in calls
    ]


def test_hermes_text_before_and_several_calls() -> None:
    text = (
        "Let me check both.\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    )
    content, calls = syntax_named("hermes").parse(text)
    assert content == "Let me check both."
    assert [json.loads(c.arguments)["city"] for c in calls] == ["Paris", "Oslo"]
    # malformed: stays text
    bad = '<tool_call>\n{"name": "get_weather", "arguments": {"city": </tool_call>'
    assert syntax_named("hermes").parse(bad) == (bad, [])


def test_llama3_and_mistral_variants() -> None:
    llama = syntax_named("llama3")
    _, calls = llama.parse('<|python_tag|>brave_search.call(query="tightwad llm")')
    assert calls == [ParsedCall("brave_search", '{"query": "tightwad llm"}')]
    _, calls = llama.parse('{"name": "f", "parameters": {"x": 1}}')
    assert calls == [ParsedCall("f", '{"x": 1}')]
    assert llama.parse("The answer is {x}.") == ("The answer is {x}.", [])
    mistral = syntax_named("mistral")
    _, calls = mistral.parse('[TOOL_CALLS]get_weather[ARGS]{"city": "Rome"}')
    assert calls == [ParsedCall("get_weather", '{"city": "Rome"}')]
    _, calls = mistral.parse('[{"name": "f", "arguments": {}}]')  # marker token not rendered
    assert calls == [ParsedCall("f", "{}")]


# -- streaming -------------------------------------------------------------------------------


async def _events(pieces: list[str]) -> AsyncIterator[GenerationEvent]:
    for p in pieces:
        yield TextDelta(text=p)
    yield Finished("stop", Usage(3, len(pieces)), GenerationStats())


def _chunks(text: str, sizes: list[int]) -> list[str]:
    out, pos, i = [], 0, 0
    while pos < len(text):
        n = sizes[i % len(sizes)]
        out.append(text[pos : pos + n])
        pos, i = pos + n, i + 1
    return out


@pytest.mark.parametrize("family", FAMILIES)
@given(
    calls=_calls,
    before=st.sampled_from(["", "Sure. ", "I will look that up.\n"]),
    sizes=st.lists(st.integers(1, 9), min_size=1, max_size=5),
)
@settings(max_examples=40, deadline=None)
async def test_streamed_deltas_assemble_to_the_answer(
    family: str, calls: list[ParsedCall], before: str, sizes: list[int]
) -> None:
    syntax = syntax_named(family)
    if family != "hermes":
        before = ""  # these families write calls only at the start of the answer
    text = before + syntax.write(calls)
    ids = iter(f"call_{i}" for i in range(100))
    out = [
        e
        async for e in tool_call_events(
            _events(_chunks(text, sizes)), syntax, make_id=lambda: next(ids)
        )
    ]
    content = "".join(e.text for e in out if isinstance(e, TextDelta))
    deltas = [e for e in out if isinstance(e, ToolCallDelta)]
    assert content.strip() == before.strip()
    assembled = assemble_tool_calls(deltas)
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in assembled] == [  # type: ignore[index]
        (c.name, json.loads(c.arguments)) for c in calls
    ]
    assert [c["id"] for c in assembled] == [f"call_{i}" for i in range(len(calls))]
    first = {d.index: d for d in reversed(deltas)}
    assert all(d.id and d.name and d.arguments == "" for d in first.values())
    assert all(not d.id and not d.name for d in deltas if d is not first[d.index])
    fin = out[-1]
    assert isinstance(fin, Finished) and fin.finish_reason == "tool_calls"


async def test_plain_text_passes_through_with_its_finish_reason() -> None:
    syntax = syntax_named("hermes")
    text = "No tools needed: 2 + 2 = 4. <tool_ is not a call"
    out = [e async for e in tool_call_events(_events(_chunks(text, [3])), syntax)]
    assert "".join(e.text for e in out if isinstance(e, TextDelta)) == text
    assert isinstance(out[-1], Finished) and out[-1].finish_reason == "stop"


def test_splitter_holds_back_a_partial_marker() -> None:
    s = CallSplitter(syntax_named("hermes"))
    assert s.feed("Hello <tool") == "Hello "
    assert s.feed("kit") == "<toolkit"
