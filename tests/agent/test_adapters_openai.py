"""The OpenAI-compatible adapter against a test double speaking vLLM's wire format.

No vLLM can run here, so the double implements what vLLM documents: ``/v1/models`` (with
``max_model_len``), ``/tokenize`` (``prompt`` or ``messages``) and ``/detokenize``, and
``/v1/completions`` with a token-id ``prompt``, ``echo`` + ``logprobs`` (``top_logprobs`` per
prompt position, ``None`` for the first), ``return_tokens_as_token_ids`` (``token_id:N``) and
SSE streaming ending in ``data: [DONE]``. Its "model" is a fixed toy: bytes are tokens
(0..255), 256 is ``<|endoftext|>``, and the greedy next token is a function of the context.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence

import pytest
from aiohttp import web

from tightwad.engine.adapters.base import AdapterConfig
from tightwad.engine.adapters.openai_compat import OpenAICompatEngine
from tightwad.errors import InvalidRequestError
from tightwad.spec.sampling import SamplingConfig

EOS = 256
N_VOCAB = 257
MODEL = "toy-1b"


def _next(ctx: Sequence[int]) -> int:
    """The toy model's argmax after ``ctx``: lowercase letters, EOS after 40 tokens."""
    if len(ctx) >= 40:
        return EOS
    return 97 + (sum(ctx) * 7 + len(ctx)) % 26


def _top(ctx: Sequence[int], k: int) -> dict[str, float]:
    best = _next(ctx)
    second = 97 + (best - 97 + 1) % 26 if best != EOS else 32
    return dict(list({f"token_id:{best}": -0.1, f"token_id:{second}": -2.4}.items())[:k])


def _piece(t: int) -> str:
    return "<|endoftext|>" if t == EOS else bytes([t]).decode("latin-1")


