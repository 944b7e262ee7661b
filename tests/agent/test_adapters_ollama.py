"""The Ollama adapter against a test double speaking Ollama's documented API (fake_ollama.py).

Ollama cannot run here; the double streams NDJSON exactly as Ollama's docs describe, and its
deterministic text source lets each test compare the adapter's output with what the server
produced. The adapter's tokens are the UTF-8 bytes of that text plus one end marker.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest

from tightwad.engine.adapters.base import AdapterConfig
from tightwad.engine.adapters.ollama import BYTES_PER_TOKEN, EOG_ID, OllamaEngine
from tightwad.engine.contract import Message
from tightwad.engine.grammar import json_object_spec
from tightwad.errors import InvalidRequestError, UnavailableError
from tightwad.spec.sampling import SamplingConfig

from .fake_ollama import VERSION, FakeOllama, continuation, serve


@pytest.fixture
def fake() -> FakeOllama:
    return FakeOllama()


@pytest.fixture
async def url(fake: FakeOllama) -> AsyncIterator[str]:
    async for base in serve(fake):
        yield base


async def _connect(url: str, model: str = "toy", **kwargs: object) -> OllamaEngine:
    cfg = AdapterConfig(model_id="ollama-toy", url=url, server_model=model, **kwargs)  # type: ignore[arg-type]
    return await OllamaEngine.connect(cfg)


@pytest.fixture
async def engine(url: str) -> AsyncIterator[OllamaEngine]:
    e = await _connect(url)
    yield e
    await e.close()


async def _run(engine: OllamaEngine, prompt: str, n: int = 200, **sampling: object):
    """Plain generation of up to ``n`` tokens: (text, last stop reason, ended with EOG)."""
    ids = await engine.tokenize(prompt, add_special=True, parse_special=True)
    s, _, _ = await engine.open_session(ids, SamplingConfig(**sampling), seed=7)  # type: ignore[arg-type]
    try:
        got = [(t, why) async for t, _lp, why in s.generate(n)]
    finally:
        s.release()
    tokens = [t for t, _ in got]
    eog = tokens[-1] == EOG_ID
    text = bytes(t for t in tokens if t != EOG_ID).decode("utf-8")
    return text, got[-1][1], eog


async def test_info_is_honest_about_a_text_only_server(engine: OllamaEngine) -> None:
    info = await engine.info()
    assert info.kind == "ollama"
    assert (info.can_verify, info.can_draft, info.can_logprobs) == (False, False, False)
    assert info.architecture == "llama" and info.n_layers == 4
    assert info.n_ctx_train == 8192
    assert info.n_ctx == BYTES_PER_TOKEN * 512  # num_ctx of the model's parameters, in bytes
    assert info.n_vocab == 257 and info.eog_token_ids == (EOG_ID,)
    assert info.engine_version == f"ollama {VERSION}" and info.has_chat_template
    pieces = await engine.pieces()
    assert pieces[ord("a")] == b"a" and pieces[EOG_ID] == b""
    assert await engine.special_tokens() == [EOG_ID]
    assert "toy:latest" in await engine.list_models()


async def test_generation_streams_the_servers_text_in_raw_mode(
    engine: OllamaEngine, fake: FakeOllama
) -> None:
    prompt = "Tell me a story:"
    text, why, eog = await _run(engine, prompt)
    expected, reason = continuation(prompt, 1000)
    assert reason == "stop" and text == expected
    assert "café ate 🦙 naïve" in text  # multi-byte UTF-8 survives the byte tokens
    assert eog and why == "eog"
    body = fake.requests[-1]
    assert body["model"] == "toy" and body["prompt"] == prompt
    assert body["raw"] is True and body["stream"] is True
    opts = body["options"]
    assert opts["temperature"] == 0.0 and opts["top_k"] == 0 and opts["repeat_penalty"] == 1.0
    assert opts["num_predict"] == 512  # the read-ahead, in bytes: never fewer tokens than that


async def test_num_predict_bounds_each_request_and_the_session_continues(
    url: str, fake: FakeOllama
) -> None:
    engine = await _connect(url, readahead_tokens=16)
    try:
        prompt = "Count the"
        text, why, eog = await _run(engine, prompt, n=200)
    finally:
        await engine.close()
    bodies = fake.requests
    assert len(bodies) >= 3 and all(b["options"]["num_predict"] == 16 for b in bodies)
    # Each request continues the text so far (raw mode), so the output is one generation.
    assert bodies[1]["prompt"].startswith(prompt) and len(bodies[1]["prompt"]) > len(prompt)
    expected, _ = continuation(prompt, 200)
    assert text == expected.encode()[:200].decode() and why == "length" and not eog


async def test_a_stop_sequence_of_the_model_ends_the_text_before_it(url: str) -> None:
    engine = await _connect(url, model="toy-stop")
    try:
        text, why, eog = await _run(engine, "Look at the quick")
    finally:
        await engine.close()
    assert text == " brown fox jumps over" and eog and why == "eog"


async def test_sampling_parameters_go_by_ollamas_names(
    engine: OllamaEngine, fake: FakeOllama
) -> None:
    await _run(
        engine,
        "Hello",
        n=4,
        temperature=0.7,
        top_k=40,
        top_p=0.9,
        min_p=0.05,
        repeat_penalty=1.1,
        penalty_last_n=32,
        presence_penalty=0.5,
        frequency_penalty=0.25,
    )
    opts = fake.requests[-1]["options"]
    assert {k: opts[k] for k in opts if k != "seed"} == {
        "num_predict": 512,
        "temperature": 0.7,
        "top_k": 40,
        "top_p": 0.9,
        "min_p": 0.05,
        "repeat_penalty": 1.1,
        "repeat_last_n": 32,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "typical_p": 1.0,
        "mirostat": 0,
    }
    assert isinstance(opts["seed"], int) and 0 <= opts["seed"] < 2**31


async def test_what_ollama_cannot_do_is_refused_clearly(engine: OllamaEngine) -> None:
    ids = await engine.tokenize("Hello", add_special=True, parse_special=True)
    s, _, _ = await engine.open_session(ids, SamplingConfig())
    with pytest.raises(InvalidRequestError, match="cannot verify"):
        await s.verify([ord("x")])
    with pytest.raises(InvalidRequestError, match="cannot draft"):
        async for _ in s.draft(4, keep=len(ids), append=[]):
            pass
    s.release()
    with pytest.raises(InvalidRequestError, match="no token probabilities"):
        await engine.open_session(ids, SamplingConfig(), logprobs=True)
    with pytest.raises(InvalidRequestError, match="no logit bias"):
        await engine.open_session(ids, SamplingConfig(logit_bias={1: 2.0}))
    with pytest.raises(InvalidRequestError, match="not UTF-8"):
        await engine.open_session([0xFF, 0xFE], SamplingConfig())
    with pytest.raises(InvalidRequestError, match="grammar"):
        await engine.open_session(ids, SamplingConfig(), grammar=json_object_spec())
    tools = '[{"type": "function", "function": {"name": "f"}}]'
    with pytest.raises(InvalidRequestError, match="tools") as err:
        await engine.render_chat(
            [Message("user", "Hi")], add_generation_prompt=True, tools_json=tools
        )
    assert err.value.param == "tools"
    called = Message("assistant", "", tool_calls_json=tools)
    with pytest.raises(InvalidRequestError, match="tools"):
        await engine.render_chat([called], add_generation_prompt=True)
    assert engine.live_sessions == 0


async def test_chat_uses_the_ggufs_jinja_template_or_is_refused(url: str) -> None:
    engine = await _connect(url)
    plain = await _connect(url, model="plain")
    try:
        text, ids = await engine.render_chat([Message("user", "Hi")], add_generation_prompt=True)
        assert text == "<|user|>Hi\n<|assistant|>" and bytes(ids).decode() == text
        assert not (await plain.info()).has_chat_template
        with pytest.raises(InvalidRequestError, match="Go template"):
            await plain.render_chat([Message("user", "Hi")], add_generation_prompt=True)
    finally:
        await engine.close()
        await plain.close()


async def test_an_unknown_model_is_named_with_what_the_server_has(url: str) -> None:
    with pytest.raises(UnavailableError, match=r"has no model 'nope' \(it has: toy:latest, "):
        await _connect(url, model="nope")
    with pytest.raises(UnavailableError, match="cannot generate text"):
        await _connect(url, model="embed")


async def test_server_errors_become_our_errors(engine: OllamaEngine, fake: FakeOllama) -> None:
    fake.fail_status = 500
    with pytest.raises(UnavailableError, match=r"HTTP 500: llama runner process has terminated"):
        await _run(engine, "Hello")
    fake.fail_status = 400
    with pytest.raises(InvalidRequestError, match="refused the request: llama runner"):
        await _run(engine, "Hello")
    fake.fail_status = None
    fake.fail_after = 3  # an error line once streaming has begun
    with pytest.raises(UnavailableError, match="error was encountered while running the model"):
        await _run(engine, "Hello")
    assert engine.live_sessions == 0


async def test_an_unreachable_server_is_named() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UnavailableError, match=rf"Ollama at http://127.0.0.1:{port}/api/version"):
        await _connect(f"http://127.0.0.1:{port}")


# --- OllamaClient: the text API the gateway uses (passthrough targets, text drafters) --------


async def test_the_text_client_streams_chat_with_ollamas_counts(url: str) -> None:
    from tightwad.engine.adapters.ollama import OllamaClient, ollama_options

    from .fake_ollama import render_chat

    client = OllamaClient(url, "toy")
    try:
        model = await client.probe()
        assert (model.name, model.n_ctx, model.version) == ("toy", 512, VERSION)
        messages = [{"role": "user", "content": "Tell me a story"}]
        options = ollama_options(SamplingConfig(), num_predict=4, stop=("x",))
        assert options["num_predict"] == 4 and options["stop"] == ["x"]
        chunks = [c async for c in client.chat(messages, options)]
    finally:
        await client.close()
    *pieces, last = chunks
    expected, _ = continuation(render_chat(messages), 4)
    assert "".join(c.text for c in pieces) == expected and not any(c.done for c in pieces)
    assert last.done and last.done_reason == "length"
    assert (last.prompt_eval_count, last.eval_count) == (len(render_chat(messages).split()), 4)


async def test_the_text_client_raises_on_an_error_line(url: str, fake: FakeOllama) -> None:
    from tightwad.engine.adapters.ollama import OllamaClient

    fake.fail_after = 2
    client = OllamaClient(url, "toy")
    try:
        got: list[str] = []
        with pytest.raises(UnavailableError, match="error was encountered"):
            async for c in client.generate("Look at the quick", {"num_predict": 10}):
                got.append(c.text)
        assert len(got) == 2
    finally:
        await client.close()
