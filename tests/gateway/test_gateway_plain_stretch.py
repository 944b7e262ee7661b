"""Plain decoding as one Generate stream, and model routes that calibrate their costs.

A route without drafting decodes its whole completion as one Generate stream (no round trip
per token); a stop string inside it ends the response at once and cancels the engine's rest.
A model route measures at start what drafting costs; where even near-perfect acceptance could
not pay (a drafter as big as the target), requests stay plain and never open the drafter.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from tightwad.agent.server import AgentServer, AgentSettings
from tightwad.engine.engine_config import EngineConfig
from tightwad.gateway.api import GatewaySettings
from tightwad.gateway.engine_client import EngineClient, RemoteSession
from tightwad.gateway.loop import RouteSpec
from tightwad.gateway.server import GatewayServer

pytestmark = pytest.mark.engine

PROMPT = "The numbers from one to one hundred, in words: one, two, three, four,"


class CountingClient(EngineClient):
    """A real engine client that counts the sessions opened through it."""

    sessions = 0

    def session(self, *, timeout_s: float | None = None) -> RemoteSession:
        self.sessions += 1
        return super().session(timeout_s=timeout_s)


@dataclass
class Stack:
    agent: AgentServer
    drafter: CountingClient
    target: EngineClient
    gateway: GatewayServer
    client: openai.AsyncOpenAI


@pytest.fixture
async def stack(smollm_path: Path) -> AsyncIterator[Stack]:
    cfg = EngineConfig(model_id="t", path=smollm_path, ctx_size=2048, max_sessions=8, threads=2)
    dcfg = EngineConfig(model_id="d", path=smollm_path, ctx_size=2048, max_sessions=8, threads=2)
    agent = AgentServer(AgentSettings(listen="127.0.0.1:0", engines=(cfg, dcfg)))
    await agent.start()
    drafter = CountingClient(agent.address, "d")
    routes = [
        RouteSpec(name="plain", target=EngineClient(agent.address, "t"), draft_mode="none"),
        # A drafter as big as the target: each drafted token costs about a plain step.
        RouteSpec(
            name="model",
            target=EngineClient(agent.address, "t"),
            draft_mode="model",
            drafters=(drafter,),
        ),
    ]
    gateway = GatewayServer(routes, GatewaySettings(), host="127.0.0.1", port=0)
    url = await gateway.start()
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    s = Stack(agent, drafter, EngineClient(agent.address, "t"), gateway, client)
    yield s
    await client.close()
    await s.target.close()
    await gateway.stop()
    await agent.stop(grace=0.2)


async def _complete(s: Stack, route: str, n: int, **kw: object) -> tuple[str, str, dict]:
    r = await s.client.completions.create(
        model=route,
        prompt=PROMPT,
        max_tokens=n,
        temperature=0,
        **kw,  # type: ignore[call-overload]
    )
    c = r.choices[0]
    return c.text, c.finish_reason, r.model_extra["tightwad"]


async def test_stop_string_inside_a_plain_stream_ends_it_and_frees_the_engine(stack: Stack) -> None:
    s = stack
    text, reason, stats = await _complete(s, "plain", 48)
    assert reason == "length" and stats["plain_steps"] == 48 and stats["rounds"] == 0
    # A stop string a few words in, with a budget far beyond it.
    stop = text[len(text) // 3 : len(text) // 3 + 4]
    assert stop.strip(), text
    cut, reason, stats = await _complete(s, "plain", 1500, stop=[stop])
    assert reason == "stop"
    assert cut == text[: text.index(stop)]
    assert stats["plain_steps"] < 48
    # The rest of the Generate stream was cancelled: the engine's session is gone at once
    # (1,500 tokens would take many seconds on this machine).
    for _ in range(50):
        if (await s.target.info()).live_sessions == 0:
            break
        await asyncio.sleep(0.1)
    assert (await s.target.info()).live_sessions == 0


async def test_plain_stream_logprobs_and_streaming_agree(stack: Stack) -> None:
    s = stack
    text, _, _ = await _complete(s, "plain", 24)
    r = await s.client.completions.create(
        model="plain", prompt=PROMPT, max_tokens=24, temperature=0, logprobs=2
    )
    lps = r.choices[0].logprobs
    assert r.choices[0].text == text
    assert lps is not None and lps.tokens is not None and lps.top_logprobs is not None
    assert len(lps.tokens) == r.usage.completion_tokens == 24
    assert "".join(lps.tokens) == text
    assert all(len(top) == 2 for top in lps.top_logprobs)
    stream = await s.client.completions.create(
        model="plain", prompt=PROMPT, max_tokens=24, temperature=0, stream=True
    )
    parts = [c.choices[0].text async for c in stream if c.choices]
    assert "".join(parts) == text


async def test_model_route_that_cannot_pay_stays_plain_without_opening_the_drafter(
    stack: Stack,
) -> None:
    s = stack
    drafting = s.gateway.backends["model"].info().details["drafting"]
    state = drafting["model"]  # type: ignore[index]
    assert state["can_pay"] is False, state
    assert state["plain_step_ms"] > 0 and state["extra_ms_per_drafted_token"] > 0
    opened_at_start = s.drafter.sessions  # the calibration's one session
    assert opened_at_start == 1
    plain, _, _ = await _complete(s, "plain", 32)
    text, _, stats = await _complete(s, "model", 32)
    assert text == plain
    assert stats["drafted"] == 0 and stats["plain_steps"] == 32
    assert s.drafter.sessions == opened_at_start  # never paid for the drafter's prefill
