"""Drafting modes on real engines: pipelined model drafting, hybrid, several drafters, and the
vocabulary check that refuses a draft/target pair without a shared tokenizer."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from tightwad.agent.server import AgentServer, AgentSettings
from tightwad.engine.engine_config import EngineConfig
from tightwad.errors import ConfigError
from tightwad.gateway.api import GatewaySettings
from tightwad.gateway.engine_client import EngineClient
from tightwad.gateway.loop import RouteSpec, SpecBackend
from tightwad.gateway.server import GatewayServer

pytestmark = pytest.mark.engine

PROMPTS = [
    "Write a Python function that returns the square of a number.",
    "List the days of the week.",
    "Repeat exactly: alpha beta gamma delta alpha beta gamma delta",
]


async def _agent(path: Path, model_id: str) -> AgentServer:
    cfg = EngineConfig(model_id=model_id, path=path, ctx_size=1024, max_sessions=8, threads=2)
    agent = AgentServer(AgentSettings(listen="127.0.0.1:0", engines=(cfg,)))
    await agent.start()
    return agent


async def _texts(url: str, route: str, n: int = 32) -> list[tuple[str, dict]]:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    out = []
    for p in PROMPTS:
        r = await client.chat.completions.create(
            model=route, messages=[{"role": "user", "content": p}], max_tokens=n, temperature=0
        )
        out.append((r.choices[0].message.content or "", r.model_extra["tightwad"]))
    await client.close()
    return out


async def test_pipelined_hybrid_and_multi_drafter_routes_match_plain(smollm_path: Path) -> None:
    target = await _agent(smollm_path, "t")
    d1 = await _agent(smollm_path, "d")
    d2 = await _agent(smollm_path, "d")

    def spec(name: str, mode: str, **kw: object) -> RouteSpec:
        # Always draft: these tests check each drafting path is lossless, not that it pays.
        # A drafter is dropped only when it fails, never for being slow: on a loaded host a
        # draft call can exceed the default 5 s and rest the drafter that should serve on.
        return RouteSpec(  # type: ignore[arg-type]
            name=name,
            target=EngineClient(target.address, "t"),
            draft_mode=mode,
            adaptive=False,
            draft_timeout_s=120.0,
            **kw,
        )

    drafters = (EngineClient(d1.address, "d"), EngineClient(d2.address, "d"))
    gw = GatewayServer(
        [
            spec("plain", "none"),
            spec("pipelined", "model", drafters=drafters[:1], pipeline=True),
            spec("hybrid", "hybrid", drafters=drafters[:1]),
            spec("two", "model", drafters=drafters),
        ],
        GatewaySettings(),
        port=0,
    )
    url = await gw.start()
    try:
        plain = await _texts(url, "plain")
        for route in ("pipelined", "hybrid", "two"):
            got = await _texts(url, route)
            assert [t for t, _ in got] == [t for t, _ in plain], route
            assert sum(s["drafted"] for _, s in got) > 0, route
        # With two healthy drafters, losing one mid-way leaves the other serving.
        await d1.stop(grace=0)
        got = await _texts(url, "two")
        assert [t for t, _ in got] == [t for t, _ in plain]
        assert sum(s["accepted"] for _, s in got) > 0
        status = gw.backends["two"].info().details
        health = {d["address"]: d["healthy"] for d in status["drafters"]}  # type: ignore[index]
        assert health[d2.address] is True
    finally:
        await gw.stop()
        for a in (target, d1, d2):
            await a.stop(grace=0)


async def test_draft_with_another_vocabulary_is_refused_at_start(
    smollm_path: Path, qwen_draft_path: Path
) -> None:
    target = await _agent(smollm_path, "t")
    draft = await _agent(qwen_draft_path, "q")
    backend = SpecBackend(
        RouteSpec(
            name="bad",
            target=EngineClient(target.address, "t"),
            draft_mode="model",
            drafters=(EngineClient(draft.address, "q"),),
        )
    )
    try:
        with pytest.raises(ConfigError, match="does not share the target's vocabulary"):
            await backend.start()
    finally:
        await target.stop(grace=0)
        await draft.stop(grace=0)
