"""A test double of an Ollama server: Ollama cannot run here, so this speaks its documented API.

Wire format, from Ollama's ``docs/api.md``:

- ``GET /api/version`` -> ``{"version": "0.6.8"}``.
- ``GET /api/tags`` -> ``{"models": [{"name", "model", "modified_at", "size", "digest",
  "details": {...}}]}``.
- ``POST /api/show {"model"}`` -> ``modelfile``, ``parameters`` (``name value`` lines),
  ``template`` (a Go template), ``details``, ``model_info`` (GGUF keys:
  ``general.architecture``, ``<arch>.context_length``, ``<arch>.block_count``, optionally
  ``tokenizer.chat_template``), ``capabilities``; unknown model: 404 ``{"error": "model 'x'
  not found"}``.
- ``POST /api/generate {"model", "prompt", "raw", "stream", "options"}``: ``stream`` (default
  true) answers NDJSON (``application/x-ndjson``), one ``{"model", "created_at", "response",
  "done": false}`` per token, then ``{"response": "", "done": true, "done_reason": "stop" |
  "length", "total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
  "eval_count", "eval_duration"}``; ``stream: false`` answers one object with the whole
  ``response``. ``options.num_predict`` bounds the tokens (``length``); ``options.stop`` and
  the model's ``stop`` parameters end the text before the stop sequence (``stop``). Errors are
  ``{"error": "..."}`` with a 4xx/5xx status, or one NDJSON line once streaming has begun
  (``{"error": "an error was encountered while running the model"}``, status unchanged).
- ``POST /api/chat {"model", "messages": [{"role", "content"}], "stream", "options"}``: Ollama
  applies the model's template; the stream is one ``{"model", "created_at", "message":
  {"role": "assistant", "content"}, "done": false}`` per token, then ``{"model",
  "created_at", "message": {"role": "assistant", "content": ""}, "done": true, "done_reason",
  "total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
  "eval_count", "eval_duration"}``; same options, stops and errors as ``/api/generate``.

Its tokens are its words (each piece streamed is one token): ``prompt_eval_count`` is the
number of words of the prompt (after the template), ``eval_count`` the pieces generated.

Its "model" is a deterministic text source: each token is one word (with its leading space)
chosen by the last word of the text, so continuing a text gives the same words as generating
it in one go. Words of :data:`CYCLE` follow each other forever; :data:`STORY` (told after
``story:`` or a chat's ``<|assistant|>``) ends at ``goodbye`` with end of generation; any
other last word starts the cycle at a place fixed by its CRC. With ``temperature > 0`` the
seed shifts each step.

A model with a ``script`` (a drafter in tests) continues any prompt that ends with a prefix of
the script with the rest of the script, word by word (the longest such prefix wins; none: the
whole script), and ends it with end of generation.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

CYCLE = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dogs",
    "while",
    "birds",
    "sing",
    "songs",
    "about",
    "distant",
    "mountains",
    "and",
    "rivers",
    "under",
    "bright",
    "stars",
]
STORY = [
    "once",
    "upon",
    "time",
    "llama",
    "named",
    "café",
    "ate",
    "🦙",
    "naïve",
    "grass",
    "goodbye",
]
#: Last words after which the story is told (a prompt ending "story:", or a chat's turn).
STORY_STARTS = ("story:", "<|assistant|>")
EOS = object()
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
VERSION = "0.6.8"


def next_word(text: str, seed: int | None = None) -> str | object:
    """The toy model's next word after ``text`` (or :data:`EOS`)."""
    words = text.split()
    last = words[-1] if words else ""
    if last in STORY_STARTS:
        return STORY[0]
    if last in STORY:
        i = STORY.index(last)
        return STORY[i + 1] if i + 1 < len(STORY) else EOS
    if last in CYCLE and seed is None:
        return CYCLE[(CYCLE.index(last) + 1) % len(CYCLE)]
    return CYCLE[(zlib.crc32(last.encode()) + (seed or 0)) % len(CYCLE)]


