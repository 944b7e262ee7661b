"""The grammar module on real vocabularies (Qwen2.5's 151k tokens, SmolLM2's 49k)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tightwad.engine.binding import LlamaLoadParams, LlamaModel
from tightwad.engine.grammar import (
    GrammarSpec,
    GrammarTokenizer,
    check_grammar,
    grammar_tokenizer,
    json_object_spec,
    json_schema_spec,
)
from tightwad.errors import InvalidRequestError

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "role": {"enum": ["engineer"]},
    },
    "required": ["name", "age", "role"],
    "additionalProperties": False,
}
VALID = '{"name":"Ada","age":36,"role":"engineer"}'


def _load(path: Path) -> LlamaModel:
    return LlamaModel(
        LlamaLoadParams(
            path=path,
            n_ctx=128,
            n_threads=1,
            n_gpu_layers=0,
            flash_attn=True,
            n_seq_max=1,
            n_batch=32,
            tensor_split=(),
            devices=(),
        )
    )


@pytest.fixture(scope="module")
def qwen(qwen_draft_path: Path):
    m = _load(qwen_draft_path)
    yield m, grammar_tokenizer(m)
    m.close()


def _ids(m: LlamaModel, text: str) -> list[int]:
    return m.tokenize(text, add_special=False, parse_special=False)


# -- without a vocabulary (what the gateway checks) -----------------------------------------


def test_check_grammar_reports_llguidance_message_and_param() -> None:
    bad = json_schema_spec({"type": "object", "properties": {"a": {"$ref": "#/nope"}}})
    with pytest.raises(InvalidRequestError, match="Pointer '/nope' does not exist") as e:
        check_grammar(bad, param="response_format.json_schema.schema")
    assert e.value.param == "response_format.json_schema.schema"
    with pytest.raises(InvalidRequestError, match="cannot be compiled"):
        check_grammar(GrammarSpec("lark", "start: undefined_rule"))
    check_grammar(json_schema_spec(PERSON))
    check_grammar(json_object_spec())
    check_grammar(GrammarSpec("regex", "[a-z]+"))


def test_spec_kind_is_checked() -> None:
    with pytest.raises(InvalidRequestError, match="grammar kind 'yaml'"):
        GrammarSpec("yaml", "x")  # type: ignore[arg-type]


# -- on a real vocabulary --------------------------------------------------------------------


@pytest.mark.engine
def test_valid_sequence_is_accepted_and_ends_with_eog(qwen) -> None:
    m, tok = qwen
    g = tok.matcher(json_schema_spec(PERSON))
    ids = _ids(m, VALID)
    assert g.valid_prefix(ids) == len(ids)
    eog = sorted(m.eog)
    for i, t in enumerate(ids):
        allowed = g.allowed()
        assert allowed[t], f"token {t} at {i} refused"
        assert not allowed[eog].any(), "EOG allowed before the object is complete"
        g.consume(t)
    assert g.is_accepting
    allowed = g.allowed()
    assert allowed[eog].all()
    assert allowed.sum() == len(eog), "only EOG may follow a complete object"


@pytest.mark.engine
def test_invalid_token_is_forbidden_and_cut(qwen) -> None:
    m, tok = qwen
    g = tok.matcher(json_schema_spec(PERSON))
    head = _ids(m, '{"name":"Ada","age":')
    wrong = [*head, *_ids(m, "true")]  # age must be an integer
    good = len(head)
    assert g.valid_prefix(wrong) == good
    for t in wrong[:good]:
        g.consume(t)
    assert not g.allowed()[wrong[good]]
    logits = np.zeros(m.n_vocab, dtype=np.float32)
    g.mask(logits)
    assert logits[wrong[good]] == -np.inf
    assert np.isfinite(logits[_ids(m, "3")[0]])
    with pytest.raises(InvalidRequestError, match="not allowed by the grammar"):
        g.consume(wrong[good])


@pytest.mark.engine
def test_rollback_restores_the_state(qwen) -> None:
    m, tok = qwen
    g = tok.matcher(json_schema_spec(PERSON))
    ids = _ids(m, VALID)
    for t in ids[:4]:
        g.consume(t)
    before = g.allowed()
    for t in ids[4:9]:
        g.consume(t)
    assert not np.array_equal(before, g.allowed())
    g.rollback(5)
    assert np.array_equal(before, g.allowed())
    assert g.consumed == 4
    with pytest.raises(InvalidRequestError, match="cannot roll"):
        g.rollback(5)


@pytest.mark.engine
def test_forced_tokens_spell_the_forced_text(qwen) -> None:
    m, tok = qwen
    g = tok.matcher(json_schema_spec(PERSON))
    for t in _ids(m, '{"name":"Ada","age":36,'):
        g.consume(t)
    forced = g.forced()
    assert forced, 'the only continuation is "role":"engineer"}'
    text = m.detokenize(forced, render_special=False).decode()
    assert '"role":"engineer"}'.startswith(text) and len(text) >= 3
    for t in forced:
        g.consume(t)
    # free choice of a string's content: nothing forced
    g2 = tok.matcher(json_schema_spec(PERSON))
    for t in _ids(m, '{"name":"'):
        g2.consume(t)
    assert g2.forced() == []


@pytest.mark.engine
def test_draft_walk_equals_consuming_the_accepted_prefix(qwen) -> None:
    m, tok = qwen
    spec = json_schema_spec(PERSON)
    ids = _ids(m, VALID)
    draft = [*ids[2:8], _ids(m, "x")[0], *ids[9:12]]  # forbidden token at draft index 6
    for accepted in (0, 3, 6):
        g = tok.matcher(spec)
        for t in ids[:2]:
            g.consume(t)
        assert g.begin_draft(draft) == 6
        masks = []
        for i in range(accepted + 1):
            row = np.zeros(m.n_vocab, dtype=np.float32)
            masks.append(np.isfinite(g.mask_for_draft(i, row)))
        g.settle(accepted, draft[accepted] if accepted < 6 else ids[8])
        ref = tok.matcher(spec)
        for i, t in enumerate(ids[:2] + draft[:accepted]):
            if i >= 2:
                assert np.array_equal(masks[i - 2], ref.allowed())
            ref.consume(t)
        assert np.array_equal(masks[accepted], ref.allowed())
        ref.consume(draft[accepted] if accepted < 6 else ids[8])
        assert np.array_equal(ref.allowed(), g.allowed())
        assert g.consumed == ref.consumed == 2 + accepted + 1


@pytest.mark.engine
def test_lark_and_json_object_on_smollm(smollm_path: Path) -> None:
    m = _load(smollm_path)
    try:
        tok = grammar_tokenizer(m)
        g = tok.matcher(GrammarSpec("lark", 'start: "yes" | "no"'))
        allowed = g.allowed()
        assert allowed[_ids(m, "yes")[0]] and not allowed[_ids(m, "maybe")[0]]
        obj = tok.matcher(json_object_spec())
        assert obj.valid_prefix(_ids(m, '{"a": [1, 2]}')) < len(_ids(m, '{"a": [1, 2]}'))
        ids = _ids(m, '{"a":[1,2]}')
        assert obj.valid_prefix(ids) == len(ids)
        assert not obj.allowed()[_ids(m, "[")[0]], "json_object must start with an object"
    finally:
        m.close()


def test_tokenizer_needs_an_eog_token() -> None:
    with pytest.raises(InvalidRequestError, match="end-of-generation"):
        GrammarTokenizer([b"a", b"b"], control=[], eog=[], tokenize=lambda b: [0])


# -- tool-call grammars on Qwen2.5's vocabulary (its <tool_call> is one added token) --------


@pytest.mark.engine
def test_tool_grammars_take_qwens_own_call_tokens(qwen) -> None:
    from tightwad.gateway.tools.grammar import tool_grammar
    from tightwad.gateway.tools.request import Tool, ToolChoice

    m, tok = qwen
    tools = (
        Tool(
            "get_weather",
            parameters={
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        ),
    )
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    # How the model writes it: <tool_call> and </tool_call> are single tokens.
    ids = m.tokenize(call, add_special=False, parse_special=True)
    assert len(m.tokenize("<tool_call>", add_special=False, parse_special=True)) == 1
    for mode in ("required", "auto"):
        spec = tool_grammar(tools, ToolChoice(mode), "hermes", False)  # type: ignore[arg-type]
        assert spec is not None
        matcher = tok.matcher(spec)
        assert matcher.valid_prefix(ids) == len(ids)
        for t in ids:
            matcher.consume(t)
        assert matcher.is_accepting
    required = tok.matcher(tool_grammar(tools, ToolChoice("required"), "hermes", False))  # type: ignore[arg-type]
    required.consume(ids[0])
    forced = m.detokenize(required.forced(), render_special=True)
    assert forced.startswith(b'\n{"name": "get_weather", "arguments": {"')
    auto = tok.matcher(tool_grammar(tools, ToolChoice("auto"), "hermes", False))  # type: ignore[arg-type]
    words = m.tokenize("It is sunny in Paris.", add_special=False, parse_special=False)
    assert auto.valid_prefix(words) == len(words)
