"""An OpenAI-compatible completions server (vLLM and alike) as an engine.

What it needs of the server: ``/v1/completions`` taking the prompt as token ids and answering
token ids (vLLM's ``return_tokens_as_token_ids``: tokens written ``token_id:N``), and the
tokenizer endpoints ``/tokenize`` / ``/detokenize`` (vLLM's). The vocabulary is read once by
detokenizing each id (cached); pieces of partial UTF-8 are not recoverable that way, which is
one reason its fingerprint is not a GGUF one.

What it can do, and why:
- Verify, greedy only: ``echo: true, logprobs: 1, max_tokens: 1`` over prompt + draft returns
  the model's top token at every draft position (prompt logprobs) in one pass: accept while it
  equals the draft token, emit it at the first mismatch, or the generated token when all pass.
  Probed at start; a server that returns no prompt logprobs reports ``can_verify=false``.
  A sampled (or penalised, or biased) session cannot be verified from raw prompt logprobs, so
  its ``verify`` with a draft rejects the whole draft and takes one plain step of the server's
  own sampler (accepted 0: lossless, only slower).
- Plain generation and greedy drafting: streamed ``/v1/completions``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Sequence
from typing import Any

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
from tightwad.engine.adapters.vocab import EOG_TEXTS, pieces_fingerprint
from tightwad.engine.contract import Message, TokenLogprob
from tightwad.errors import InvalidRequestError, TightwadError, UnavailableError
from tightwad.logs import get_logger

__all__ = ["OpenAICompatEngine"]

log = get_logger("tightwad.adapters.openai")

_ID_PREFIX = "token_id:"


def _tid(token: str) -> int:
    if not token.startswith(_ID_PREFIX):
        raise UnavailableError(
            f"the server answered token {token!r}, not {_ID_PREFIX}N: it does not support "
            "return_tokens_as_token_ids (vLLM does)"
        )
    return int(token[len(_ID_PREFIX) :])


def _top(entry: dict[str, float] | None) -> list[tuple[int, float]]:
    if not entry:
        return []
    return sorted(((_tid(k), float(v)) for k, v in entry.items()), key=lambda x: -x[1])


class OpenAICompatEngine(HttpEngine):
    """``await OpenAICompatEngine.connect(cfg)``; ``cfg.server_model`` is the served model."""

    kind = "openai"

    def __init__(self, cfg: AdapterConfig) -> None:
        super().__init__(cfg, what="OpenAI-compatible server")

    @classmethod
    async def connect(cls, cfg: AdapterConfig) -> OpenAICompatEngine:
        return await started(cls(cfg))

    async def start(self) -> None:
        models = await self.http.get_json("/v1/models")
        entry = next(
            (m for m in models.get("data", []) if m.get("id") == self._model),
            None,
        )
        if entry is None:
            known = ", ".join(str(m.get("id")) for m in models.get("data", [])) or "none"
            raise UnavailableError(
                f"{self.cfg.url} does not serve model {self._model!r} (it serves: {known})"
            )
        try:
            probe = await self.http.post_json(
                "/tokenize", {"model": self._model, "prompt": "Hello", "add_special_tokens": False}
            )
        except TightwadError as exc:
            raise UnavailableError(
                f"{self.cfg.url} has no usable /tokenize endpoint ({exc}); the OpenAI-compatible "
                "adapter needs the server's tokenizer (vLLM's /tokenize and /detokenize)"
            ) from exc
        n_ctx = int(entry.get("max_model_len") or probe.get("max_model_len") or 0)
        n_vocab = await self._vocab_size()
        await self._read_vocabulary(n_vocab)
        eog = tuple(sorted(t for t in self._special if self._special_text[t].decode() in EOG_TEXTS))
        can_verify = await self._probe_verify(list(probe.get("tokens") or [0]))
        self._set_facts(
            AdapterFacts(
                model_name=self._model,
                n_ctx=n_ctx,
                n_vocab=n_vocab,
                vocab_fingerprint=pieces_fingerprint(
                    self._pieces or [], self._special_text, -1, eog[0] if eog else -1
                ),
                bos_token_id=-1,
                eog_token_ids=eog,
                has_chat_template=True,
                can_verify=can_verify,
                can_draft=True,
                can_logprobs=True,
                version=str(entry.get("owned_by") or ""),
            )
        )
        log.info(
            "openai_adapter_ready",
            model=self.cfg.model_id,
            url=self.cfg.url,
            can_verify=can_verify,
            n_vocab=n_vocab,
        )

    async def _detok(self, ids: list[int]) -> str:
        got = await self.http.post_json("/detokenize", {"model": self._model, "tokens": ids})
        return str(got.get("prompt", ""))

    async def _vocab_size(self) -> int:
        """The vocabulary size: the first id ``/detokenize`` refuses (binary search)."""

        async def valid(t: int) -> bool:
            try:
                await self._detok([t])
            except InvalidRequestError:
                return False
            return True

        lo, hi = 0, 1
        while await valid(hi):
            lo, hi = hi, hi * 2
            if hi > 1 << 22:
                raise UnavailableError(f"{self.cfg.url}: cannot find the vocabulary size")
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if await valid(mid) else (lo, mid)
        return hi

    async def _read_vocabulary(self, n_vocab: int) -> None:
        gate = asyncio.Semaphore(16)

        async def piece(t: int) -> bytes:
            async with gate:
                return (await self._detok([t])).encode()

        pieces = list(await asyncio.gather(*(piece(t) for t in range(n_vocab))))
        special: list[int] = []
        for t, p in enumerate(pieces):
            text = p.decode("utf-8", "replace")
            if text in EOG_TEXTS or (text.startswith("<|") and text.endswith("|>")):
                ids = await self.tokenize(text, add_special=False, parse_special=True)
                if ids == [t]:
                    special.append(t)
        self._special_text = {t: pieces[t] for t in special}
        for t in special:
            pieces[t] = b""
        self._special = special
        self._pieces = pieces

    async def _probe_verify(self, tokens: list[int]) -> bool:
        """Whether the server returns prompt logprobs with token ids (echo + logprobs)."""
        prompt = (tokens * 2)[:2] if len(tokens) < 2 else tokens[:2]
        try:
            got = await self.http.post_json("/v1/completions", self._echo_body(prompt))
            lp = got["choices"][0]["logprobs"]
            top = lp["top_logprobs"]
            return len(top) >= 2 and bool(top[1]) and all(_top(e) for e in top[1:])
        except (TightwadError, KeyError, IndexError, TypeError, ValueError):
            return False

    def _echo_body(self, prompt: list[int]) -> dict[str, Any]:
        return {
            "model": self._model,
            "prompt": prompt,
            "max_tokens": 1,
            "echo": True,
            "logprobs": 1,
            "temperature": 0.0,
            "return_tokens_as_token_ids": True,
        }

    # -- tokenizer and template ---------------------------------------------------------

    async def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        got = await self.http.post_json(
            "/tokenize", {"model": self._model, "prompt": text, "add_special_tokens": add_special}
        )
        return [int(t) for t in got.get("tokens", [])]

    async def render_chat(
        self, messages: Sequence[Message], *, add_generation_prompt: bool, tools_json: str = ""
    ) -> tuple[str, list[int]]:
        if not messages:
            raise InvalidRequestError("messages must not be empty", param="messages")
        refuse_tools(self.cfg.model_id, self.kind, tools_json, messages)
        got = await self.http.post_json(
            "/tokenize",
            {
                "model": self._model,
                "messages": [{"role": m.role, "content": m.content} for m in messages],
                "add_generation_prompt": add_generation_prompt,
            },
        )
        tokens = [int(t) for t in got.get("tokens", [])]
        return await self._detok(tokens), tokens

    # -- generation and verification ----------------------------------------------------

    def _body(self, req: StreamRequest) -> dict[str, Any]:
        s = req.sampling
        body: dict[str, Any] = {
            "model": self._model,
            "prompt": list(req.tokens),
            "max_tokens": req.n,
            "stream": True,
            "temperature": max(0.0, s.temperature),
            "top_p": s.top_p,
            "top_k": s.top_k if s.top_k > 0 else -1,
            "min_p": s.min_p,
            "repetition_penalty": s.repeat_penalty,
            "presence_penalty": s.presence_penalty,
            "frequency_penalty": s.frequency_penalty,
            "logprobs": max(1, req.n_probs),
            "return_tokens_as_token_ids": True,
            "skip_special_tokens": False,
        }
        if s.logit_bias:
            body["logit_bias"] = {str(t): max(-100.0, b) for t, b in s.logit_bias.items()}
        if req.seed is not None:
            body["seed"] = int(req.seed)
        return body

    async def _stream(self, req: StreamRequest) -> AsyncIterator[StreamedToken]:
        async for chunk in self.http.stream_json("/v1/completions", self._body(req)):
            for choice in chunk.get("choices") or []:
                lp = choice.get("logprobs") or {}
                tokens = lp.get("tokens") or []
                lps = lp.get("token_logprobs") or []
                tops = lp.get("top_logprobs") or []
                for i, tok in enumerate(tokens):
                    tid = _tid(tok)
                    value = float(lps[i]) if i < len(lps) and lps[i] is not None else 0.0
                    top = tuple(_top(tops[i] if i < len(tops) else None)[: req.n_probs])
                    yield StreamedToken(
                        token_id=tid,
                        logprob=TokenLogprob(token_id=tid, logprob=value, top=top),
                        prob=math.exp(value),
                    )

    async def _verify_draft(
        self, session: HttpSession, draft: list[int]
    ) -> tuple[int, int, tuple[TokenLogprob, ...]]:
        s = session.sampling
        plain_greedy = s.greedy and not s.logit_bias and not s.has_penalties
        if not self.facts.can_verify or not plain_greedy:
            if not self.facts.can_verify:
                await super()._verify_draft(session, draft)
            step = await session._next_plain()  # reject the draft, one plain step
            return 0, step.token_id, (step.logprob,) if step.logprob else ()
        base = list(session.tokens)
        got = await self.http.post_json("/v1/completions", self._echo_body(base + draft))
        lp = got["choices"][0]["logprobs"]
        tops, tokens = lp["top_logprobs"], lp["tokens"]
        n = len(base)
        emitted: list[TokenLogprob] = []
        for j, d in enumerate(draft):
            top = _top(tops[n + j])
            best = top[0][0]
            emitted.append(TokenLogprob(token_id=best, logprob=top[0][1], top=tuple(top)))
            if best != d:
                return j, best, tuple(emitted) if session.logprobs else ()
        nxt = _tid(tokens[n + len(draft)])
        top = _top(tops[n + len(draft)]) if len(tops) > n + len(draft) else []
        value = lp["token_logprobs"][n + len(draft)]
        emitted.append(TokenLogprob(token_id=nxt, logprob=float(value or 0.0), top=tuple(top)))
        return len(draft), nxt, tuple(emitted) if session.logprobs else ()
