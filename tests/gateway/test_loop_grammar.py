"""The loop under a grammar on a real engine (Qwen2.5-Coder-0.5B): schema-constrained output
parses and validates, n-gram speculation leaves greedy output unchanged, and the tokens the
grammar forces are drafted for free and accepted."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import jsonschema
import pytest

from tightwad.engine.engine_config import EngineConfig
from tightwad.engine.grammar import json_schema_spec
from tightwad.engine.server import EngineServer
from tightwad.gateway.engine_client import EngineClient
from tightwad.gateway.loop import RouteSpec, SpecBackend
from tightwad.gateway.types import (
    ChatMessage,
    Finished,
    GenerationRequest,
    TextDelta,
)

pytestmark = pytest.mark.engine

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "city": {"type": "string", "enum": ["Paris", "Rome", "Berlin", "Madrid"]},
        "languages": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age", "city", "languages"],
    "additionalProperties": False,
}
PROMPTS = [
    "Extract the person as JSON: Giulia is 31, lives in Rome and speaks Italian and English.",
    "Extract the person as JSON: Hans, 45, from Berlin, speaks German.",
]


@pytest.fixture
async def engine(qwen_draft_path: Path) -> AsyncIterator[str]:
    cfg = EngineConfig("qwen", qwen_draft_path, ctx_size=1024, max_sessions=4, threads=2)
    server = EngineServer("127.0.0.1:0", engines=(cfg,))
    address = await server.start()
    try:
        yield address
    finally:
        await server.stop(grace=0.5)


async def _run(backend: SpecBackend, prompt: str) -> tuple[list[TextDelta], Finished]:
    req = GenerationRequest(
        model=backend.spec.name,
        messages=(ChatMessage("user", prompt),),
        max_tokens=160,
        grammar=json_schema_spec(SCHEMA),
    )
    deltas: list[TextDelta] = []
    finished: Finished | None = None
    async for ev in backend.generate(req):
        if isinstance(ev, TextDelta):
            deltas.append(ev)
        elif isinstance(ev, Finished):
            finished = ev
    assert finished is not None
    return deltas, finished


async def test_schema_output_is_valid_lossless_and_forced_tokens_are_drafted(engine: str) -> None:
    client = EngineClient(engine, "qwen")
    plain = SpecBackend(RouteSpec(name="plain", target=client, draft_mode="none"))
    ngram = SpecBackend(
        RouteSpec(name="ngram", target=client, draft_mode="ngram", adaptive=False, calibrate=False)
    )
    await plain.start()
    await ngram.start()
    try:
        forced_accepted = 0
        for prompt in PROMPTS:
            ref, ref_done = await _run(plain, prompt)
            got, done = await _run(ngram, prompt)
            text = "".join(d.text for d in got)
            assert text == "".join(d.text for d in ref), prompt
            assert done.finish_reason == ref_done.finish_reason == "stop"
            jsonschema.validate(json.loads(text), SCHEMA)
            stats = done.stats
            assert stats.forced_drafted > 0 and stats.forced_accepted > 0, stats
            assert stats.forced_accepted <= stats.forced_drafted <= stats.drafted
            forced_accepted += stats.forced_accepted
            # Every emitted token is labelled with where it came from.
            origins = {d.origin for d in got if d.token_ids}
            assert "forced" in origins and origins <= {"forced", "draft", "target", "plain"}
            assert sum(len(d.token_ids) for d in got if d.origin == "forced") == (
                stats.forced_accepted
            )
            rounds = [d.round for d in got if d.token_ids]
            assert rounds == sorted(rounds) and rounds[-1] <= stats.rounds + stats.plain_steps
            # The plain route decodes under the grammar too (Generate chunks): same origin "plain".
            assert {d.origin for d in ref if d.token_ids} == {"plain"}
        assert forced_accepted > 0
    finally:
        await client.close()
