"""The embedded engine through its real gRPC Session stream on a real model (SmolLM2-135M)."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from support import assert_equal_or_near_tie

from tightwad.agent.server import AgentServer
from tightwad.errors import ContextLengthError, InvalidRequestError, NotFoundError
from tightwad.gateway.engine_client import EngineClient
from tightwad.spec.sampling import SamplingConfig

pytestmark = pytest.mark.engine

GREEDY = SamplingConfig()
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n",
    "List three colors:\n1.",
    "Once upon a time, in a small village,",
]


async def _greedy_plain(client: EngineClient, prompt: list[int], n: int) -> list[int]:
    """The target alone: one plain step at a time (Verify with no draft)."""
    s = client.session()
    await s.open(prompt, GREEDY)
    out = []
    for _ in range(n):
        out.append((await s.verify([])).next_token)
    await s.close()
    return out


@pytest.fixture
async def client(smollm_agent: AgentServer):
    c = EngineClient(smollm_agent.address, "smollm")
    yield c
    await c.close()


async def _tokens(client: EngineClient, text: str) -> list[int]:
    return await client.tokenize(text, add_special=True, parse_special=True)


async def test_info_reports_model_and_capabilities(client: EngineClient) -> None:
    info = await client.info()
    assert info.n_vocab == 49152
    assert info.can_verify and info.can_draft and info.can_render_chat
    assert info.architecture == "llama"
    assert len(info.vocab_fingerprint) == 64
    assert info.eog_token_ids


async def test_verify_own_continuation_accepts_all_and_gives_bonus(client: EngineClient) -> None:
    prompt = await _tokens(client, PROMPTS[0])
    plain = await _greedy_plain(client, prompt, 9)
    s = client.session()
    await s.open(prompt, GREEDY)
    first = await s.verify([])
    assert first.next_token == plain[0]
    res = await s.verify(plain[1:9])
    await s.close()
    assert res.accepted == 8
    assert res.next_token == (await _greedy_plain(client, prompt, 10))[9]


@pytest.mark.parametrize("j", [0, 3, 6])
async def test_corrupted_draft_is_accepted_up_to_the_corruption(
    client: EngineClient, j: int
) -> None:
    prompt = await _tokens(client, PROMPTS[1])
    plain = await _greedy_plain(client, prompt, 9)
    draft = list(plain[1:9])
    draft[j] = (draft[j] + 17) % 49152
    s = client.session()
    await s.open(prompt, GREEDY)
    await s.verify([])
    res = await s.verify(draft)
    assert res.accepted == j
    assert res.next_token == plain[1 + j]
    # The session continues exactly as the target alone would.
    nxt = await s.verify([])
    await s.close()
    assert nxt.next_token == plain[2 + j]


async def test_after_partial_accept_session_equals_fresh_prefill(client: EngineClient) -> None:
    prompt = await _tokens(client, PROMPTS[2])
    plain = await _greedy_plain(client, prompt, 12)
    draft = [*plain[1:7], 5, 6]
    s = client.session()
    await s.open(prompt, GREEDY)
    await s.verify([])
    res = await s.verify(draft)
    assert res.accepted == 6
    committed = [plain[0], *plain[1:7], res.next_token]
    follow = [(await s.verify([])).next_token for _ in range(3)]
    await s.close()
    fresh = client.session()
    await fresh.open(prompt + committed, GREEDY)
    expect = [(await fresh.verify([])).next_token for _ in range(3)]
    await fresh.close()
    assert follow == expect


async def test_draft_streams_greedy_tokens_and_syncs(client: EngineClient) -> None:
    prompt = await _tokens(client, PROMPTS[3])
    plain = await _greedy_plain(client, prompt, 10)
    d = client.session()
    await d.open(prompt, GREEDY)
    # The drafter proposes the model's own greedy continuation, one-hot (q is None).
    prop = await d.draft(4, keep=len(prompt))
    assert list(prop.tokens) == plain[:4]
    assert prop.q is None
    assert all(0.0 < p <= 1.0 for p in prop.probs)
    # Sync: keep prompt + 2 drafted, append the target's correction, draft on from there.
    prop2 = await d.draft(3, keep=len(prompt) + 2, append=[plain[2]])
    assert list(prop2.tokens) == plain[3:6]
    # A confidence floor above 1 stops before proposing anything.
    prop3 = await d.draft(3, keep=len(prompt) + 6, min_confidence=1.01)
    assert prop3.tokens == () and prop3.stop == "DRAFT_STOP_LOW_CONFIDENCE"
    await d.close()


async def test_sampled_draft_sends_its_sparse_q(client: EngineClient) -> None:
    prompt = await _tokens(client, PROMPTS[3])
    d = client.session()
    await d.open(prompt, SamplingConfig(temperature=0.8, top_k=20), seed=7)
    prop = await d.draft(4, keep=len(prompt), top_m=8)
    await d.close()
    assert prop.q is not None and len(prop.q) == len(prop.tokens) == 4
    for tok, q in zip(prop.tokens, prop.q, strict=True):
        assert q.size <= 8
        assert q.prob_of(tok) > 0
        assert abs(float(np.sum(q.probs)) - 1.0) < 1e-6


async def test_sessions_are_freed_on_close_cancel_and_drop(
    client: EngineClient, smollm_agent: AgentServer
) -> None:
    engine = smollm_agent.registry.get("smollm")
    prompt = await _tokens(client, PROMPTS[0])
    a, b, c = client.session(), client.session(), client.session()
    for s in (a, b, c):
        await s.open(prompt, GREEDY)
    assert engine.live_sessions == 3
    await a.close()
    b.abort()
    await c.verify([])
    # Drop: the client goes away without closing (channel closed under the stream).
    other = EngineClient(smollm_agent.address, "smollm")
    d = other.session()
    await d.open(prompt, GREEDY)
    await other.close()
    c.abort()
    for _ in range(100):
        if engine.live_sessions == 0:
            break
        await asyncio.sleep(0.02)
    assert engine.live_sessions == 0


async def _greedy_with_gaps(
    client: EngineClient, prompt: list[int], n: int
) -> tuple[list[int], list[float]]:
    s = client.session()
    await s.open(prompt, GREEDY, top_logprobs=2)
    tokens, gaps = [], []
    for _ in range(n):
        v = await s.verify([])
        tokens.append(v.next_token)
        top = v.logprobs[0].top
        gaps.append(top[0].logprob - top[1].logprob)
    await s.close()
    return tokens, gaps


async def test_sixteen_concurrent_sessions_are_independent(client: EngineClient) -> None:
    """No cross-talk: each concurrent run equals its own sequential run, or first differs at a
    near-tie of the target's top two choices (cache layout and batch mates, the concurrent
    steps sharing forward passes, change the last bits)."""
    texts = [f"{PROMPTS[i % 4]} {i}" for i in range(16)]
    prompts = [await _tokens(client, t) for t in texts]
    sequential = [await _greedy_with_gaps(client, p, 8) for p in prompts]
    concurrent = await asyncio.gather(*(_greedy_with_gaps(client, p, 8) for p in prompts))
    identical = 0
    for i, ((ref, gaps), (got, _)) in enumerate(zip(sequential, concurrent, strict=True)):
        identical += assert_equal_or_near_tie(ref, got, gaps, what=f"prompt {i}")
    # The bound is the near-tie check above; most runs still match token for token.
    assert identical >= 6


async def test_prefix_cache_is_reused(client: EngineClient) -> None:
    long = await _tokens(client, "Shared preamble. " * 20 + "Question one?")
    other = await _tokens(client, "Shared preamble. " * 20 + "Question two?")
    s1 = client.session()
    await s1.open(long, GREEDY)
    await s1.close()
    s2 = client.session()
    opened = await s2.open(other, GREEDY)
    r = await s2.verify([])
    await s2.close()
    assert opened.cached_tokens >= 60
    assert r.next_token == (await _greedy_plain(client, other, 1))[0]


async def test_errors_reach_the_caller_as_statuses(smollm_agent: AgentServer) -> None:
    missing = EngineClient(smollm_agent.address, "no-such-model")
    with pytest.raises(NotFoundError, match="not loaded"):
        await missing.info()
    await missing.close()
    client = EngineClient(smollm_agent.address, "smollm")
    s = client.session()
    with pytest.raises(InvalidRequestError, match="before open"):
        await s.verify([1])
    s2 = client.session()
    with pytest.raises(ContextLengthError):
        await s2.open([1] * 2000, GREEDY)
    s3 = client.session()
    with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
        await s3.open([10**6], GREEDY)
    await client.close()


async def test_raw_grpc_reflection_and_health(smollm_agent: AgentServer) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(smollm_agent.address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        r = await stub.Check(health_pb2.HealthCheckRequest(service="tightwad.v1.EngineService"))
        assert r.status == health_pb2.HealthCheckResponse.SERVING
