"""A stock ``llama-server`` as an engine: tokenizer, template, plain generation, drafting.

What it can do, and why:
- tokenize / detokenize: ``/tokenize`` (``add_special``, ``parse_special``); the vocabulary
  comes from one ``/tokenize`` call whose content is every token id with ``with_pieces``,
  which returns each piece exactly (bytes for partial UTF-8), cached; control tokens are found
  by tokenizing their text with and without ``parse_special``.
- Info from ``/health``, ``/props`` (``n_ctx``, chat template, BOS/EOS, model path) and
  ``/v1/models`` (vocabulary size, training context). When the model's GGUF is readable here
  (``model_path`` on this host) the vocabulary fingerprint is the GGUF's, so this server can
  draft for an embedded engine of the same tokenizer.
- render_chat: ``/apply-template`` (the server's own template engine), else the template of
  ``/props`` rendered with :class:`~tightwad.engine.chat_template.ChatTemplate`.
- Plain generation: ``/completion`` streamed, prompt as token ids, ``cache_prompt``,
  ``return_tokens``, the sampling parameters mapped one to one (and every other llama.cpp
  sampler turned off), logprobs through ``n_probs``.
- Drafting: ``/completion`` with ``n_predict=k``; greedy by argmax with the token's
  probability (``n_probs=1``), sampled with ``post_sampling_probs`` and ``top_k`` cut to the
  ``top_m`` that are all returned, so q is exactly what the token was drawn from.

What it cannot do: verify k draft tokens in one pass. llama-server returns no per-position
predictions for prompt tokens, so ``can_verify=false``: a speculating route never uses it as
its target, and ``verify`` with a draft is refused.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from tightwad.engine.adapters.base import (
    AdapterConfig,
    AdapterFacts,
    HttpEngine,
    StreamedToken,
    StreamRequest,
    refuse_tools,
    started,
)
from tightwad.engine.adapters.vocab import EOG_TEXTS, pieces_fingerprint
from tightwad.engine.chat_template import ChatTemplate
from tightwad.engine.contract import Message, TokenLogprob
from tightwad.errors import InvalidRequestError, NotFoundError, UnavailableError
from tightwad.logs import get_logger
from tightwad.spec.sampling import SparseDist

__all__ = ["LlamaServerEngine"]

log = get_logger("tightwad.adapters.llama_server")

_VOCAB_CHUNK = 32768
# Pieces that may be special tokens: <...>, [...] and the like; checked one by one.
_SPECIAL_LOOK = re.compile(
    r"^(<[^<>\s]{1,64}>|\[[^\[\]\s]{1,64}\]|<\|[^|]{0,64}\|>|<\uff5c.*\uff5c>)$"
)


class LlamaServerEngine(HttpEngine):
    """``await LlamaServerEngine.connect(cfg)`` probes the server and reads its vocabulary."""

    kind = "llama_server"

    def __init__(self, cfg: AdapterConfig) -> None:
        super().__init__(cfg, what="llama-server")
        self._template: ChatTemplate | None = None
        self._apply_template = True

    @classmethod
    async def connect(cls, cfg: AdapterConfig) -> LlamaServerEngine:
        return await started(cls(cfg))

    async def start(self) -> None:
        health = await self.http.get_json("/health")
        if not isinstance(health, dict) or health.get("status") not in ("ok", None):
            raise UnavailableError(f"llama-server at {self.cfg.url} is not ready: {health}")
        props = await self.http.get_json("/props")
        models = await self.http.get_json("/v1/models")
        meta = _model_meta(models)
        n_vocab = int(meta.get("n_vocab") or 0)
        if n_vocab <= 0:
            raise UnavailableError(
                f"llama-server at {self.cfg.url} does not report its vocabulary size "
                "(/v1/models meta.n_vocab); a newer llama-server is needed"
            )
        settings = props.get("default_generation_settings") or {}
        n_ctx = int(settings.get("n_ctx") or props.get("n_ctx") or 0)
        model_path = str(props.get("model_path") or "")
        await self._read_vocabulary(n_vocab)
        bos = await self._single_token(str(props.get("bos_token") or ""))
        eos = await self._single_token(str(props.get("eos_token") or ""))
        eog = {
            t
            for t in self._special
            if self._special_text[t].decode("utf-8", "replace") in EOG_TEXTS
        }
        if eos >= 0:
            eog.add(eos)
        fingerprint, arch, n_layers = await self._gguf_facts(model_path, n_vocab)
        if not fingerprint:
            fingerprint = pieces_fingerprint(self._pieces or [], self._special_text, bos, eos)
        template = str(props.get("chat_template") or "")
        if template:
            self._template = ChatTemplate(
                template,
                bos_token=str(props.get("bos_token") or ""),
                eos_token=str(props.get("eos_token") or ""),
            )
        self._set_facts(
            AdapterFacts(
                model_name=str(props.get("model_alias") or "") or Path(model_path).stem,
                n_ctx=n_ctx,
                n_vocab=n_vocab,
                vocab_fingerprint=fingerprint,
                bos_token_id=bos,
                eog_token_ids=tuple(sorted(eog)),
                has_chat_template=bool(template),
                can_verify=False,
                can_draft=True,
                can_logprobs=True,
                architecture=arch,
                n_layers=n_layers,
                n_ctx_train=int(meta.get("n_ctx_train") or 0),
                version=f"llama-server {props.get('build_info', '')}".strip(),
            )
        )
        log.info(
            "llama_server_adapter_ready",
            model=self.cfg.model_id,
            url=self.cfg.url,
            n_ctx=self.cfg.ctx_size,
            n_vocab=n_vocab,
            special=len(self._special),
        )

    async def _read_vocabulary(self, n_vocab: int) -> None:
        pieces: list[bytes] = []
        for start in range(0, n_vocab, _VOCAB_CHUNK):
            ids = list(range(start, min(n_vocab, start + _VOCAB_CHUNK)))
            got = await self.http.post_json("/tokenize", {"content": ids, "with_pieces": True})
            entries = got.get("tokens", []) if isinstance(got, dict) else []
            if len(entries) != len(ids):
                raise UnavailableError(
                    f"llama-server at {self.cfg.url} returned {len(entries)} pieces for "
                    f"{len(ids)} token ids"
                )
            for entry in entries:
                piece = entry.get("piece", "") if isinstance(entry, dict) else ""
                pieces.append(bytes(piece) if isinstance(piece, list) else piece.encode())
        candidates = [
            t
            for t, p in enumerate(pieces)
            if _SPECIAL_LOOK.match(p.decode("utf-8", "replace")) is not None
        ]
        gate = asyncio.Semaphore(8)

        async def is_control(t: int) -> bool:
            text = pieces[t].decode("utf-8", "replace")
            async with gate:
                parsed = await self._tokenize(text, add_special=False, parse_special=True)
                plain = await self._tokenize(text, add_special=False, parse_special=False)
            return parsed == [t] and plain != [t]

        flags = await asyncio.gather(*(is_control(t) for t in candidates))
        special = [t for t, f in zip(candidates, flags, strict=True) if f]
        self._special_text = {t: pieces[t] for t in special}
        for t in special:
            pieces[t] = b""
        self._special = special
        self._pieces = pieces

    async def _single_token(self, text: str) -> int:
        if not text:
            return -1
        ids = await self._tokenize(text, add_special=False, parse_special=True)
        return ids[0] if len(ids) == 1 else -1

    async def _gguf_facts(self, model_path: str, n_vocab: int) -> tuple[str, str, int]:
        """The GGUF's own vocabulary fingerprint, architecture and layers, when readable."""
        if not model_path or not await asyncio.to_thread(Path(model_path).is_file):
            return "", "", 0
        from tightwad.engine.model_facts import read_model_facts

        try:
            facts = await asyncio.to_thread(read_model_facts, Path(model_path))
        except Exception as exc:  # a file we cannot parse: fall back to the pieces
            log.warning("llama_server_gguf_unreadable", path=model_path, reason=str(exc))
            return "", "", 0
        if facts.n_vocab != n_vocab:
            return "", "", 0
        return facts.vocab_fingerprint, facts.architecture, facts.n_layers

    # -- tokenizer and template ---------------------------------------------------------

    async def _tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        got = await self.http.post_json(
            "/tokenize",
            {"content": text, "add_special": add_special, "parse_special": parse_special},
        )
        return [int(t) for t in got.get("tokens", [])]

    async def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        return await self._tokenize(text, add_special=add_special, parse_special=parse_special)

    async def render_chat(
        self, messages: Sequence[Message], *, add_generation_prompt: bool, tools_json: str = ""
    ) -> tuple[str, list[int]]:
        if not messages:
            raise InvalidRequestError("messages must not be empty", param="messages")
        refuse_tools(self.cfg.model_id, self.kind, tools_json, messages)
        text: str | None = None
        if self._apply_template:
            body = {
                "messages": [
                    {"role": m.role, "content": m.content, **({"name": m.name} if m.name else {})}
                    for m in messages
                ],
                "add_generation_prompt": add_generation_prompt,
            }
            try:
                got = await self.http.post_json("/apply-template", body)
                text = str(got["prompt"])
            except NotFoundError:
                self._apply_template = False
        if text is None:
            if self._template is None:
                raise InvalidRequestError(
                    f"model {self.cfg.model_id} has no chat template; use a completion prompt"
                )
            text = self._template.render(messages, add_generation_prompt=add_generation_prompt)
        return text, await self.tokenize(text, add_special=True, parse_special=True)

    # -- generation ---------------------------------------------------------------------

    def _body(self, req: StreamRequest) -> dict[str, Any]:
        s = req.sampling
        body: dict[str, Any] = {
            "prompt": list(req.tokens),
            "n_predict": req.n,
            "stream": True,
            "return_tokens": True,
            "cache_prompt": True,
            "temperature": max(0.0, s.temperature),
            "top_k": s.top_k,
            "top_p": s.top_p,
            "min_p": s.min_p,
            "repeat_penalty": s.repeat_penalty,
            "repeat_last_n": s.penalty_last_n,
            "presence_penalty": s.presence_penalty,
            "frequency_penalty": s.frequency_penalty,
            # llama.cpp's other samplers, off: Tightwad's chain is the one above.
            "typical_p": 1.0,
            "dry_multiplier": 0.0,
            "xtc_probability": 0.0,
            "top_n_sigma": -1.0,
            "mirostat": 0,
            "n_probs": req.n_probs,
            "post_sampling_probs": req.post_sampling,
        }
        if s.logit_bias:
            body["logit_bias"] = [
                [int(t), False if b == -math.inf else float(b)] for t, b in s.logit_bias.items()
            ]
        if req.seed is not None:
            body["seed"] = int(req.seed) & 0xFFFFFFFF
        return body

    async def _stream(self, req: StreamRequest) -> AsyncIterator[StreamedToken]:
        want_top = req.n_probs
        async for chunk in self.http.stream_json("/completion", self._body(req)):
            if not isinstance(chunk, dict):
                continue
            if "error" in chunk:
                raise UnavailableError(f"llama-server at {self.cfg.url}: {chunk['error']}")
            tokens = chunk.get("tokens") or []
            probs = chunk.get("completion_probabilities") or []
            for i, tok in enumerate(tokens):
                entry = probs[i] if i < len(probs) else None
                yield _token(int(tok), entry, want_top, req.post_sampling)
            if chunk.get("stop"):
                return


def _token(
    tok: int, entry: dict[str, Any] | None, want_top: int, post_sampling: bool
) -> StreamedToken:
    if not entry:
        return StreamedToken(token_id=tok)
    if post_sampling:
        top = entry.get("top_probs") or []
        ids = [int(e["id"]) for e in top]
        ps = [float(e["prob"]) for e in top]
        prob = float(entry.get("prob", 0.0))
        if tok not in ids:
            ids.append(tok)
            ps.append(prob)
        return StreamedToken(token_id=tok, prob=prob, q=SparseDist.of(ids, ps))
    logprob = float(entry.get("logprob", 0.0))
    top_lp = tuple(
        (int(e["id"]), float(e["logprob"])) for e in (entry.get("top_logprobs") or [])[:want_top]
    )
    return StreamedToken(
        token_id=tok,
        logprob=TokenLogprob(token_id=tok, logprob=logprob, top=top_lp),
        prob=math.exp(logprob),
    )


def _model_meta(models: Any) -> dict[str, Any]:
    data = models.get("data") if isinstance(models, dict) else None
    if isinstance(data, list) and data and isinstance(data[0], dict):
        meta = data[0].get("meta")
        if isinstance(meta, dict):
            return meta
    return {}
