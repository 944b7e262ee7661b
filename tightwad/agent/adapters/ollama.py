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
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from tightwad.agent.adapters._base import (
    AdapterConfig,
    AdapterFacts,
    HttpEngine,
    HttpSession,
    StreamedToken,
    StreamRequest,
)
from tightwad.agent.engine.template import ChatTemplate, Message
from tightwad.errors import (
    InvalidRequestError,
    NotFoundError,
    TightwadError,
    UnavailableError,
)
from tightwad.logs import get_logger
from tightwad.spec.sampling import SamplingConfig

__all__ = ["BYTES_PER_TOKEN", "EOG_ID", "N_VOCAB", "OllamaEngine"]

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
        engine = cls(cfg)
        try:
            await engine.start()
        except BaseException:
            await engine.close()
            raise
        return engine

    @property
    def _model(self) -> str:
        return self.cfg.server_model or self.cfg.model_id

    # -- probing ------------------------------------------------------------------------

    async def list_models(self) -> list[str]:
        """The models the server has (``/api/tags``)."""
        tags = await self.http.get_json("/api/tags")
        models = tags.get("models") if isinstance(tags, dict) else None
        return [str(m.get("name")) for m in models or [] if isinstance(m, dict)]

    async def start(self) -> None:
        version = await self.http.get_json("/api/version")
        try:
            show = await self.http.post_json("/api/show", {"model": self._model})
        except NotFoundError as exc:
            try:
                known = ", ".join(await self.list_models()) or "none"
            except TightwadError:
                known = "unknown (/api/tags failed)"
            raise UnavailableError(
                f"Ollama at {self.cfg.url} has no model {self._model!r} (it has: {known}); "
                f"run `ollama pull {self._model}` there"
            ) from exc
        if not isinstance(show, dict):
            raise UnavailableError(f"Ollama at {self.cfg.url}: /api/show answered {show!r}")
        capabilities = show.get("capabilities")
        if isinstance(capabilities, list) and "completion" not in capabilities:
            raise UnavailableError(
                f"Ollama model {self._model!r} at {self.cfg.url} cannot generate text "
                f"(capabilities: {', '.join(map(str, capabilities)) or 'none'})"
            )
        info = _mapping(show.get("model_info"))
        details = _mapping(show.get("details"))
        arch = str(info.get("general.architecture") or details.get("family") or "")
        ctx_train = _int(info.get(f"{arch}.context_length"))
        num_ctx = _int(_parameters(show.get("parameters")).get("num_ctx"))
        template = info.get("tokenizer.chat_template")
        if isinstance(template, str) and template:
            # Ollama adds BOS itself when it tokenizes a raw prompt: the template must not.
            self._template = ChatTemplate(template, bos_token="", eos_token="")
        self._pieces = [bytes([b]) for b in range(256)] + [b""]
        self._special = [EOG_ID]
        self._special_text = {EOG_ID: b""}
        self._set_facts(
            AdapterFacts(
                model_name=self._model,
                n_ctx=BYTES_PER_TOKEN * (num_ctx or ctx_train or _DEFAULT_NUM_CTX),
                n_vocab=N_VOCAB,
                vocab_fingerprint=_FINGERPRINT,
                bos_token_id=-1,
                eog_token_ids=(EOG_ID,),
                has_chat_template=self._template is not None,
                can_verify=False,
                can_draft=False,
                can_logprobs=False,
                architecture=arch,
                n_layers=_int(info.get(f"{arch}.block_count")),
                n_ctx_train=ctx_train,
                version=f"ollama {_version(version)}".strip(),
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
        self, messages: Sequence[Message], *, add_generation_prompt: bool
    ) -> tuple[str, list[int]]:
        if not messages:
            raise InvalidRequestError("messages must not be empty", param="messages")
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
        return await super().open_session(prompt, sampling, seed=seed)

    # -- generation ---------------------------------------------------------------------

    def _body(self, req: StreamRequest) -> dict[str, Any]:
        s = req.sampling
        options: dict[str, Any] = {
            "num_predict": req.n,
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
        if req.seed is not None:
            options["seed"] = int(req.seed) & 0x7FFFFFFF
        return {
            "model": self._model,
            "prompt": _text(req.tokens),
            "raw": True,
            "stream": True,
            "options": options,
        }

    async def _stream(self, req: StreamRequest) -> AsyncIterator[StreamedToken]:
        async for chunk in self.http.stream_json("/api/generate", self._body(req)):
            if not isinstance(chunk, dict):
                continue
            if "error" in chunk:
                raise UnavailableError(f"Ollama at {self.cfg.url}: {chunk['error']}")
            for b in str(chunk.get("response") or "").encode("utf-8"):
                yield StreamedToken(token_id=b)
            if chunk.get("done"):
                reason = chunk.get("done_reason")
                if reason is None:  # servers before done_reason: a short answer stopped
                    reason = "length" if _int(chunk.get("eval_count")) >= req.n else "stop"
                if reason == "stop":
                    yield StreamedToken(token_id=EOG_ID)
                return


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
