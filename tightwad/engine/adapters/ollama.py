"""An Ollama server as an engine: a plain target, text in and text out.

Ollama's API (``/api/generate``, ``/api/show``, ``/api/tags``, ``/api/version``) takes text
and streams text; it exposes no token ids, no tokenizer and no per-token probabilities. So:

- ``can_verify=false``, ``can_draft=false``, ``can_logprobs=false``: it never verifies or
  proposes a draft (a route with an Ollama target serves plainly, ``draft: none``), and a
  request for logprobs or a logit bias is refused rather than answered with made-up numbers.
- Its "tokens" are the **UTF-8 bytes** of the text (ids 0..255) plus one end marker
  (:data:`EOG_ID`) standing for "Ollama stopped" (``done_reason: stop``: end of generation or
  one of the model's stop sequences). The Engine contract needs ids; bytes are the only ids
  that are honest for a server that shows none: every byte streamed is one Ollama produced,
  and the vocabulary fingerprint is Ollama's own, so no drafter can pair with it.
  Consequence, and it is documented: for an Ollama route Tightwad's counts (``max_tokens``,
  ``usage``, the context budget) are in bytes, not in the model's tokens. The context budget
  is :data:`BYTES_PER_TOKEN` bytes per token of the model's context (``num_ctx`` of its
  parameters, else ``<arch>.context_length`` of ``/api/show``); ``ctx_size`` overrides it.
- Plain generation: ``/api/generate`` with ``raw: true`` (the prompt is sent exactly as the
  session holds it: prompt text + output so far), ``stream: true`` (NDJSON: ``response``
  pieces, then ``done`` with ``done_reason``), and the sampling parameters under ``options``
  by Ollama's names (``temperature``, ``top_k``, ``top_p``, ``min_p``, ``seed``,
  ``num_predict``, ``repeat_penalty``, ``repeat_last_n``, ``presence_penalty``,
  ``frequency_penalty``; ``typical_p`` and ``mirostat`` off). When Ollama stops for
  ``num_predict`` the session asks again with the longer text (raw mode continues it).
- Chat: raw mode needs the formatted prompt. When ``/api/show`` carries the GGUF's Jinja
  template (``model_info["tokenizer.chat_template"]``) it is rendered here; Ollama's own
  ``template`` is a Go template Tightwad cannot render faithfully, so without the Jinja one a
  chat request is refused with a clear message (completions still work).

A model missing from the server is reported with the models ``/api/tags`` lists.

The gateway no longer routes through this byte-level engine: an Ollama *target* is served by
:class:`tightwad.gateway.passthrough.PassthroughBackend` (``/api/chat`` and ``/api/generate``,
counts in the model's real tokens) and an Ollama *drafter* by
:class:`tightwad.gateway.text_draft.TextDrafter`, both over :class:`OllamaClient` below, the
one place that speaks Ollama's text API. :class:`OllamaEngine` stays for an agent that must
expose an Ollama server as an Engine (it shares the wire code: :func:`probe_model`,
:func:`ollama_options`, :func:`read_chunk`).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tightwad.engine.adapters.base import (
    AdapterConfig,
    AdapterFacts,
    HttpEngine,
    HttpSession,
    StreamedToken,
    StreamRequest,
    refuse_tools,
    started,
)
from tightwad.engine.adapters.http import HttpClient
from tightwad.engine.chat_template import ChatTemplate
from tightwad.engine.contract import Message
from tightwad.errors import (
    InvalidRequestError,
    NotFoundError,
    TightwadError,
    UnavailableError,
)
from tightwad.logs import get_logger
from tightwad.spec.sampling import SamplingConfig
from tightwad.url_policy import UrlPolicy

if TYPE_CHECKING:
    from tightwad.engine.grammar import GrammarSpec

__all__ = [
    "BYTES_PER_TOKEN",
    "EOG_ID",
    "N_VOCAB",
    "OllamaChunk",
    "OllamaClient",
    "OllamaEngine",
    "OllamaModel",
    "ollama_options",
    "probe_model",
    "read_chunk",
]

log = get_logger("tightwad.adapters.ollama")

#: The end marker: Ollama answered ``done_reason: stop`` (EOS or a stop sequence).
EOG_ID = 256
N_VOCAB = 257
#: Context budget per token of the model's context, for a byte-counted session.
BYTES_PER_TOKEN = 4
_DEFAULT_NUM_CTX = 2048
_FINGERPRINT = hashlib.sha256(b"tightwad-ollama-bytes-v1").hexdigest()


class OllamaEngine(HttpEngine):
    """``await OllamaEngine.connect(cfg)``; ``cfg.server_model`` is Ollama's model name."""

    kind = "ollama"

    def __init__(self, cfg: AdapterConfig) -> None:
        super().__init__(cfg, what="Ollama")
        self._template: ChatTemplate | None = None

    @classmethod
    async def connect(cls, cfg: AdapterConfig) -> OllamaEngine:
        return await started(cls(cfg))

    # -- probing ------------------------------------------------------------------------

    async def list_models(self) -> list[str]:
        """The models the server has (``/api/tags``)."""
        return await list_models(self.http)

    async def start(self) -> None:
        m = await probe_model(self.http, self.cfg.url, self._model)
        arch, ctx_train = m.architecture, m.n_ctx_train
        template = m.model_info.get("tokenizer.chat_template")
        if isinstance(template, str) and template:
            # Ollama adds BOS itself when it tokenizes a raw prompt: the template must not.
            self._template = ChatTemplate(template, bos_token="", eos_token="")
        self._pieces = [bytes([b]) for b in range(256)] + [b""]
        self._special = [EOG_ID]
        self._special_text = {EOG_ID: b""}
        self._set_facts(
            AdapterFacts(
                model_name=self._model,
                n_ctx=BYTES_PER_TOKEN * m.n_ctx,
                n_vocab=N_VOCAB,
                vocab_fingerprint=_FINGERPRINT,
                bos_token_id=-1,
                eog_token_ids=(EOG_ID,),
                has_chat_template=self._template is not None,
                can_verify=False,
                can_draft=False,
                can_logprobs=False,
                architecture=arch,
                n_layers=m.n_layers,
                n_ctx_train=ctx_train,
                version=f"ollama {m.version}".strip(),
            )
        )
        log.info(
            "ollama_adapter_ready",
            model=self.cfg.model_id,
            url=self.cfg.url,
            server_model=self._model,
            architecture=arch,
            ctx_bytes=self.cfg.ctx_size,
            chat_template=self._template is not None,
        )

    # -- tokenizer and template ---------------------------------------------------------

    async def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        return list(text.encode("utf-8"))

    async def render_chat(
        self, messages: Sequence[Message], *, add_generation_prompt: bool, tools_json: str = ""
    ) -> tuple[str, list[int]]:
        if not messages:
            raise InvalidRequestError("messages must not be empty", param="messages")
        refuse_tools(self.cfg.model_id, self.kind, tools_json, messages)
        if self._template is None:
            raise InvalidRequestError(
                f"Ollama model {self._model!r} shows no Jinja chat template (only Ollama's Go "
                "template, which Tightwad cannot render faithfully); send a completion prompt "
                "formatted for the model, or serve it with llama-server"
            )
        text = self._template.render(messages, add_generation_prompt=add_generation_prompt)
        return text, list(text.encode("utf-8"))

    # -- sessions -----------------------------------------------------------------------

    async def open_session(
        self,
        prompt: Sequence[int],
        sampling: SamplingConfig,
        *,
        seed: int | None = None,
        top_logprobs: int = 0,
        logprobs: bool = False,
        grammar: GrammarSpec | None = None,
    ) -> tuple[HttpSession, int, float]:
        if logprobs or top_logprobs > 0:
            raise InvalidRequestError(
                f"model {self.cfg.model_id} is served by Ollama, which returns no token "
                "probabilities; logprobs are not available",
                param="logprobs",
            )
        if sampling.logit_bias:
            raise InvalidRequestError(
                f"model {self.cfg.model_id} is served by Ollama, which has no logit bias",
                param="logit_bias",
            )
        _text(prompt)  # refuse what is not text before a session exists
        return await super().open_session(prompt, sampling, seed=seed, grammar=grammar)

    # -- generation ---------------------------------------------------------------------

    def _body(self, req: StreamRequest) -> dict[str, Any]:
        return {
            "model": self._model,
            "prompt": _text(req.tokens),
            "raw": True,
            "stream": True,
            "options": ollama_options(req.sampling, num_predict=req.n, seed=req.seed),
        }

    async def _stream(self, req: StreamRequest) -> AsyncIterator[StreamedToken]:
        where = f"Ollama at {self.cfg.url}"
        async for line in self.http.stream_json("/api/generate", self._body(req)):
            chunk = read_chunk(line, where)
            if chunk is None:
                continue
            for b in chunk.text.encode("utf-8"):
                yield StreamedToken(token_id=b)
            if chunk.done:
                reason = chunk.done_reason
                if reason is None:  # servers before done_reason: a short answer stopped
                    reason = "length" if (chunk.eval_count or 0) >= req.n else "stop"
                if reason == "stop":
                    yield StreamedToken(token_id=EOG_ID)
                return