class Double:
    def __init__(self, *, prompt_logprobs: bool = True) -> None:
        self.prompt_logprobs = prompt_logprobs
        self.requests: list[dict[str, object]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/tokenize", self.tokenize)
        app.router.add_post("/detokenize", self.detokenize)
        app.router.add_post("/v1/completions", self.completions)
        return app

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": MODEL, "object": "model", "owned_by": "vllm", "max_model_len": 512}
                ],
            }
        )

    def _encode(self, text: str) -> list[int]:
        out, i = [], 0
        while i < len(text):
            if text.startswith("<|endoftext|>", i):
                out.append(EOS)
                i += len("<|endoftext|>")
            else:
                out.extend(text[i].encode("latin-1"))
                i += 1
        return out

    async def tokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        if "messages" in body:
            text = "".join(f"[{m['role']}]{m['content']}\n" for m in body["messages"])
            text += "[assistant]" if body.get("add_generation_prompt") else ""
        else:
            text = body["prompt"]
        toks = self._encode(text)
        return web.json_response({"count": len(toks), "max_model_len": 512, "tokens": toks})

    async def detokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        if any(not 0 <= t < N_VOCAB for t in body["tokens"]):
            return web.json_response(
                {
                    "object": "error",
                    "message": "token id out of range",
                    "type": "BadRequestError",
                    "code": 400,
                },
                status=400,
            )
        return web.json_response({"prompt": "".join(_piece(t) for t in body["tokens"])})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        prompt: list[int] = body["prompt"]
        k = int(body.get("logprobs") or 0)
        out: list[int] = []
        ctx = list(prompt)
        for _ in range(int(body.get("max_tokens", 16))):
            t = _next(ctx)
            out.append(t)
            ctx.append(t)
            if t == EOS:
                break
        name = (lambda t: f"token_id:{t}") if body.get("return_tokens_as_token_ids") else _piece

        def logprobs(ids: list[int], start: int, echo: bool) -> dict[str, object]:
            tops: list[dict[str, float] | None] = []
            lps: list[float | None] = []
            full = prompt + out
            for i in range(start, start + len(ids)):
                if i == 0 or (echo and i < len(prompt) and not self.prompt_logprobs):
                    tops.append(None)
                    lps.append(None)
                    continue
                top = _top(full[:i], k)
                tops.append(top)
                lps.append(top.get(f"token_id:{full[i]}", -9.0))
            return {
                "tokens": [name(t) for t in ids],
                "token_logprobs": lps,
                "top_logprobs": tops,
                "text_offset": list(range(len(ids))),
            }

        finish = "stop" if out and out[-1] == EOS else "length"
        if not body.get("stream"):
            ids = (prompt + out) if body.get("echo") else out
            start = 0 if body.get("echo") else len(prompt)
            choice = {
                "index": 0,
                "text": "".join(_piece(t) for t in ids),
                "logprobs": logprobs(ids, start, bool(body.get("echo"))) if k else None,
                "finish_reason": finish,
            }
            return web.json_response(
                {
                    "id": "cmpl-1",
                    "object": "text_completion",
                    "created": 0,
                    "model": MODEL,
                    "choices": [choice],
                    "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(out)},
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, t in enumerate(out):
            choice = {
                "index": 0,
                "text": _piece(t),
                "logprobs": logprobs([t], len(prompt) + i, False) if k else None,
                "finish_reason": finish if i == len(out) - 1 else None,
            }
            chunk = {
                "id": "cmpl-1",
                "object": "text_completion",
                "created": 0,
                "model": MODEL,
                "choices": [choice],
            }
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp


async def _serve(double: Double) -> AsyncIterator[str]:
    runner = web.AppRunner(double.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def vllm() -> AsyncIterator[tuple[Double, str]]:
    double = Double()
    async for url in _serve(double):
        yield double, url


def _greedy(prompt: list[int], n: int) -> list[int]:
    ctx, out = list(prompt), []
    for _ in range(n):
        t = _next(ctx)
        out.append(t)
        ctx.append(t)
    return out


async def _connect(url: str) -> OpenAICompatEngine:
    return await OpenAICompatEngine.connect(
        AdapterConfig(model_id="toy", url=url, server_model=MODEL)
    )


async def test_probe_reports_verification_and_the_vocabulary(vllm: tuple[Double, str]) -> None:
    _double, url = vllm
    engine = await _connect(url)
    try:
        info = await engine.info()
        assert (info.can_verify, info.can_draft, info.kind) == (True, True, "openai")
        assert info.n_vocab == N_VOCAB and info.n_ctx == 512
        assert info.eog_token_ids == (EOS,)
        pieces = await engine.pieces()
        assert pieces[97] == b"a" and pieces[EOS] == b""
        ids = await engine.tokenize("hello", add_special=False, parse_special=True)
        assert (await engine.detokenize(ids, render_special=False)) == b"hello"
    finally:
        await engine.close()


async def test_greedy_verify_accepts_the_targets_own_tokens(vllm: tuple[Double, str]) -> None:
    double, url = vllm
    engine = await _connect(url)
    prompt = await engine.tokenize("abc", add_special=False, parse_special=True)
    ref = _greedy(prompt, 10)
    try:
        s, _, _ = await engine.open_session(prompt, SamplingConfig())
        res = await s.verify(ref[:6])
        assert (res.accepted, res.next_token) == (6, ref[6])
        assert double.requests[-1]["echo"] is True and double.requests[-1]["max_tokens"] == 1
        bad = list(ref[7:10])
        bad[1] = 32  # a space: never the toy's argmax
        res = await s.verify(bad)
        assert (res.accepted, res.next_token) == (1, ref[8])
        assert s.tokens == prompt + ref[:9]
        s.release()
    finally:
        await engine.close()


async def test_plain_generation_and_sampled_verify_are_the_servers_own(
    vllm: tuple[Double, str],
) -> None:
    _double, url = vllm
    engine = await _connect(url)
    prompt = await engine.tokenize("xyz", add_special=False, parse_special=True)
    try:
        s, _, _ = await engine.open_session(prompt, SamplingConfig())
        got = [t async for t, _lp, _why in s.generate(50)]
        ref = _greedy(prompt, 50)
        assert got == ref[: ref.index(EOS) + 1]
        s.release()
        # A sampled session cannot be verified from prompt logprobs: the draft is rejected
        # and one plain step of the server's sampler is taken instead.
        s, _, _ = await engine.open_session(prompt, SamplingConfig(temperature=0.8), seed=1)
        res = await s.verify([97, 98])
        assert res.accepted == 0 and res.next_token == _greedy(prompt, 1)[0]
        s.release()
    finally:
        await engine.close()


async def test_without_prompt_logprobs_it_cannot_verify() -> None:
    double = Double(prompt_logprobs=False)
    async for url in _serve(double):
        engine = await _connect(url)
        try:
            assert (await engine.info()).can_verify is False
            prompt = await engine.tokenize("abc", add_special=False, parse_special=True)
            s, _, _ = await engine.open_session(prompt, SamplingConfig())
            with pytest.raises(InvalidRequestError, match="cannot verify"):
                await s.verify([97])
            assert (await s.verify([])).next_token == _greedy(prompt, 1)[0]
            s.release()
        finally:
            await engine.close()