def continuation(
    text: str, n: int, *, seed: int | None = None, stops: tuple[str, ...] = ()
) -> tuple[str, str]:
    """(generated text, done_reason) for up to ``n`` tokens: what the server streams."""
    pieces, reason = generate_pieces(text, n, seed, stops)
    return "".join(pieces), reason


@dataclass
class FakeModel:
    name: str
    num_ctx: int = 512
    context_length: int = 8192
    stops: tuple[str, ...] = ()
    chat_template: str | None = CHAT_TEMPLATE
    capabilities: tuple[str, ...] = ("completion",)
    script: str | None = None


@dataclass
class FakeOllama:
    """The server's state; ``requests`` records every /api/generate body."""

    models: dict[str, FakeModel] = field(
        default_factory=lambda: {
            "toy:latest": FakeModel("toy:latest"),
            "toy-stop:latest": FakeModel("toy-stop:latest", stops=(" lazy",)),
            "plain:latest": FakeModel("plain:latest", chat_template=None),
            "embed:latest": FakeModel("embed:latest", capabilities=("embedding",)),
        }
    )
    requests: list[dict[str, Any]] = field(default_factory=list)
    # Failure injection for /api/generate: an HTTP status answered at once, or an error
    # line streamed after this many tokens.
    fail_status: int | None = None
    fail_after: int | None = None
    # Requests (/api/generate and /api/chat, counted from 0) from this one on answer HTTP 500.
    fail_from_request: int | None = None
    # False: ignore options.stop (an older server, or a model whose tokens straddle a stop),
    # so the gateway's own stop scanning is what cuts the text.
    honour_stop: bool = True
    served: int = 0

    def model(self, name: str) -> FakeModel | None:
        return self.models.get(name if ":" in name else f"{name}:latest")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/version", self._version)
        app.router.add_get("/api/tags", self._tags)
        app.router.add_post("/api/show", self._show)
        app.router.add_post("/api/generate", self._generate)
        app.router.add_post("/api/chat", self._chat)
        return app

    # -- handlers -----------------------------------------------------------------------

    async def _version(self, _request: web.Request) -> web.Response:
        return web.json_response({"version": VERSION})

    async def _tags(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {
                "models": [
                    {
                        "name": m.name,
                        "model": m.name,
                        "modified_at": "2025-01-01T00:00:00Z",
                        "size": 1000,
                        "digest": "0" * 64,
                        "details": _details(),
                    }
                    for m in self.models.values()
                ]
            }
        )

    async def _show(self, request: web.Request) -> web.Response:
        body = await request.json()
        name = str(body.get("model") or body.get("name") or "")
        m = self.model(name)
        if m is None:
            return _error(404, f"model '{name}' not found")
        params = [f"num_ctx                        {m.num_ctx}"]
        params += [f'stop                           "{s}"' for s in m.stops]
        info: dict[str, Any] = {
            "general.architecture": "llama",
            "general.parameter_count": 1000,
            "llama.context_length": m.context_length,
            "llama.block_count": 4,
            "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.tokens": [],
        }
        if m.chat_template is not None:
            info["tokenizer.chat_template"] = m.chat_template
        return web.json_response(
            {
                "modelfile": f"FROM {m.name}\nTEMPLATE {{{{ .Prompt }}}}",
                "parameters": "\n".join(params),
                "template": "{{ .Prompt }}",
                "details": _details(),
                "model_info": info,
                "capabilities": list(m.capabilities),
            }
        )

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, chat=False)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, chat=True)

    async def _answer(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "invalid character looking for beginning of value")
        self.requests.append(body)
        index, self.served = self.served, self.served + 1
        name = str(body.get("model") or "")
        if not name:
            return _error(400, "model is required")
        m = self.model(name)
        if m is None:
            return _error(404, f"model '{name}' not found")
        if self.fail_status is not None or (
            self.fail_from_request is not None and index >= self.fail_from_request
        ):
            status = self.fail_status or 500
            return _error(status, "llama runner process has terminated: exit status 2")
        options = body.get("options") or {}
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list):
                return _error(400, "messages must be a list")
            prompt = render_chat(messages)
        else:
            # Raw or not, the prompt is the text: the toy's template is "{{ .Prompt }}".
            prompt = str(body.get("prompt") or "")
        n = int(options.get("num_predict", -1))
        n = m.num_ctx if n < 0 else n
        seed = options.get("seed") if float(options.get("temperature", 0.8)) > 0 else None
        asked = tuple(options.get("stop") or ()) if self.honour_stop else ()
        stops = asked + m.stops
        if m.script is not None:
            pieces, reason = script_pieces(m.script, prompt, n)
        else:
            pieces, reason = generate_pieces(prompt, n, seed, stops)
        final: dict[str, Any] = {
            "model": m.name,
            "created_at": "2025-01-01T00:00:00Z",
            "done": True,
            "done_reason": reason,
            "total_duration": 1000,
            "load_duration": 10,
            "prompt_eval_count": len(prompt.split()),
            "prompt_eval_duration": 100,
            "eval_count": len(pieces),
            "eval_duration": 500,
        }
        if body.get("stream") is False:
            return web.json_response({**final, **_text(chat, "".join(pieces))})
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        async for line in self._lines(m, pieces, {**final, **_text(chat, "")}, chat):
            await resp.write(line)
        await resp.write_eof()
        return resp

    async def _lines(
        self, m: FakeModel, pieces: list[str], final: dict[str, Any], chat: bool
    ) -> AsyncIterator[bytes]:
        for i, piece in enumerate(pieces):
            if self.fail_after is not None and i == self.fail_after:
                yield _line({"error": "an error was encountered while running the model"})
                return
            yield _line(
                {
                    "model": m.name,
                    "created_at": "2025-01-01T00:00:00Z",
                    **_text(chat, piece),
                    "done": False,
                }
            )
        yield _line(final)


