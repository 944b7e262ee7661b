"""The llama-server adapter against the real ``llama-server`` binary serving SmolLM2-135M.

The reference is the embedded engine on the same GGUF: same vocabulary (byte for byte), same
template, and the same greedy continuation (or a divergence only at a near-tie of the
embedded engine's top two logprobs: the two are different builds of the same kernels).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from support import assert_equal_or_near_tie

from tightwad.agent.server import AgentServer, AgentSettings
from tightwad.engine.adapters.base import AdapterConfig
from tightwad.engine.adapters.llama_server import LlamaServerEngine
from tightwad.engine.contract import DraftEnd, DraftStep, DraftStop, Message
from tightwad.engine.engine_config import EngineConfig
from tightwad.engine.llama_engine import Engine
from tightwad.errors import InvalidRequestError
from tightwad.gateway.engine_client import EngineClient
from tightwad.spec.sampling import SamplingConfig

pytestmark = [pytest.mark.engine, pytest.mark.cluster]

GREEDY = SamplingConfig()
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n",
    "Once upon a time, in a small village,",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _llama_server_bin() -> Path:
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [str(root / "scripts" / "build_llama.sh"), "bin"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip().splitlines()[-1]) / "llama-server"


@contextlib.contextmanager
def run_llama_server(model: Path, *, ctx: int = 2048) -> Iterator[str]:
    """A real llama-server on a free loopback port; yields its URL once /health is ok."""
    port = _free_port()
    proc = subprocess.Popen(
        [
            str(_llama_server_bin()),
            "-m",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "-c",
            str(ctx),
            "-np",
            "2",
            "-t",
            "2",
            "--jinja",
            "--no-webui",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("llama-server did not become healthy in 60 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def llama_url(smollm_path: Path) -> Iterator[str]:
    with run_llama_server(smollm_path) as url:
        yield url


@pytest.fixture
async def adapter(llama_url: str) -> AsyncIterator[LlamaServerEngine]:
    engine = await LlamaServerEngine.connect(AdapterConfig(model_id="smollm-http", url=llama_url))
    try:
        yield engine
    finally:
        await engine.close()


@pytest.fixture
async def embedded(smollm_path: Path) -> AsyncIterator[Engine]:
    engine = await Engine.load(
        EngineConfig(model_id="smollm", path=smollm_path, ctx_size=1024, max_sessions=2, threads=2)
    )
    try:
        yield engine
    finally:
        await engine.close()


async def test_vocabulary_and_tokenizer_match_the_gguf(
    adapter: LlamaServerEngine, embedded: Engine
) -> None:
    assert await adapter.pieces() == await embedded.pieces()
    assert await adapter.special_tokens() == await embedded.special_tokens()
    assert await adapter.vocab_fingerprint() == await embedded.vocab_fingerprint()
    text = "Héllo wörld 😀 <|im_start|>user\n  indented\tcode()"
    for add_special, parse_special in ((True, True), (False, False)):
        ids = await adapter.tokenize(text, add_special=add_special, parse_special=parse_special)
        assert ids == await embedded.tokenize(
            text, add_special=add_special, parse_special=parse_special
        )
    ids = await adapter.tokenize(text, add_special=False, parse_special=False)
    assert (await adapter.detokenize(ids, render_special=False)).decode() == text
    special = await adapter.tokenize(text, add_special=False, parse_special=True)
    assert (await adapter.detokenize(special, render_special=True)).decode() == text


async def test_info_is_honest(adapter: LlamaServerEngine, embedded: Engine) -> None:
    info, ref = await adapter.info(), await embedded.info()
    assert (info.can_verify, info.can_draft, info.kind) == (False, True, "llama_server")
    assert info.n_vocab == ref.n_vocab == 49152
    assert info.eog_token_ids == ref.eog_token_ids
    assert info.bos_token_id == ref.bos_token_id
    assert info.architecture == "llama" and info.n_layers == 30
    assert info.n_ctx > 0 and info.has_chat_template


async def test_render_chat_matches_the_embedded_template(
    adapter: LlamaServerEngine, embedded: Engine
) -> None:
    msgs = [Message("system", "Be brief."), Message("user", "Name a colour.")]
    assert await adapter.render_chat(msgs, add_generation_prompt=True) == (
        await embedded.render_chat(msgs, add_generation_prompt=True)
    )


async def _reference(engine: Engine, prompt: list[int], n: int) -> tuple[list[int], list[float]]:
    s, _, _ = await engine.open_session(prompt, GREEDY, top_logprobs=2)
    toks, gaps = [], []
    try:
        async for tok, lp, why in s.generate(n, ignore_eos=True):
            toks.append(tok)
            assert lp is not None
            gaps.append(lp.top[0][1] - lp.top[1][1])
            if why is not None:
                break
    finally:
        s.release()
    return toks, gaps


async def test_plain_generation_equals_the_embedded_engine(
    adapter: LlamaServerEngine, embedded: Engine
) -> None:
    for text in PROMPTS:
        prompt = await embedded.tokenize(text, add_special=True, parse_special=True)
        ref, gaps = await _reference(embedded, prompt, 12)
        s, _, _ = await adapter.open_session(prompt, GREEDY, logprobs=True, top_logprobs=2)
        got = [tok async for tok, _lp, _why in s.generate(12, ignore_eos=True)]
        s.release()
        assert len(got) == 12
        assert_equal_or_near_tie(ref, got, gaps, what=repr(text))
    await asyncio.sleep(0)
    assert adapter.live_sessions == 0


async def test_drafting_returns_k_greedy_tokens(
    adapter: LlamaServerEngine, embedded: Engine
) -> None:
    prompt = await embedded.tokenize(PROMPTS[0], add_special=True, parse_special=True)
    ref, gaps = await _reference(embedded, prompt, 12)
    s, _, _ = await adapter.open_session(prompt, GREEDY)
    items = [st async for st in s.draft(6, keep=len(prompt), append=[])]
    steps = [st for st in items if isinstance(st, DraftStep)]
    assert len(steps) == 6 and items[-1] == DraftEnd(DraftStop.LENGTH)
    assert all(st.q is None and 0.0 < st.prob <= 1.0 for st in steps)
    assert_equal_or_near_tie(ref[:6], [st.token_id for st in steps], gaps, what="draft")
    # Re-align as the gateway does: keep the prompt + the first 2, append the target's token.
    items = [st async for st in s.draft(4, keep=len(prompt) + 2, append=[ref[2]])]
    assert len(items) == 5 and isinstance(items[-1], DraftEnd)
    assert s.tokens[: len(prompt) + 3] == [*prompt, *ref[:3]]
    s.release()


async def test_sampled_draft_reports_the_distribution_it_drew_from(
    adapter: LlamaServerEngine,
) -> None:
    prompt = await adapter.tokenize(PROMPTS[2], add_special=True, parse_special=True)
    s, _, _ = await adapter.open_session(prompt, SamplingConfig(temperature=0.9), seed=7)
    items = [st async for st in s.draft(4, keep=len(prompt), append=[], top_m=8)]
    steps = [st for st in items if isinstance(st, DraftStep)]
    s.release()
    assert len(steps) == 4
    for st in steps:
        assert st.q is not None and len(st.q.token_ids) <= 8
        assert abs(float(st.q.probs.sum()) - 1.0) < 1e-6
        assert st.token_id in {int(t) for t in st.q.token_ids}


async def test_served_over_grpc_it_refuses_to_verify_a_draft(
    adapter: LlamaServerEngine, embedded: Engine
) -> None:
    agent = AgentServer(AgentSettings(listen="127.0.0.1:0", node_service=False))
    agent.registry.add(adapter)
    await agent.start()
    client = EngineClient(agent.address, "smollm-http")
    try:
        info = await client.info()
        assert (info.can_verify, info.can_draft, info.kind) == (
            False,
            True,
            "ENGINE_KIND_LLAMA_SERVER",
        )
        prompt = await client.tokenize(PROMPTS[0], add_special=True, parse_special=True)
        ref, gaps = await _reference(embedded, prompt, 4)
        s = client.session(timeout_s=30)
        await s.open(prompt, GREEDY)
        got = [(await s.verify([])).next_token for _ in range(4)]
        assert_equal_or_near_tie(ref, got, gaps, what="grpc plain steps")
        with pytest.raises(InvalidRequestError, match="cannot verify"):
            await s.verify([ref[0], ref[1]])
        s.abort()
    finally:
        await client.close()
        agent.registry.remove("smollm-http")  # the fixture closes the adapter
        await agent.stop(grace=0.5)
