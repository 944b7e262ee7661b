"""Text drafters: a server that shows no token ids (Ollama) drafting for a target Engine.

Owns :class:`TextDrafter` (one per configured server, shared by a route's requests: its
health and speed) and :class:`TextDraftProposer` (one per request). A round:

1. the *committed text* is the prompt's text (the completion prompt as sent, or the target's
   own rendering of the prompt tokens, special tokens included) + the output so far, decoded
   with the target's pieces; it ends at a target token boundary;
2. the drafter continues that text greedily (Ollama ``/api/generate``, ``raw: true``,
   ``temperature: 0``, ``num_predict`` = k);
3. the continuation is tokenized **on its own** with the target's tokenizer (the target
   Engine's Tokenize), so its first token starts exactly at the boundary; tokens are kept
   while their pieces spell the continuation byte for byte (a leading token that does not
   round-trip, such as a tokenizer's dummy prefix space, is dropped when the rest does);
4. those tokens are a one-hot draft, like predicted outputs
   (:class:`~tightwad.spec.proposers.PredictionProposer`): the target verifies them in one
   pass, so every emitted token is one the target chose; the drafter's text is never output.

A drafter that errors or stalls (``timeout_s``) is dropped for the request (the loop counts a
draft failure and decodes plainly, identical output) and rests ``cooldown_s`` for the route.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from tightwad.engine.adapters.ollama import OllamaClient
from tightwad.errors import TightwadError
from tightwad.gateway.engine_client import EngineClient
from tightwad.gateway.types import GenerationRequest
from tightwad.logs import get_logger

__all__ = ["TextDraftProposer", "TextDrafter", "aligned_tokens", "text_proposer"]

log = get_logger("tightwad.gateway.text_draft")


class TextDrafter:
    """A text server proposing continuations (Ollama), with its route-level health."""

    kind = "ollama"

    def __init__(self, client: OllamaClient) -> None:
        self.client = client
        self.address = client.url
        self.model = client.model
        self.failed_at: float | None = None
        self.draft_ms_per_token: float | None = None

    async def start(self) -> None:
        """Probe the server: the model is there and generates text."""
        await self.client.probe()

    async def close(self) -> None:
        await self.client.close()

    def healthy(self, now: float, cooldown_s: float) -> bool:
        return self.failed_at is None or now - self.failed_at > cooldown_s

    async def continuation(self, text: str, k: int) -> str:
        """Up to ``k`` of the drafter's own tokens continuing ``text``, greedily."""
        options = {"num_predict": k, "temperature": 0.0, "seed": 0}
        t0 = time.perf_counter()
        parts: list[str] = []
        async for chunk in self.client.generate(text, options, raw=True):
            parts.append(chunk.text)
        if parts:
            per = (time.perf_counter() - t0) * 1000.0 / max(1, len(parts))
            prev = self.draft_ms_per_token
            self.draft_ms_per_token = per if prev is None else 0.8 * prev + 0.2 * per
        return "".join(parts)


def aligned_tokens(ids: Sequence[int], pieces: Sequence[bytes], text: bytes) -> list[int]:
    """The tokens of ``ids`` that spell ``text`` from its first byte: all of them when they
    round-trip; without a leading token that does not (a dummy prefix space) when the rest
    does; else the longest prefix whose pieces are a prefix of ``text`` (maybe none)."""
    if b"".join(pieces[t] for t in ids) == text:
        return list(ids)
    if len(ids) > 1 and b"".join(pieces[t] for t in ids[1:]) == text:
        return list(ids[1:])
    out: list[int] = []
    at = 0
    for t in ids:
        piece = pieces[t]
        if not piece or not text.startswith(piece, at):
            break
        out.append(t)
        at += len(piece)
    return out


class TextDraftProposer:
    """One request's text drafting (see the module docstring)."""

    def __init__(
        self,
        drafter: TextDrafter,
        target: EngineClient,
        pieces: Sequence[bytes],
        *,
        prompt: Sequence[int],
        prompt_text: str | None,
        bos_token_id: int = -1,
        timeout_s: float = 5.0,
        route: str = "",
    ) -> None:
        self.drafter = drafter
        self.target = target
        self.pieces = pieces
        self.prompt = list(prompt)
        self.prompt_text = prompt_text
        self.bos = bos_token_id
        self.timeout_s = timeout_s
        self.route = route
        self._dropped = False
        self._out = bytearray()
        self._out_n = 0

    async def propose(self, output: Sequence[int], k: int) -> list[int] | None:
        """Up to ``k`` target tokens guessed to follow prompt + ``output`` ([] = no draft this
        time; None = the drafter failed and is dropped for the request: ask it no more)."""
        if self._dropped:
            return None
        if k <= 0:
            return []
        out = self._output_text(output)
        if out is None:  # the output ends inside a UTF-8 character: no clean text boundary
            return []
        try:
            async with asyncio.timeout(self.timeout_s):
                if self.prompt_text is None:
                    tokens = self.prompt[1:] if self.prompt[:1] == [self.bos] else self.prompt
                    self.prompt_text = await self.target.detokenize(tokens, render_special=True)
                text = await self.drafter.continuation(self.prompt_text + out, k)
                if not text:
                    return []
                ids = await self.target.tokenize(text, add_special=False, parse_special=False)
        except (TightwadError, TimeoutError) as exc:
            self._drop(exc)
            return None
        return aligned_tokens(ids, self.pieces, text.encode("utf-8"))[:k]

    def _output_text(self, output: Sequence[int]) -> str | None:
        for t in output[self._out_n :]:
            self._out += self.pieces[t]
        self._out_n = len(output)
        try:
            return self._out.decode("utf-8")
        except UnicodeDecodeError:
            return None

    def _drop(self, exc: BaseException) -> None:
        self._dropped = True
        self.drafter.failed_at = time.monotonic()
        log.warning(
            "drafter_dropped",
            route=self.route,
            drafter=self.drafter.address,
            kind=self.drafter.kind,
            reason=str(exc) or type(exc).__name__,
        )


def text_proposer(
    drafters: Sequence[TextDrafter],
    *,
    target: EngineClient,
    pieces: Sequence[bytes],
    request: GenerationRequest,
    prompt: Sequence[int],
    bos_token_id: int,
    timeout_s: float,
    cooldown_s: float,
    route: str,
) -> TextDraftProposer | None:
    """The request's text drafting: the fastest healthy text drafter, or None."""
    now = time.monotonic()
    healthy = [d for d in drafters if d.healthy(now, cooldown_s)]
    if not healthy:
        return None
    drafter = min(healthy, key=lambda d: d.draft_ms_per_token or 0.0)
    # A completion prompt is the text itself; chat and token prompts are rendered by the target.
    text = request.prompt if request.messages is None and request.prompt_tokens is None else None
    return TextDraftProposer(
        drafter,
        target,
        pieces,
        prompt=prompt,
        prompt_text=text,
        bos_token_id=bos_token_id,
        timeout_s=timeout_s,
        route=route,
    )
