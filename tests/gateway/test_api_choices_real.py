"""``n`` choices and OpenAI's bookkeeping fields against a live gateway on a real SmolLM2
engine (n-gram speculation), with the real ``openai`` client: greedy choices equal the n=1
answer (or depart from it only at a near-tie), seeded sampled choices stream to exactly the
non-streamed choices (interleaved by index) and differ from each other, usage counts the
prompt once; accepted fields pass, refused ones get OpenAI's 400."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest
from support import assert_equal_or_near_tie, live_gateway

pytestmark = [pytest.mark.engine]

ASK = [{"role": "user", "content": "Write a short poem about the sea."}]


@pytest.fixture
async def client(smollm_path: Path) -> AsyncIterator[openai.AsyncOpenAI]:
    async with live_gateway("smol", smollm_path, ctx_size=1024) as url:
        c = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        try:
            yield c
        finally:
            await c.close()


def _tokens(choice: object) -> list[str]:
    lp = choice.logprobs  # type: ignore[attr-defined]
    assert lp is not None and lp.content
    return [t.token for t in lp.content]


async def test_greedy_choices_equal_the_single_answer(client: openai.AsyncOpenAI) -> None:
    """Each greedy choice is the n=1 answer, or departs from it only at a near-tie of its top
    two logprobs (the choices share one prefill, so their first tokens come from one cache;
    batch mates may still change the last bits of a later step)."""
    kw = {
        "model": "smol",
        "messages": ASK,
        "temperature": 0,
        "max_tokens": 24,
        "logprobs": True,
        "top_logprobs": 2,
    }
    one = await client.chat.completions.create(**kw)  # type: ignore[call-overload]
    two = await client.chat.completions.create(n=2, **kw)  # type: ignore[call-overload]
    assert [c.index for c in two.choices] == [0, 1]
    expected = one.choices[0].message.content
    assert expected
    ref = _tokens(one.choices[0])
    assert one.choices[0].logprobs is not None and one.choices[0].logprobs.content
    gaps = [
        t.top_logprobs[0].logprob - t.top_logprobs[1].logprob
        for t in one.choices[0].logprobs.content
    ]
    lengths = []
    for c in two.choices:
        got = _tokens(c)
        lengths.append(len(got))
        if assert_equal_or_near_tie(ref, got, gaps, what=f"choice {c.index}"):
            assert c.message.content == expected
            assert c.finish_reason == one.choices[0].finish_reason
    assert one.usage is not None and two.usage is not None
    assert two.usage.prompt_tokens == one.usage.prompt_tokens
    assert two.usage.completion_tokens == sum(lengths)


async def test_seeded_choices_stream_to_the_whole_answer(client: openai.AsyncOpenAI) -> None:
    kw = {
        "model": "smol",
        "messages": ASK,
        "temperature": 1.0,
        "seed": 11,
        "max_tokens": 24,
        "n": 2,
        "logprobs": True,
    }
    whole = await client.chat.completions.create(**kw)  # type: ignore[call-overload]
    texts = [c.message.content for c in whole.choices]
    assert texts[0] != texts[1]  # each choice samples with its own seed
    for c in whole.choices:
        assert c.logprobs is not None and c.logprobs.content
    stream = await client.chat.completions.create(  # type: ignore[call-overload]
        stream=True, stream_options={"include_usage": True}, **kw
    )
    got = {0: "", 1: ""}
    finish: dict[int, str] = {}
    usage = None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            got[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
    assert [got[0], got[1]] == texts
    assert finish == {c.index: c.finish_reason for c in whole.choices}
    assert usage is not None and whole.usage is not None
    assert usage.completion_tokens == whole.usage.completion_tokens
    assert usage.prompt_tokens == whole.usage.prompt_tokens


async def test_accepted_fields_pass_and_refused_ones_are_400(client: openai.AsyncOpenAI) -> None:
    r = await client.chat.completions.create(
        model="smol",
        messages=ASK,  # type: ignore[arg-type]
        max_tokens=4,
        store=True,
        metadata={"who": "test"},
        service_tier="auto",
        user="u",
        prompt_cache_key="sea",
        safety_identifier="s1",
        reasoning_effort="low",
        verbosity="low",
        modalities=["text"],
    )
    assert r.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(
            model="smol",
            messages=ASK,  # type: ignore[arg-type]
            metadata={"who": "test"},
        )
    assert info.value.param == "metadata"
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="smol", messages=ASK, n=9)  # type: ignore[arg-type]
    assert info.value.param == "n"
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(
            model="smol",
            messages=ASK,  # type: ignore[arg-type]
            modalities=["text", "audio"],
        )
    assert info.value.code == "unsupported_parameter"
