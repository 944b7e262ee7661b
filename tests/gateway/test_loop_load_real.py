"""Speculation under load on a real engine: several concurrent requests through a real gateway
route with n-gram drafting, over SmolLM2-135M, on an engine that steps its sessions one
command at a time and on one that batches them (their steps share a ``llama_decode``). Each
greedy output equals the target decoding alone or departs at a near-tie (batch mates change
the numerics in the last bits), the route counts its live runs while they run and none after,
each response's stats say the load its control priced its rounds at (the live runs on the
batching engine, 1 on the serial one: its runs take turns), and the route's status shows the
engine's batch occupancy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import openai
import pytest
from support import NEAR_TIE_LOGPROB_GAP

from tightwad.engine.engine_config import EngineConfig
from tightwad.engine.server import EngineServer
from tightwad.gateway.api import GatewaySettings
from tightwad.gateway.engine_client import EngineClient
from tightwad.gateway.loop import RouteSpec
from tightwad.gateway.server import GatewayServer
from tightwad.spec.detok import IncrementalDetokenizer
from tightwad.spec.sampling import SamplingConfig

pytestmark = pytest.mark.engine

# Prompts that quote what the answer repeats, so n-gram drafts are proposed and accepted.
PROMPTS = [
    "Repeat exactly: one two three four five six seven eight nine ten",
    "Repeat this code exactly:\ndef add(a, b):\n    return a + b\n",
    "Copy this list: apples, pears, plums, cherries, grapes, melons",
    "Write a Python function that returns the square of a number.",
]
TOKENS = 32


@dataclass
class Stack:
    url: str
    target: EngineClient
    client: openai.AsyncOpenAI
    batching: bool


# Sessions stepped one command at a time, and batched (their steps share a llama_decode).
@pytest.fixture(params=[False, True], ids=["serial", "batched"])
async def stack(smollm_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    batching = bool(request.param)
    cfg = EngineConfig(
        "smol", smollm_path, ctx_size=1024, max_sessions=8, threads=2, batch_steps=batching
    )
    engine = EngineServer("127.0.0.1:0", engines=(cfg,))
    address = await engine.start()
    route = RouteSpec(
        name="spec", target=EngineClient(address, "smol"), draft_mode="ngram", max_draft_tokens=16
    )
    gateway = GatewayServer([route], GatewaySettings(), host="127.0.0.1", port=0)
    url = await gateway.start()
    target = EngineClient(address, "smol")
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    try:
        yield Stack(url, target, client, batching)
    finally:
        await client.close()
        await target.close()
        await gateway.stop()
        await engine.stop(grace=0.5)


async def _target_alone(s: Stack, content: str) -> tuple[list[int], list[float]]:
    """Greedy reference, alone on the engine: one plain step at a time, top-2 gap at each."""
    prompt = await s.target.render_chat([("user", content, "")])
    eog = (await s.target.info()).eog_token_ids
    sess = s.target.session()
    await sess.open(prompt, SamplingConfig(), top_logprobs=2)
    tokens: list[int] = []
    gaps: list[float] = []
    for _ in range(TOKENS):
        v = await sess.verify([])
        top = v.logprobs[0].top
        gaps.append(top[0].logprob - top[1].logprob)
        if v.next_token in eog:
            break
        tokens.append(v.next_token)
    await sess.close()
    return tokens, gaps


async def _divergence(s: Stack, ref: list[int], text: str) -> int | None:
    """Index of the first reference token whose text the output does not continue with."""
    pieces, _, _ = await s.target.vocabulary()
    det = IncrementalDetokenizer(pieces)
    so_far = ""
    for i, tok in enumerate(ref):
        so_far += det.push(tok)
        if not text.startswith(so_far):
            return i
    so_far += det.flush()
    return None if text == so_far else len(ref)


async def _route_details(http: aiohttp.ClientSession, url: str) -> dict[str, object]:
    async with http.get(f"{url}/v1/tightwad/status") as resp:
        assert resp.status == 200
        body = await resp.json()
    (route,) = [r for r in body["routes"] if r["name"] == "spec"]
    return route["details"]


async def _ask(s: Stack, content: str) -> openai.types.chat.ChatCompletion:
    return await s.client.chat.completions.create(
        model="spec",
        messages=[{"role": "user", "content": content}],
        max_tokens=TOKENS,
        temperature=0,
    )


async def test_concurrent_requests_equal_the_target_alone_and_show_their_load(
    stack: Stack,
) -> None:
    refs = [await _target_alone(stack, p) for p in PROMPTS]
    seen: list[int] = []
    async with aiohttp.ClientSession() as http:
        idle = await _route_details(http, stack.url)
        assert idle["live_runs"] == 0

        async def watch() -> None:
            while True:
                seen.append(int((await _route_details(http, stack.url))["live_runs"]))  # type: ignore[call-overload]
                await asyncio.sleep(0.02)

        watcher = asyncio.create_task(watch())
        try:
            answers = await asyncio.gather(*(_ask(stack, p) for p in PROMPTS))
        finally:
            watcher.cancel()
            with pytest.raises(asyncio.CancelledError):
                await watcher
        after = await _route_details(http, stack.url)
        # The target's batch occupancy, read in the background at most every 2 s: a batching
        # engine's readings come to show steps shared by several sessions.
        for _ in range(60):
            batch = (await _route_details(http, stack.url))["batch"]
            assert isinstance(batch, dict) and batch["enabled"] is stack.batching, batch
            if not stack.batching or batch["max_jobs"] >= 2:
                break
            await asyncio.sleep(0.1)
        if stack.batching:
            assert batch["max_jobs"] >= 2 and batch["decodes"] > 0, batch
            assert batch["max_sessions"] == 8, batch
        else:
            assert batch["decodes"] == 0 and batch["mean_sessions_per_step"] == 0.0, batch

    identical = 0
    loads = []
    for content, (ref, gaps), resp in zip(PROMPTS, refs, answers, strict=True):
        text = resp.choices[0].message.content or ""
        i = await _divergence(stack, ref, text)
        if i is None:
            identical += 1
        else:
            assert i < len(gaps) and gaps[i] < NEAR_TIE_LOGPROB_GAP, (
                f"{content!r}: departs from the target alone at token {i}: {text!r}"
            )
        stats = resp.model_extra["tightwad"]  # type: ignore[index]
        assert stats["mode"] == "ngram"
        loads.append(stats["mean_live_runs"])
    # Which outputs depart at a near-tie depends on the timing (the widths the load chose,
    # the KV cells the batch mates hold): seen from 1 to 4 of 4 identical here.
    assert identical >= 1
    if stack.batching:
        # Every request ran with others in the batch for part of its steps, never more than
        # all: its rounds were priced at the batch's width.
        assert all(1.0 <= load <= len(PROMPTS) for load in loads), loads
        assert max(loads) > 1.5, loads
    else:
        # The serial engine runs the steps in turn: every round priced alone, under load too.
        assert loads == [1.0] * len(PROMPTS), loads
    assert max(seen) >= 2, seen
    assert after["live_runs"] == 0  # every run counted out
    assert 2 <= after["peak_live_runs"] <= len(PROMPTS)  # type: ignore[operator]
    assert after["verify_ms_by_width"]  # calibrated: the table the load is priced on

    # Alone again: the control sees a load of one.
    alone = await _ask(stack, PROMPTS[0])
    assert alone.model_extra["tightwad"]["mean_live_runs"] == 1.0  # type: ignore[index]
