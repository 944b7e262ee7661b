"""What the Engine service needs of an engine and of its sessions.

The embedded llama.cpp :class:`~tightwad.engine.llama_engine.Engine` satisfies these Protocols,
and so does every adapter in this package (a stock ``llama-server``, Ollama, an
OpenAI-compatible server). The service dispatches to them without knowing which is which; an
engine's :class:`~tightwad.engine.contract.EngineInfo` says honestly what it can do
(``can_verify``, ``can_draft``, ``kind``).

A session that cannot verify in one pass refuses ``verify`` with a non-empty draft
(:class:`~tightwad.errors.InvalidRequestError`); ``verify([])`` is always one plain step.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from tightwad.spec.sampling import SamplingConfig, SparseDist

__all__ = [
    "DraftStep",
    "EngineConfigLike",
    "EngineInfo",
    "EngineLike",
    "Message",
    "SessionLike",
    "TokenLogprob",
    "VerifyResult",
]


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str
    name: str = ""


@dataclass(frozen=True, slots=True)
class EngineInfo:
    model_id: str
    model_name: str
    architecture: str
    n_layers: int
    n_ctx: int
    n_ctx_train: int
    n_vocab: int
    vocab_fingerprint: str
    bos_token_id: int
    eog_token_ids: tuple[int, ...]
    live_sessions: int
    n_threads: int
    path: str
    engine_version: str
    devices: tuple[tuple[str, int], ...]
    has_chat_template: bool
    # What this engine can do: the embedded engine does everything; an HTTP adapter reports
    # only what its server really supports (see tightwad.engine.adapters).
    can_verify: bool = True
    can_draft: bool = True
    can_logprobs: bool = True
    kind: str = "embedded"  # embedded | llama_server | ollama | openai


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]


@dataclass(frozen=True, slots=True)
class VerifyResult:
    accepted: int
    next_token: int
    logprobs: tuple[TokenLogprob, ...]
    verify_ms: float
    n_tokens: int


@dataclass(frozen=True, slots=True)
class DraftStep:
    token_id: int
    prob: float
    q: SparseDist | None


class EngineConfigLike(Protocol):
    """The identity of a served model: the id it answers to, its context per session, and
    where it lives (a GGUF path, or a server URL for an adapter)."""

    @property
    def model_id(self) -> str: ...

    @property
    def ctx_size(self) -> int: ...

    @property
    def path(self) -> Path | str: ...


class SessionLike(Protocol):
    """One request's sequence. ``tokens`` is the prompt plus everything committed or drafted."""

    tokens: list[int]
    last_draft_stop: str

    async def verify(
        self, draft: Sequence[int], q: Sequence[SparseDist] | None = None
    ) -> VerifyResult: ...

    def generate(
        self, n: int, stop_tokens: Sequence[int] = (), *, ignore_eos: bool = False
    ) -> AsyncIterator[tuple[int, TokenLogprob | None, str | None]]: ...

    def draft(
        self,
        k: int,
        *,
        keep: int,
        append: Sequence[int],
        min_confidence: float = 0.0,
        top_m: int = 0,
    ) -> AsyncIterator[DraftStep]: ...

    async def rewind(self, keep: int) -> int: ...

    def release(self) -> None: ...


@runtime_checkable
class EngineLike(Protocol):
    """One served model: facts, tokenizer, chat template and sessions."""

    @property
    def cfg(self) -> EngineConfigLike: ...

    @property
    def live_sessions(self) -> int: ...

    async def info(self) -> EngineInfo: ...

    async def vocab_fingerprint(self) -> str: ...

    async def pieces(self) -> list[bytes]: ...

    async def special_tokens(self) -> list[int]: ...

    async def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]: ...

    async def detokenize(self, tokens: Sequence[int], *, render_special: bool) -> bytes: ...

    async def render_chat(
        self, messages: Sequence[Message], *, add_generation_prompt: bool
    ) -> tuple[str, list[int]]: ...

    async def open_session(
        self,
        prompt: Sequence[int],
        sampling: SamplingConfig,
        *,
        seed: int | None = None,
        top_logprobs: int = 0,
        logprobs: bool = False,
    ) -> tuple[SessionLike, int, float]: ...

    async def close(self) -> None: ...
