"""An Ollama server drafting for a real target engine: text drafts, verified by the target.

The cluster file routes SmolLM2-135M (embedded engine) with an Ollama drafter; Ollama is the
documented-wire-format double of ``tests/agent/fake_ollama.py``. Its scripted model continues
any committed text with a script: the target's own greedy output for the prompt (computed
first on the plain route) makes a perfect drafter, the toy's word cycle a junk one. Whatever
the drafter says, the answer must be the target's own, token for token.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
from agent.fake_ollama import FakeModel, FakeOllama, serve

from tightwad.config import config_from_mapping
from tightwad.gateway.api import GatewaySettings
from tightwad.gateway.routes import BuiltRoutes, build_routes
from tightwad.gateway.server import GatewayServer

pytestmark = pytest.mark.engine

CHAT = [{"role": "user", "content": "Write a haiku about the sea."}]
PROMPT = "The three primary colors are"


@dataclass
class Stack:
    fake: FakeOllama
    built: BuiltRoutes
    gateway: GatewayServer
    client: openai.AsyncOpenAI


def _drafter(url: str, model: str) -> dict[str, object]:
    return {"url": url, "model_name": model, "backend": "ollama"}


@pytest.fixture
async def stack(smollm_path: Path) -> AsyncIterator[Stack]:
    fake = FakeOllama(
        models={
            "scripted:latest": FakeModel("scripted:latest", script=""),
            "junk:latest": FakeModel("junk:latest"),
        }
    )
    async for url in serve(fake):
        cfg = config_from_mapping(
            {
                "engine": {"ctx_size": 2048, "threads": 2, "max_sessions": 8},
                "models": {"smollm": {"path": str(smollm_path)}},
                "routes": [
                    {"name": "plain", "target": "smollm", "draft": "none"},
                    {
                        "name": "text",
                        "target": "smollm",
                        "draft": "model",
                        "drafters": [_drafter(url, "scripted")],
                        "max_draft_tokens": 8,
                    },
                    {
                        "name": "junk",
                        "target": "smollm",
                        "draft": "model",
                        "drafters": [_drafter(url, "junk")],
                        "max_draft_tokens": 8,
                    },
                ],
            }
        )
        built = await build_routes(cfg)
        # Always draft (the goodput control would rightly stop a junk drafter): these tests
        # check that text drafting is lossless, not that it pays.
        specs = [dataclasses.replace(s, adaptive=False) for s in built.specs]
        gateway = GatewayServer(specs, GatewaySettings(), host="127.0.0.1", port=0)
        base = await gateway.start()
        client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        try:
            yield Stack(fake, built, gateway, client)
        finally:
            await client.close()
            await gateway.stop()
            await built.close()


async def _chat(s: Stack, route: str) -> tuple[str, dict[str, float]]:
    resp = await s.client.chat.completions.create(
        model=route,
        messages=CHAT,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=32,
    )
    return resp.choices[0].message.content or "", resp.model_extra["tightwad"]  # type: ignore[index]


async def _complete(s: Stack, route: str) -> tuple[str, dict[str, float]]:
    resp = await s.client.completions.create(
        model=route, prompt=PROMPT, temperature=0, max_tokens=32
    )
    return resp.choices[0].text, resp.model_extra["tightwad"]  # type: ignore[index]


def test_the_ollama_drafter_is_a_text_drafter(stack: Stack) -> None:
    by_name = {s.name: s for s in stack.built.specs}
    assert by_name["text"].draft_mode == "model"
    assert by_name["text"].drafters == ()  # no Engine drafter, no byte-vocabulary adapter
    assert [d.model for d in by_name["text"].text_drafters] == ["scripted"]


@pytest.mark.parametrize("ask", [_chat, _complete])
async def test_a_perfect_text_drafter_is_accepted_and_changes_nothing(stack: Stack, ask) -> None:
    reference, plain = await ask(stack, "plain")
    assert plain["drafted"] == 0 and len(reference) > 20
    stack.fake.models["scripted:latest"].script = reference
    text, stats = await ask(stack, "text")
    assert text == reference
    assert stats["mode"] == "model" and stats["draft_failures"] == 0
    assert stats["drafted"] > 0 and stats["accepted"] > 0
    assert stats["acceptance_rate"] > 0.5
    sent = [r for r in stack.fake.requests if r["model"] == "scripted"]
    assert sent and all(r["raw"] is True and r["options"]["temperature"] == 0 for r in sent)


async def test_a_junk_drafter_changes_nothing(stack: Stack) -> None:
    reference, _ = await _chat(stack, "plain")
    text, stats = await _chat(stack, "junk")
    assert text == reference
    assert stats["drafted"] > 0 and stats["acceptance_rate"] < 0.5
    assert stats["draft_failures"] == 0


async def test_a_drafter_failing_mid_request_is_dropped_not_fatal(stack: Stack) -> None:
    reference, _ = await _complete(stack, "plain")
    stack.fake.models["scripted:latest"].script = reference
    stack.fake.fail_from_request = stack.fake.served + 2  # two drafts, then HTTP 500
    text, stats = await _complete(stack, "text")
    assert text == reference
    assert stats["draft_failures"] == 1
    assert stats["drafted"] > 0  # it drafted before it failed
    assert stack.fake.served == stack.fake.fail_from_request + 1  # not asked again
