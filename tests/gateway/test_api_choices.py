"""``n`` choices over a scripted Backend: one run per choice (each its own seed), per-choice
index and finish reason, usage counting the prompt once, streamed chunks interleaved by index,
every generator closed; the accepted-and-ignored OpenAI fields pass."""

from __future__ import annotations

import json
from typing import Any

import openai

from tightwad.gateway.api import GatewaySettings
from tightwad.gateway.choices import choice_request
from tightwad.gateway.types import GenerationRequest

from .conftest import API_KEY, Start
from .fakes import FakeBackend, script

MSG = [{"role": "user", "content": "hi"}]


async def test_n_choices_in_one_body(start: Start) -> None:
    backend = FakeBackend(events=script(["a", "b"], prompt_tokens=5))
    gw = await start({"fake": backend})
    r = await gw.post("/v1/chat/completions", {"model": "fake", "messages": MSG, "n": 3, "seed": 7})
    assert r.status == 200
    body = await r.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert all(c["message"]["content"] == "ab" for c in body["choices"])
    assert all(c["finish_reason"] == "stop" for c in body["choices"])
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}
    assert body["tightwad"]["rounds"] == 3 * 2  # each choice's run counted
    assert sorted(q.seed or 0 for q in backend.requests) == [7, 8, 9]
    assert backend.closed == 3


async def test_n_choices_streamed_interleave_by_index(start: Start) -> None:
    backend = FakeBackend(events=script(["x", "y", "z"], prompt_tokens=4), delay=0.01)
    gw = await start({"fake": backend})
    body = {
        "model": "fake",
        "messages": MSG,
        "n": 2,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    r = await gw.post("/v1/chat/completions", body)
    assert r.status == 200
    chunks: list[dict[str, Any]] = []
    async for line in r.content:
        text = line.decode().strip()
        if text.startswith("data: ") and text != "data: [DONE]":
            chunks.append(json.loads(text[6:]))
    order = [c["choices"][0]["index"] for c in chunks if c["choices"]]
    assert set(order) == {0, 1}
    # Both choices are under way before either ends: the streams interleave.
    first_finish = next(
        i for i, c in enumerate(chunks) if c["choices"] and c["choices"][0]["finish_reason"]
    )
    assert {c["choices"][0]["index"] for c in chunks[:first_finish] if c["choices"]} == {0, 1}
    texts = {0: "", 1: ""}
    for c in chunks:
        for choice in c["choices"]:
            texts[choice["index"]] += choice["delta"].get("content") or ""
    assert texts == {0: "xyz", 1: "xyz"}
    finishes = [
        c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]
    ]
    assert sorted(f["index"] for f in finishes) == [0, 1]
    usage = chunks[-1]
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10}
    assert backend.closed == 2


async def test_completions_n_and_openai_client(start: Start) -> None:
    backend = FakeBackend(events=script(["q"], prompt_tokens=2))
    gw = await start({"fake": backend})
    client = gw.openai()
    r = await client.completions.create(model="fake", prompt="p", n=2, best_of=2)
    assert [c.index for c in r.choices] == [0, 1]
    assert [c.text for c in r.choices] == ["q", "q"]
    assert r.usage is not None and r.usage.completion_tokens == 2
    assert r.usage.prompt_tokens == 2


async def test_n_cap_is_a_setting(start: Start) -> None:
    gw = await start({"fake": FakeBackend()}, GatewaySettings(api_key=API_KEY, max_choices=2))
    ok = await gw.post("/v1/chat/completions", {"model": "fake", "messages": MSG, "n": 2})
    assert ok.status == 200
    over = await gw.post("/v1/chat/completions", {"model": "fake", "messages": MSG, "n": 3})
    assert over.status == 400
    error = (await over.json())["error"]
    assert error["param"] == "n" and "at most 2" in error["message"]


async def test_a_failing_choice_fails_the_request_and_closes_all(start: Start) -> None:
    backend = FakeBackend(fail_at=1, error=RuntimeError("boom"))
    gw = await start({"fake": backend})
    r = await gw.post("/v1/chat/completions", {"model": "fake", "messages": MSG, "n": 2})
    assert r.status == 500
    assert backend.closed == 2


async def test_openai_fields_accepted_and_ignored(start: Start) -> None:
    backend = FakeBackend()
    gw = await start({"fake": backend})
    client = gw.openai()
    r = await client.chat.completions.create(
        model="fake",
        messages=MSG,  # type: ignore[arg-type]
        store=True,
        metadata={"team": "a"},
        service_tier="auto",
        user="u1",
        prompt_cache_key="k",
        prompt_cache_retention="24h",
        safety_identifier="s",
        reasoning_effort="low",
        verbosity="medium",
        modalities=["text"],
        parallel_tool_calls=True,
        logit_bias={"5": 1},
        stream_options=None,
        extra_body={"prompt_cache_options": {"mode": "implicit", "ttl": "30m"}},
    )
    assert r.choices[0].message.content == "Hello!"
    assert backend.requests[0].sampling.logit_bias == {5: 1.0}
    with_refused = client.chat.completions.create(
        model="fake",
        messages=MSG,  # type: ignore[arg-type]
        metadata={"team": "a"},
    )
    try:
        await with_refused
    except openai.BadRequestError as exc:
        assert exc.param == "metadata"
    else:  # pragma: no cover - the assertion below reports it
        raise AssertionError("metadata without store was accepted")


def test_choice_seeds() -> None:
    r = GenerationRequest(model="m", seed=2**63 - 1, request_id="r")
    assert choice_request(r, 0) is r
    assert choice_request(r, 1).seed == 2**63 - 2
    assert choice_request(r, 1).request_id == "r-1"
    assert choice_request(GenerationRequest(model="m"), 3).seed is None
