"""Tools through the model's own chat template: Qwen2.5-Coder-1.5B's template, read from its
GGUF metadata (no model load), renders ``tools``, assistant ``tool_calls`` and ``tool``
messages, and names its tool-call syntax."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import BinaryIO

import pytest

from tightwad.engine.chat_template import ChatTemplate, tool_syntax_of
from tightwad.engine.contract import Message
from tightwad.errors import InvalidRequestError
from tightwad.gateway.tools.syntax import ParsedCall, syntax_named

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather of a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
CALLS = [
    {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
]

# GGUF metadata value types -> struct format of scalars (8 = string, 9 = array).
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}


def _read(f: BinaryIO, fmt: str) -> int:
    size = struct.calcsize("<" + fmt)
    return struct.unpack("<" + fmt, f.read(size))[0]


def _string(f: BinaryIO) -> bytes:
    return f.read(_read(f, "Q"))


def _skip(f: BinaryIO, kind: int) -> None:
    if kind == 8:
        f.seek(_read(f, "Q"), 1)
    elif kind == 9:
        item, n = _read(f, "I"), _read(f, "Q")
        if item in _SCALARS:
            f.seek(n * struct.calcsize("<" + _SCALARS[item]), 1)
        else:
            for _ in range(n):
                _skip(f, item)
    else:
        f.seek(struct.calcsize("<" + _SCALARS[kind]), 1)


def gguf_chat_template(path: Path) -> str:
    """``tokenizer.chat_template`` from a GGUF file's metadata (the format's KV section)."""
    with path.open("rb") as f:
        assert f.read(4) == b"GGUF"
        _read(f, "I")  # version
        _read(f, "Q")  # tensor count
        for _ in range(_read(f, "Q")):
            key, kind = _string(f), _read(f, "I")
            if key == b"tokenizer.chat_template" and kind == 8:
                return _string(f).decode("utf-8")
            _skip(f, kind)
    raise AssertionError(f"{path} has no chat template")


@pytest.fixture(scope="module")
def qwen_template(qwen_target_path: Path) -> ChatTemplate:
    return ChatTemplate(gguf_chat_template(qwen_target_path), bos_token="", eos_token="<|im_end|>")


def test_tools_are_the_templates_tools_variable(qwen_template: ChatTemplate) -> None:
    msgs = [Message("user", "Weather in Paris?")]
    plain = qwen_template.render(msgs)
    text = qwen_template.render(msgs, tools=TOOLS)
    assert "<tools>" not in plain and "get_weather" not in plain
    tools_block = text.split("<tools>\n", 1)[1].split("\n</tools>", 1)[0]
    assert [json.loads(line) for line in tools_block.splitlines()] == TOOLS
    # The old keyword (what engines passed before) renders the same.
    assert qwen_template.render(msgs, extra={"tools": TOOLS}) == text
    assert text.endswith("<|im_start|>assistant\n")


def test_assistant_calls_and_tool_results_render(qwen_template: ChatTemplate) -> None:
    msgs = [
        Message("user", "Weather in Paris?"),
        Message("assistant", "", tool_calls_json=json.dumps(CALLS)),
        Message("tool", '{"temp_c": 21}', tool_call_id="call_1"),
    ]
    text = qwen_template.render(msgs, tools=TOOLS)
    turn = text.split("<|im_start|>assistant\n", 1)[1].split("<|im_end|>", 1)[0]
    # The call is written as the model writes calls, and parses back with its syntax.
    content, calls = syntax_named(qwen_template.tool_syntax or "").parse(turn)
    assert content == ""
    assert calls == [ParsedCall("get_weather", json.dumps({"city": "Paris"}))]
    assert '<tool_response>\n{"temp_c": 21}\n</tool_response>' in text
    assert text.endswith("<|im_start|>assistant\n")


def test_written_calls_match_the_template(qwen_template: ChatTemplate) -> None:
    """What the hermes syntax writes for a call is what the template renders for it."""
    syntax = syntax_named("hermes")
    msgs = [
        Message("user", "hi"),
        Message("assistant", "", tool_calls_json=json.dumps(CALLS)),
    ]
    text = qwen_template.render(msgs, tools=TOOLS, add_generation_prompt=False)
    written = syntax.write([ParsedCall("get_weather", '{"city": "Paris"}')])
    assert f"<|im_start|>assistant\n{written}<|im_end|>" in text


def test_bad_tool_calls_name_the_message(qwen_template: ChatTemplate) -> None:
    with pytest.raises(InvalidRequestError) as err:
        qwen_template.render([Message("user", "x"), Message("assistant", "", tool_calls_json="[{")])
    assert err.value.param == "messages[1].tool_calls"
    bad_args = [{"id": "c", "function": {"name": "f", "arguments": "{nope"}}]
    with pytest.raises(InvalidRequestError) as err:
        qwen_template.render(
            [Message("user", "x"), Message("assistant", "", tool_calls_json=json.dumps(bad_args))]
        )
    assert err.value.param == "messages[1].tool_calls[0].function.arguments"


def test_tool_syntax_is_read_from_the_template(qwen_template: ChatTemplate) -> None:
    assert qwen_template.tool_syntax == "hermes"
    assert tool_syntax_of("{% for m in messages %}{{ m.content }}{% endfor %}") is None
    assert tool_syntax_of("{% if tools %}[AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]") == "mistral"
    assert (
        tool_syntax_of("{% if tools %}<|start_header_id|>ipython{% endif %}<|python_tag|>")
        == "llama3"
    )
    # A template that mentions a call syntax but has no tools variable cannot take tools.
    assert tool_syntax_of("<tool_call>{{ messages[0].content }}") is None