def _text(chat: bool, text: str) -> dict[str, Any]:
    return {"message": {"role": "assistant", "content": text}} if chat else {"response": text}


def render_chat(messages: list[Any]) -> str:
    """The toy's chat template (what Ollama would apply for /api/chat)."""
    turns = [f"<|{m.get('role')}|>{m.get('content')}\n" for m in messages if isinstance(m, dict)]
    return "".join(turns) + "<|assistant|>"


def script_pieces(script: str, prompt: str, n: int) -> tuple[list[str], str]:
    """A scripted model: the script's words after the longest prefix the prompt ends with."""
    at = max(j for j in range(len(script) + 1) if prompt.endswith(script[:j]))
    words = re.findall(r"\s*\S+|\s+$", script[at:])
    return words[:n], "length" if len(words) > n else "stop"


def generate_pieces(
    prompt: str, n: int, seed: object, stops: tuple[str, ...]
) -> tuple[list[str], str]:
    """The streamed pieces and done_reason: up to ``n`` words, cut before a stop sequence."""
    out: list[str] = []
    text = ""
    for _ in range(n):
        word = next_word(prompt + text, seed if isinstance(seed, int) else None)
        if word is EOS:
            return out, "stop"
        piece = f" {word}"
        for s in stops:
            at = (text + piece).find(s)
            if at >= 0:
                # Like Ollama, text that may start a stop is held back, so nothing from the
                # stop's first character on was streamed, even when it began pieces earlier.
                cut = (text + piece)[:at]
                while out and len(text) > at:
                    text = text[: -len(out.pop())]
                rest = cut[len(text) :]
                if rest:
                    out.append(rest)
                return out, "stop"
        out.append(piece)
        text += piece
    return out, "length"


def _details() -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "1K",
        "quantization_level": "Q8_0",
    }


def _line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, ensure_ascii=False) + "\n").encode()


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def serve(fake: FakeOllama) -> AsyncIterator[str]:
    """Serve ``fake`` on a loopback port; yields its base URL."""
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