# --- Ollama's text API, shared by the engine above and the gateway ----------------------------


@dataclass(frozen=True, slots=True)
class OllamaModel:
    """What ``/api/version`` and ``/api/show`` say about one model."""

    name: str
    version: str
    architecture: str
    n_ctx: int  # num_ctx of its parameters, else <arch>.context_length, else 2048
    n_ctx_train: int
    n_layers: int
    model_info: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class OllamaChunk:
    """One NDJSON object of a ``/api/generate`` or ``/api/chat`` stream (text of ``response``
    or ``message.content``; the counts and ``done_reason`` only on the final one)."""

    text: str
    done: bool = False
    done_reason: str | None = None
    prompt_eval_count: int | None = None
    eval_count: int | None = None
    prompt_eval_ms: float = 0.0


async def probe_model(http: HttpClient, url: str, model: str) -> OllamaModel:
    """``/api/version`` + ``/api/show``; a missing model is named with what ``/api/tags``
    lists, a model that cannot generate text is refused (both UnavailableError)."""
    version = await http.get_json("/api/version")
    try:
        show = await http.post_json("/api/show", {"model": model})
    except NotFoundError as exc:
        try:
            known = ", ".join(await list_models(http)) or "none"
        except TightwadError:
            known = "unknown (/api/tags failed)"
        raise UnavailableError(
            f"Ollama at {url} has no model {model!r} (it has: {known}); "
            f"run `ollama pull {model}` there"
        ) from exc
    if not isinstance(show, dict):
        raise UnavailableError(f"Ollama at {url}: /api/show answered {show!r}")
    capabilities = show.get("capabilities")
    if isinstance(capabilities, list) and "completion" not in capabilities:
        raise UnavailableError(
            f"Ollama model {model!r} at {url} cannot generate text "
            f"(capabilities: {', '.join(map(str, capabilities)) or 'none'})"
        )
    info = _mapping(show.get("model_info"))
    details = _mapping(show.get("details"))
    arch = str(info.get("general.architecture") or details.get("family") or "")
    ctx_train = _int(info.get(f"{arch}.context_length"))
    num_ctx = _int(_parameters(show.get("parameters")).get("num_ctx"))
    return OllamaModel(
        name=model,
        version=_version(version),
        architecture=arch,
        n_ctx=num_ctx or ctx_train or _DEFAULT_NUM_CTX,
        n_ctx_train=ctx_train,
        n_layers=_int(info.get(f"{arch}.block_count")),
        model_info=info,
    )


