"""apply_tools / shape_tool_calls: the request gets its tools' grammar, the output stream its
calls as OpenAI tool-call deltas, whatever the chunk boundaries."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.engine.test_chat_template import gguf_chat_template
from tightwad.engine.chat_template import ChatTemplate
from tightwad.engine.contract import Message
from tightwad.engine.grammar import json_object_spec
from tightwad.errors import InvalidRequestError
from tightwad.gateway.tools.request import Tool, ToolChoice
from tightwad.gateway.tools.shape import (
    PROBE_CALL_ID,
    PROBE_TOOL,
    apply_tools,
    shape_tool_calls,
    syntax_of_rendered,
)
from tightwad.gateway.tools.stream import assemble_tool_calls
from tightwad.gateway.types import (
    ChatMessage,
    Finished,
    GenerationEvent,
    GenerationRequest,
    GenerationStats,
    TextDelta,
    ToolCallDelta,
    Usage,
)

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city"],
}
TOOLS = (Tool("get_weather", "weather", SCHEMA), Tool("now"))


def _request(choice: str = "auto", *, parallel: bool = True, **kw: object) -> GenerationRequest:
    mode, _, name = choice.partition(":")
    return GenerationRequest(
        model="m",
        messages=(ChatMessage("user", "hi"),),
        tools=TOOLS,
        tool_choice=ToolChoice(mode, name),  # type: ignore[arg-type]
        parallel_tool_calls=parallel,
        **kw,  # type: ignore[arg-type]
    )


async def _events(pieces: list[str], reason: str = "stop") -> AsyncIterator[GenerationEvent]:
    for p in pieces:
        yield TextDelta(text=p, token_ids=(1,))
    yield Finished(reason, Usage(3, len(pieces)), GenerationStats())  # type: ignore[arg-type]


async def _shape(pieces: list[str], request: GenerationRequest) -> list[GenerationEvent]:
    ids = iter(f"call_{i}" for i in range(100))
    return [e async for e in shape_tool_calls(_events(pieces), request, make_id=lambda: next(ids))]


def _split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in itertools.pairwise(points)]


def test_apply_tools_sets_the_grammar_only_when_tools_are_active() -> None:
    for choice in ("auto", "required", "function:now"):
        shaped = apply_tools(_request(choice))
        assert shaped.grammar is not None and shaped.grammar.kind == "lark"
        assert shaped.tools == TOOLS  # everything else is kept
    assert apply_tools(_request("none")).grammar is None
    plain = GenerationRequest(model="m", messages=(ChatMessage("user", "hi"),))
    assert apply_tools(plain) is plain
    # A response_format grammar decides the output's shape.
    fmt = json_object_spec()
    assert apply_tools(_request("required", grammar=fmt)).grammar == fmt
    with pytest.raises(InvalidRequestError, match="cannot take tools"):
        apply_tools(_request("auto"), syntax="")


async def test_no_active_tools_pass_everything_through() -> None:
    text = '<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>'
    out = await _shape([text], _request("none"))
    assert [e.text for e in out if isinstance(e, TextDelta)] == [text]
    assert isinstance(out[-1], Finished) and out[-1].finish_reason == "stop"


CALL = (
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>'
)


@given(
    before=st.sampled_from(["", "Let me look.\n", "a < b, so "]),
    n_calls=st.integers(1, 3),
    cuts=st.lists(st.integers(0, 400), max_size=12),
)
@settings(max_examples=60, deadline=None)
async def test_any_split_gives_the_same_calls(before: str, n_calls: int, cuts: list[int]) -> None:
    text = before + "\n".join([CALL] * n_calls)
    out = await _shape(_split(text, cuts), _request("auto"))
    content = "".join(e.text for e in out if isinstance(e, TextDelta))
    calls = assemble_tool_calls([e for e in out if isinstance(e, ToolCallDelta)])
    assert content.strip() == before.strip()
    assert [c["id"] for c in calls] == [f"call_{i}" for i in range(n_calls)]
    for c in calls:
        fn = c["function"]
        assert fn["name"] == "get_weather"  # type: ignore[index]
        jsonschema.validate(json.loads(fn["arguments"]), SCHEMA)  # type: ignore[index]
    fin = out[-1]
    assert isinstance(fin, Finished) and fin.finish_reason == "tool_calls"


async def test_text_before_a_call_streams_before_the_call_ends() -> None:
    pieces = ["Let me look", " it up. <tool", "_call>\n", CALL.removeprefix("<tool_call>\n")]
    ids = iter(["call_a"])
    seen: list[str] = []
    async for e in shape_tool_calls(_events(pieces), _request("auto"), make_id=lambda: next(ids)):
        if isinstance(e, TextDelta) and e.text:
            seen.append(e.text)
        if isinstance(e, ToolCallDelta):
            break
    # "Let me look" came out at once, " it up. " before the call's end; "<tool" was held.
    assert seen[:2] == ["Let me look", " it up. "]


async def test_not_parallel_keeps_the_first_call_and_length_stays_length() -> None:
    other = '<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>'
    out = await _shape([CALL + "\n" + other], _request("auto", parallel=False))
    calls = assemble_tool_calls([e for e in out if isinstance(e, ToolCallDelta)])
    assert [c["function"]["name"] for c in calls] == ["get_weather"]  # type: ignore[index]
    ids = iter(["call_x"])
    cut = [
        e
        async for e in shape_tool_calls(
            _events([CALL], "length"), _request("required"), make_id=lambda: next(ids)
        )
    ]
    assert isinstance(cut[-1], Finished) and cut[-1].finish_reason == "length"


async def test_a_text_answer_stays_text() -> None:
    text = "It is sunny. Use <tool_call> tags? No."
    out = await _shape(_split(text, [5, 17, 20]), _request("auto"))
    assert "".join(e.text for e in out if isinstance(e, TextDelta)) == text
    assert not any(isinstance(e, ToolCallDelta) for e in out)
    assert isinstance(out[-1], Finished) and out[-1].finish_reason == "stop"


def test_probe_conversation_names_qwens_syntax(qwen_target_path: Path) -> None:
    template = ChatTemplate(
        gguf_chat_template(qwen_target_path), bos_token="", eos_token="<|im_end|>"
    )
    call = {
        "id": PROBE_CALL_ID,
        "type": "function",
        "function": {"name": "tightwad_probe", "arguments": '{"x": 1}'},
    }
    msgs = [Message("user", "x"), Message("assistant", "", tool_calls_json=json.dumps([call]))]
    assert syntax_of_rendered(template.render(msgs, tools=[PROBE_TOOL])) == "hermes"
    assert syntax_of_rendered(template.render(msgs[:1])) is None


async def test_hermes_arguments_stream_while_they_are_generated() -> None:
    """The id and name come once the name is known, argument pieces as they arrive, before
    the block closes."""
    pieces = [
        "<tool_call>\n",
        '{"name": "get_weather", "argu',
        'ments": {"city": "Pa',
        'ris \\"}\\" x", "days": 2',
        "}}\n</tool_call>",
    ]

    async def events() -> AsyncIterator[GenerationEvent]:
        for p in pieces:
            yield TextDelta(text=p, token_ids=(1,))
            seen.append(p)
        yield Finished("stop", Usage(3, 5), GenerationStats())

    seen: list[str] = []
    got: list[tuple[int, ToolCallDelta]] = []
    ids = iter(["call_live"])
    async for e in shape_tool_calls(events(), _request("auto"), make_id=lambda: next(ids)):
        if isinstance(e, ToolCallDelta):
            got.append((len(seen), e))
    first = got[0][1]
    assert (first.id, first.name, first.arguments) == ("call_live", "get_weather", "")
    # (len(seen) is the number of pieces before the one being handled.) The head is known
    # with the third piece, whose argument text comes at once; then one piece each.
    assert got[0][0] == 2
    assert [n for n, _ in got[1:]] == [2, 3, 4]
    args = "".join(d.arguments for _, d in got)
    assert json.loads(args) == {"city": 'Paris "}" x', "days": 2}


async def test_unusual_blocks_and_cut_calls() -> None:
    # Arguments before the name: parsed whole once the block closes.
    odd = '<tool_call>\n{"arguments": {"city": "Rome"}, "name": "get_weather"}\n</tool_call>'
    out = await _shape(_split(odd, [7, 30, 51]), _request("auto"))
    calls = assemble_tool_calls([e for e in out if isinstance(e, ToolCallDelta)])
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [  # type: ignore[index]
        ("get_weather", {"city": "Rome"})
    ]
    # A call cut by the length limit: what was generated, and finish_reason length.
    ids = iter(["call_cut"])
    cut = [
        e
        async for e in shape_tool_calls(
            _events([CALL[:60]], "length"), _request("auto"), make_id=lambda: next(ids)
        )
    ]
    deltas = [e for e in cut if isinstance(e, ToolCallDelta)]
    assert deltas[0].name == "get_weather"
    assert isinstance(cut[-1], Finished) and cut[-1].finish_reason == "length"
