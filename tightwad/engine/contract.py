"""What the Engine service needs of an engine and of its sessions.

The embedded llama.cpp :class:`~tightwad.engine.llama_engine.Engine` satisfies these Protocols,
and so does every adapter in this package (a stock ``llama-server``, Ollama, an
OpenAI-compatible server). The service dispatches to them without knowing which is which; an
engine's :class:`~tightwad.engine.contract.EngineInfo` says honestly what it can do
(``can_verify``, ``can_draft``, ``kind``).

A session that cannot verify in one pass refuses ``verify`` with a non-empty draft
(:class:`~tightwad.errors.InvalidRequestError`); ``verify([])`` is always one plain step.

A session opened with a grammar (``open_session(..., grammar=spec)``) emits only tokens the
grammar allows, in ``generate`` and ``verify`` alike: every row is masked by the grammar's
state after the tokens before it, before the sampling chain. An engine that cannot constrain
its output refuses such an open (:class:`~tightwad.errors.InvalidRequestError`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from tightwad.spec.sampling import SamplingConfig, SparseDist

if TYPE_CHECKING:
    from tightwad.engine.grammar import GrammarSpec

__all__ = [
    "BatchOccupancy",
    "DraftEnd",
    "DraftStep",
    "DraftStop",
    "EngineConfigLike",
    "EngineInfo",
    "EngineLike",
    "GenerateStop",
    "Message",
    "SessionLike",
    "TokenLogprob",
    "VerifyResult",
]


@dataclass(frozen=True, slots=True)
class Message:
    """A chat message. ``tool_calls_json`` is an assistant message's tool calls as OpenAI's JSON
    array; ``tool_call_id`` the call a ``tool`` message answers (both empty otherwise)."""

    role: str
    content: str
    name: str = ""
    tool_calls_json: str = ""
    tool_call_id: str = ""


@dataclass(frozen=True, slots=True)
class BatchOccupancy:
    """Live occupancy of an engine's continuous batching (the wire's ``BatchOccupancy``): one
    step is one forward pass over the pending work of many sessions. All zero (``enabled``
    False) for an engine that does not batch, or an older engine that does not say."""

    enabled: bool = False
    decodes: int = 0
    jobs: int = 0
    tokens: int = 0
    prefill_tokens: int = 0
    mean_sessions_per_step: float = 0.0
    mean_tokens_per_step: float = 0.0
    recent_sessions_per_step: float = 0.0
    max_jobs: int = 0
    max_tokens: int = 0
    max_sessions: int = 0
    step_token_budget: int = 0
    prefill_chunk: int = 0

    def as_dict(self) -> dict[str, int | float | bool]:
        """The fields by name (for status pages)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


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
    batch: BatchOccupancy = field(default_factory=BatchOccupancy)


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]


class GenerateStop(StrEnum):
    """Why a Generate ended (the wire's GenerateStop)."""

    LENGTH = "length"
    EOG = "eog"
    TOKEN = "token"
    CONTEXT_FULL = "context_full"
    # The grammar is complete: nothing but an end-of-generation token may follow.
    GRAMMAR = "grammar"


class DraftStop(StrEnum):
    """Why a Draft ended (the wire's DraftStop)."""

    LENGTH = "length"
    LOW_CONFIDENCE = "low_confidence"
    EOG = "eog"
    CONTEXT_FULL = "context_full"


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """One Verify round. Under a grammar: ``grammar_valid`` draft tokens were allowed (the
    draft was cut at the first token it forbids, before verification), ``forced`` are the
    tokens the grammar forces after ``next_token``, and ``grammar_done`` says the grammar is
    complete after ``next_token``. Without a grammar they are ``len(draft)``, ``()``, False."""

    accepted: int
    next_token: int
    logprobs: tuple[TokenLogprob, ...]
    verify_ms: float
    n_tokens: int
    grammar_valid: int = 0
    forced: tuple[int, ...] = ()
    grammar_done: bool = False


@dataclass(frozen=True, slots=True)
class DraftStep:
    token_id: int
    prob: float
    q: SparseDist | None


@dataclass(frozen=True, slots=True)
class DraftEnd:
    """The last item of every ``draft`` iteration: why the draft ended."""

    stop: DraftStop


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

    async def verify(
        self, draft: Sequence[int], q: Sequence[SparseDist] | None = None
    ) -> VerifyResult: ...

    def generate(
        self, n: int, stop_tokens: Sequence[int] = (), *, ignore_eos: bool = False
    ) -> AsyncIterator[tuple[int, TokenLogprob | None, GenerateStop | None]]: ...

    async def forced(self) -> tuple[int, ...]:
        """The tokens the session's grammar forces next (empty without a grammar)."""
        ...

    def draft(
        self,
        k: int,
        *,
        keep: int,
        append: Sequence[int],
        min_confidence: float = 0.0,
        top_m: int = 0,
    ) -> AsyncIterator[DraftStep | DraftEnd]:
        """Yields the proposed tokens, then one :class:`DraftEnd`."""
        ...

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
        self, messages: Sequence[Message], *, add_generation_prompt: bool, tools_json: str = ""
    ) -> tuple[str, list[int]]:
        """Render with the model's own template; ``tools_json`` (OpenAI's tools array as JSON,
        empty = none) is the template's ``tools`` variable. An engine that cannot render
        tools refuses a non-empty one (InvalidRequestError)."""
        ...

    async def open_session(
        self,
        prompt: Sequence[int],
        sampling: SamplingConfig,
        *,
        seed: int | None = None,
        top_logprobs: int = 0,
        logprobs: bool = False,
        grammar: GrammarSpec | None = None,
    ) -> tuple[SessionLike, int, float]: ...

    async def close(self) -> None: ...