async def list_models(http: HttpClient) -> list[str]:
    """The models the server has (``/api/tags``)."""
    tags = await http.get_json("/api/tags")
    models = tags.get("models") if isinstance(tags, dict) else None
    return [str(m.get("name")) for m in models or [] if isinstance(m, dict)]


def ollama_options(
    sampling: SamplingConfig,
    *,
    num_predict: int,
    seed: int | None = None,
    stop: Sequence[str] = (),
) -> dict[str, Any]:
    """Tightwad's sampling chain under Ollama's option names (``num_predict`` -1: unbounded)."""
    s = sampling
    options: dict[str, Any] = {
        "num_predict": num_predict,
        "temperature": max(0.0, s.temperature),
        "top_k": s.top_k,
        "top_p": s.top_p,
        "min_p": s.min_p,
        "repeat_penalty": s.repeat_penalty,
        "repeat_last_n": s.penalty_last_n,
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty,
        # Ollama's other samplers, off: Tightwad's chain is the one above.
        "typical_p": 1.0,
        "mirostat": 0,
    }
    if seed is not None:
        options["seed"] = int(seed) & 0x7FFFFFFF
    if stop:
        options["stop"] = list(stop)
    return options


def read_chunk(obj: object, where: str) -> OllamaChunk | None:
    """One streamed object as an :class:`OllamaChunk` (None for what is not an object); an
    ``{"error": ...}`` line (how Ollama reports a failure once streaming has begun) raises
    UnavailableError."""
    if not isinstance(obj, dict):
        return None
    if "error" in obj:
        raise UnavailableError(f"{where}: {obj['error']}")
    message = obj.get("message")
    if isinstance(message, dict):
        text = str(message.get("content") or "")
    else:
        text = str(obj.get("response") or "")
    if not obj.get("done"):
        return OllamaChunk(text=text)
    reason = obj.get("done_reason")
    return OllamaChunk(
        text=text,
        done=True,
        done_reason=str(reason) if reason is not None else None,
        prompt_eval_count=_int(obj["prompt_eval_count"]) if "prompt_eval_count" in obj else None,
        eval_count=_int(obj["eval_count"]) if "eval_count" in obj else None,
        prompt_eval_ms=_int(obj.get("prompt_eval_duration")) / 1e6,
    )


