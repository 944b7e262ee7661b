"""Constrained decoding in the embedded engine, on SmolLM2-135M (its Verify rows are
bit-identical to one-token decoding, so speculation must reproduce plain decoding exactly).

Lossless: Verify of any draft (right, wrong, grammar-forbidden) commits exactly the tokens a
constrained plain Generate emits, greedy and seeded-sampled; forced tokens verify as a free
draft; rewinds and draft alignments keep the grammar state in step with the token list.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import jsonschema
import numpy as np
import pytest

from tightwad.engine.contract import DraftEnd, DraftStep, GenerateStop
from tightwad.engine.engine_config import EngineConfig
from tightwad.engine.grammar import GrammarSpec, json_schema_spec
from tightwad.engine.llama_engine import Engine
from tightwad.engine.session import Session
from tightwad.errors import InvalidRequestError
from tightwad.spec.sampling import SamplingConfig
from tightwad.v1 import engine_pb2, engine_pb2_grpc

pytestmark = pytest.mark.engine

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "role": {"enum": ["engineer", "doctor", "pilot"]},
    },
    "required": ["name", "age", "role"],
    "additionalProperties": False,
}
SPEC = json_schema_spec(PERSON)
PROMPT = "A person described as JSON with a name, an age and a role:\n"
GREEDY = SamplingConfig()
SAMPLED = SamplingConfig(temperature=0.9, top_k=40)


@pytest.fixture
async def engine(smollm_path: Path) -> AsyncIterator[Engine]:
    e = await Engine.load(EngineConfig("m", smollm_path, ctx_size=512, max_sessions=4))
    try:
        yield e
    finally:
        await e.close()


async def _prompt(engine: Engine) -> list[int]:
    return await engine.tokenize(PROMPT, add_special=True, parse_special=False)


async def _generate(
    engine: Engine, sampling: SamplingConfig, n: int = 60, seed: int | None = None
) -> tuple[list[int], GenerateStop | None]:
    s, _, _ = await engine.open_session(await _prompt(engine), sampling, seed=seed, grammar=SPEC)
    out: list[int] = []
    why: GenerateStop | None = None
    async for tok, _lp, stop in s.generate(n):
        out.append(tok)
        why = stop
    s.release()
    return out, why


async def _text(engine: Engine, tokens: list[int]) -> str:
    return (await engine.detokenize(tokens, render_special=False)).decode()


async def test_greedy_generate_yields_json_valid_for_the_schema(engine: Engine) -> None:
    out, why = await _generate(engine, GREEDY)
    assert why == GenerateStop.GRAMMAR
    jsonschema.validate(json.loads(await _text(engine, out)), PERSON)
    # Unconstrained, the same model does not write this object.
    s, _, _ = await engine.open_session(await _prompt(engine), GREEDY)
    free = [t async for t, _lp, _why in s.generate(len(out))]
    s.release()
    assert free != out


async def _verify_along(
    s: Session, ref: list[int], rng: np.random.Generator, n_vocab: int
) -> tuple[list[int], int]:
    """Commit ``ref`` through Verify rounds whose drafts mix the right continuation, wrong
    tokens and random ids; returns (committed tokens, drafts cut by the grammar)."""
    got: list[int] = []
    cuts = 0
    while len(got) < len(ref):
        k = int(rng.integers(1, 6))
        draft = list(ref[len(got) : len(got) + k])
        if draft and rng.random() < 0.5:
            draft[int(rng.integers(0, len(draft)))] = int(rng.integers(0, n_vocab))
        res = await s.verify(draft)
        cuts += res.grammar_valid < len(draft)
        got += [*draft[: res.accepted], res.next_token]
        assert res.accepted <= res.grammar_valid <= len(draft)
        if res.grammar_done:
            break
    return got, cuts


@pytest.mark.parametrize(("sampling", "seed"), [(GREEDY, None), (SAMPLED, 11), (SAMPLED, 12)])
async def test_verify_of_any_draft_commits_what_plain_generate_emits(
    engine: Engine, sampling: SamplingConfig, seed: int | None
) -> None:
    ref, why = await _generate(engine, sampling, seed=seed)
    assert why == GenerateStop.GRAMMAR
    for trial in range(2):
        s, _, _ = await engine.open_session(
            await _prompt(engine), sampling, seed=seed, grammar=SPEC
        )
        got, cuts = await _verify_along(s, ref, np.random.default_rng(trial), engine.n_vocab)
        s.release()
        # A draft that ends on the completing token gets EOG as its bonus (a stop).
        assert got[: len(ref)] == ref and set(got[len(ref) :]) <= engine.eog
        assert cuts > 0  # random ids the grammar forbids were cut before verification


async def test_a_forbidden_token_cuts_the_draft_and_forced_tokens_verify_free(
    engine: Engine,
) -> None:
    ref, _ = await _generate(engine, GREEDY)
    s, _, _ = await engine.open_session(await _prompt(engine), GREEDY, grammar=SPEC)
    first = await s.verify([])
    assert first.next_token == ref[0]
    # The schema fixes the first key: the grammar forces it (and the quotes around it).
    assert first.forced
    head = await _text(engine, [first.next_token, *first.forced])
    assert '{"name":"'.startswith(head) or head.startswith('{"name":"')
    # A draft: the forced tokens, then a token that cannot follow them (a closing brace).
    brace = (await engine.tokenize("}", add_special=False, parse_special=False))[0]
    res = await s.verify([*first.forced, brace])
    assert res.grammar_valid == len(first.forced)
    assert res.accepted == len(first.forced)
    assert [first.next_token, *first.forced, res.next_token] == ref[: len(first.forced) + 2]
    s.release()


async def test_rewind_and_eog_keep_the_grammar_in_step(engine: Engine) -> None:
    ref, _ = await _generate(engine, GREEDY)
    prompt = await _prompt(engine)
    s, _, _ = await engine.open_session(prompt, GREEDY, grammar=SPEC)
    assert [t async for t, _lp, _w in s.generate(8)] == ref[:8]
    await s.rewind(len(prompt) + 3)
    again = [t async for t, _lp, _w in s.generate(len(ref))]
    assert ref[:3] + again == ref
    # The grammar is complete: only an end-of-generation token may follow, and nothing is forced.
    assert await s.forced() == ()
    end = await s.verify([])
    assert end.next_token in engine.eog and end.grammar_done
    # Back across the EOG and into the object: the same completion comes again.
    await s.rewind(len(prompt) + len(ref) - 4)
    tail = [t async for t, _lp, _w in s.generate(10)]
    assert ref[: len(ref) - 4] + tail == ref
    s.release()


async def test_a_constrained_drafter_proposes_the_constrained_continuation(
    engine: Engine,
) -> None:
    ref, _ = await _generate(engine, GREEDY)
    prompt = await _prompt(engine)
    d, _, _ = await engine.open_session(prompt, GREEDY, grammar=SPEC)
    items = [st async for st in d.draft(6, keep=len(prompt), append=[])]
    assert [st.token_id for st in items if isinstance(st, DraftStep)] == ref[:6]
    assert isinstance(items[-1], DraftEnd)
    # Align as the gateway does (keep 2 drafted, append the target's third) and go on.
    items = [st async for st in d.draft(5, keep=len(prompt) + 2, append=[ref[2]])]
    assert [st.token_id for st in items if isinstance(st, DraftStep)] == ref[3:8]
    d.release()


async def test_a_grammar_that_does_not_compile_is_refused(engine: Engine) -> None:
    with pytest.raises(InvalidRequestError):
        await engine.open_session(
            await _prompt(engine), GREEDY, grammar=GrammarSpec("lark", "start: (")
        )
    assert engine.live_sessions == 0


async def test_over_grpc_generate_stops_with_grammar_and_verify_reports_forced(
    smollm_agent: object,
) -> None:
    address = smollm_agent.address  # type: ignore[attr-defined]
    async with grpc.aio.insecure_channel(address) as ch:
        stub = engine_pb2_grpc.EngineServiceStub(ch)
        call = stub.Session()
        open_cmd = engine_pb2.OpenCommand(
            model="smollm",
            text=PROMPT,
            add_special=True,
            grammar=engine_pb2.Grammar(kind=SPEC.kind, source=SPEC.source),
        )
        await call.write(engine_pb2.SessionRequest(seq=1, open=open_cmd))
        assert (await call.read()).HasField("opened")
        await call.write(engine_pb2.SessionRequest(seq=2, verify=engine_pb2.VerifyCommand()))
        v = (await call.read()).verified
        assert v.grammar_valid == 0 and list(v.forced_token_ids) and not v.grammar_done
        gen = engine_pb2.GenerateCommand(n=80)
        await call.write(engine_pb2.SessionRequest(seq=3, generate=gen))
        tokens = [v.next_token_id]
        while True:
            ev = await call.read()
            if ev.HasField("generate_done"):
                done = ev.generate_done
                break
            tokens.append(ev.token.token_id)
        assert done.stop == engine_pb2.GENERATE_STOP_GRAMMAR
        assert list(done.forced_token_ids) == []
        await call.write(engine_pb2.SessionRequest(seq=4, close=engine_pb2.CloseCommand()))
        await call.read()
        await call.done_writing()
        det = await stub.Detokenize(engine_pb2.DetokenizeRequest(model="smollm", token_ids=tokens))
        jsonschema.validate(json.loads(det.text), PERSON)
        bad = engine_pb2.OpenCommand(
            model="smollm", text=PROMPT, grammar=engine_pb2.Grammar(kind="xml", source="<a/>")
        )
        call = stub.Session()
        await call.write(engine_pb2.SessionRequest(seq=1, open=bad))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call.read()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
