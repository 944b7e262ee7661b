"""tool_grammar: the sentences of each family's grammar are exactly its valid calls (required,
named) or text-or-calls (auto), checked with llguidance over a byte-level vocabulary."""

from __future__ import annotations

import pytest

from tightwad.engine.grammar import GrammarSpec, GrammarTokenizer
from tightwad.gateway.tools.grammar import tool_grammar
from tightwad.gateway.tools.request import Tool, ToolChoice
from tightwad.gateway.tools.syntax import ParsedCall, syntax_named

EOS = 256
_TOK = GrammarTokenizer(
    [bytes([i]) for i in range(256)] + [b"<|eos|>"],
    control=[EOS],
    eog=[EOS],
    tokenize=lambda b: list(b),
)
TOOLS = (
    Tool(
        "get_weather",
        parameters={
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    ),
    Tool("now"),
)
WEATHER = ParsedCall("get_weather", '{"city": "Paris"}')
NOW = ParsedCall("now", "{}")


def accepts(spec: GrammarSpec, text: str) -> bool:
    """The grammar takes ``text`` whole and may end after it."""
    m = _TOK.matcher(spec)
    for b in text.encode():
        if not m.allowed()[b]:
            return False
        m.consume(b)
    return bool(m.allowed()[EOS])


def test_none_and_no_tools_mean_no_grammar() -> None:
    assert tool_grammar(TOOLS, ToolChoice("none"), "hermes", True) is None
    assert tool_grammar((), ToolChoice("auto"), "hermes", True) is None


@pytest.mark.parametrize("family", ["hermes", "llama3", "mistral"])
def test_required_takes_written_calls_and_refuses_text(family: str) -> None:
    syntax = syntax_named(family)
    spec = tool_grammar(TOOLS, ToolChoice("required"), family, True)
    assert spec is not None
    written = syntax.write([WEATHER]).removeprefix("[TOOL_CALLS]")
    assert accepts(spec, written)
    assert not accepts(spec, "The weather is fine.")
    bad = ParsedCall("get_weather", '{"town":"Paris"}')
    assert not accepts(spec, syntax.write([bad]).removeprefix("[TOOL_CALLS]"))
    unknown = ParsedCall("launch", "{}")
    assert not accepts(spec, syntax.write([unknown]).removeprefix("[TOOL_CALLS]"))


@pytest.mark.parametrize("family", ["hermes", "llama3", "mistral"])
def test_parallel_decides_several_calls(family: str) -> None:
    syntax = syntax_named(family)
    two = syntax.write([WEATHER, NOW]).removeprefix("[TOOL_CALLS]")
    assert accepts(tool_grammar(TOOLS, ToolChoice("required"), family, True), two)  # type: ignore[arg-type]
    assert not accepts(tool_grammar(TOOLS, ToolChoice("required"), family, False), two)  # type: ignore[arg-type]


@pytest.mark.parametrize("family", ["hermes", "llama3", "mistral"])
def test_named_function_forces_that_function(family: str) -> None:
    syntax = syntax_named(family)
    spec = tool_grammar(TOOLS, ToolChoice("function", "now"), family, True)
    assert spec is not None
    assert accepts(spec, syntax.write([NOW]).removeprefix("[TOOL_CALLS]"))
    assert not accepts(spec, syntax.write([WEATHER]).removeprefix("[TOOL_CALLS]"))


@pytest.mark.parametrize("family", ["hermes", "llama3", "mistral"])
def test_auto_takes_text_or_calls(family: str) -> None:
    syntax = syntax_named(family)
    spec = tool_grammar(TOOLS, ToolChoice("auto"), family, True)
    assert spec is not None
    assert accepts(spec, "It is sunny in Paris.\nAnything else?")
    assert accepts(spec, "")
    call = syntax.write([WEATHER]).removeprefix("[TOOL_CALLS]")
    assert accepts(spec, call)
    bad = syntax.write([ParsedCall("get_weather", '{"city": 3}')])
    assert not accepts(spec, bad.removeprefix("[TOOL_CALLS]"))


def test_hermes_auto_text_before_calls_but_no_loose_marker() -> None:
    spec = tool_grammar(TOOLS, ToolChoice("auto"), "hermes", True)
    assert spec is not None
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert accepts(spec, "Let me check.\n" + call)
    assert accepts(spec, call + "\n" + call)
    assert not accepts(spec, "a <tool_call> that is not a call")
    assert not accepts(spec, call + " and words after")
    single = tool_grammar(TOOLS, ToolChoice("auto"), "hermes", False)
    assert single is not None and not accepts(single, call + "\n" + call)


def test_a_whole_auto_answer_validates_as_one_draft() -> None:
    """The engine cuts a draft at its first token the grammar refuses: an answer with text
    and calls must validate whole, or every draft would stop at the marker."""
    spec = tool_grammar(TOOLS, ToolChoice("auto"), "hermes", True)
    assert spec is not None
    call = '<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>'
    for text in (call, "Sure. " + call + "\n" + call, "just words"):
        data = list(text.encode())
        assert _TOK.matcher(spec).valid_prefix(data) == len(data)


def test_forced_tokens_spell_the_call_frame() -> None:
    """After the marker the grammar forces the key: what the loop drafts for free."""
    spec = tool_grammar(TOOLS[:1], ToolChoice("required"), "hermes", False)
    assert spec is not None
    m = _TOK.matcher(spec)
    for b in b"<tool_call>\n":
        m.consume(b)
    assert bytes(m.forced()).startswith(b'{"name": "get_weather", "arguments": {"city": "')


def test_unknown_family_is_a_400() -> None:
    from tightwad.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="cannot take tools"):
        tool_grammar(TOOLS, ToolChoice("auto"), "", True)