class OllamaClient:
    """Ollama's own text API for one model: ``/api/chat`` (Ollama applies the model's
    template) and ``/api/generate`` (``raw``: the prompt as given), streamed as
    :class:`OllamaChunk`. Errors are :mod:`tightwad.errors` types (see ``HttpClient``); a
    stream left early closes its connection, which stops Ollama generating."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        policy: UrlPolicy | None = None,
        url_key: str = "url",
        timeout_s: float = 30.0,
        stream_idle_s: float = 120.0,
    ) -> None:
        if policy is not None:
            policy.check_url(url, key=url_key)
        self.url = url
        self.model = model
        self._where = f"Ollama at {url}"
        self.http = HttpClient(
            url, timeout_s=timeout_s, stream_idle_s=stream_idle_s, what="Ollama", policy=policy
        )

    async def probe(self) -> OllamaModel:
        return await probe_model(self.http, self.url, self.model)

    def chat(
        self, messages: Sequence[Mapping[str, str]], options: Mapping[str, Any]
    ) -> AsyncIterator[OllamaChunk]:
        body = {"model": self.model, "messages": list(messages), "stream": True}
        return self._stream("/api/chat", {**body, "options": dict(options)})

    def generate(
        self, prompt: str, options: Mapping[str, Any], *, raw: bool = True
    ) -> AsyncIterator[OllamaChunk]:
        body = {"model": self.model, "prompt": prompt, "raw": raw, "stream": True}
        return self._stream("/api/generate", {**body, "options": dict(options)})

    async def _stream(self, path: str, body: Mapping[str, Any]) -> AsyncIterator[OllamaChunk]:
        async for obj in self.http.stream_json(path, body):
            chunk = read_chunk(obj, self._where)
            if chunk is not None:
                yield chunk
                if chunk.done:
                    return

    async def close(self) -> None:
        await self.http.close()


def _text(tokens: Sequence[int]) -> str:
    """The text a byte-token sequence stands for (the end marker ends it)."""
    if EOG_ID in tokens:
        cut = list(tokens).index(EOG_ID)
        if cut != len(tokens) - 1:
            raise InvalidRequestError(f"token {EOG_ID} (Ollama's end marker) is not text")
        tokens = tokens[:cut]
    try:
        return bytes(tokens).decode("utf-8")
    except ValueError as exc:
        raise InvalidRequestError(
            "the prompt is not UTF-8 text; an Ollama model takes text (token ids are its bytes)",
            param="prompt",
        ) from exc


def _version(answer: object) -> str:
    """``/api/version``'s ``{"version": "0.5.1"}``."""
    return str(answer.get("version") or "") if isinstance(answer, dict) else ""


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return 0
    try:
        return int(value)
    except ValueError:
        return 0


def _parameters(text: object) -> dict[str, str]:
    """``/api/show``'s ``parameters`` (one ``name value`` per line) as the first value of
    each name (``stop`` repeats; the others do not)."""
    out: dict[str, str] = {}
    if not isinstance(text, str):
        return out
    for line in text.splitlines():
        name, _, value = line.strip().partition(" ")
        if name and name not in out:
            out[name] = value.strip().strip('"')
    return out
