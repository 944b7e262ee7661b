"""The seam between the HTTP API and the speculative loop.

The HTTP layer (``api.py``) parses an OpenAI request into a :class:`GenerationRequest`, hands it
to a :class:`Backend` for the route named by ``model``, and turns the :class:`GenerationEvent`
stream into OpenAI JSON or SSE. The loop (:mod:`tightwad.gateway.loop`) implements
:class:`Backend` over gRPC Engine sessions; tests of the HTTP layer use a fake that implements
the same Protocol.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from tightwad.engine.grammar import GrammarSpec
from tightwad.gateway.tools.request import Tool, ToolCall, ToolChoice
from tightwad.spec.sampling import SamplingConfig

__all__ = [
    "Backend",
    "ChatMessage",
    "Finished",
    "GenerationEvent",
    "GenerationRequest",
    "GenerationStats",
    "LogprobEntry",
    "RouteInfo",
    "TextDelta",
    "TokenOrigin",
    "ToolCallDelta",
    "Usage",
]

FinishReason = Literal["stop", "length", "tool_calls"]
# Where a delta's tokens came from: accepted draft tokens, the target's own token of a drafted
# round (its correction or bonus), a plain step, or tokens a grammar forced (drafted for free).
TokenOrigin = Literal["draft", "target", "plain", "forced"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str
    name: str = ""
    # An assistant message's calls, and the call a ``tool`` message answers.
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One completion to produce. Exactly one of ``messages`` / ``prompt`` is set."""

    model: str
    messages: tuple[ChatMessage, ...] | None = None
    prompt: str | None = None
    # Completions API: token ids given directly as the prompt.
    prompt_tokens: tuple[int, ...] | None = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    seed: int | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    # OpenAI predicted outputs: the expected output text (drafting hint; never changes output).
    prediction: str | None = None
    # Completions API: prepend the prompt to the output text.
    echo: bool = False
    request_id: str = ""
    # Structured outputs: the grammar every output token is constrained by (response_format).
    grammar: GrammarSpec | None = None
    # Tools the model may call (rendered through its chat template) and how it must choose.
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = field(default_factory=lambda: ToolChoice("none"))
    parallel_tool_calls: bool = True


@dataclass(frozen=True, slots=True)
class LogprobEntry:
    token: str
    token_bytes: bytes
    logprob: float
    top: tuple[tuple[str, bytes, float], ...] = ()


@dataclass(frozen=True, slots=True)
class TextDelta:
    """New output text (UTF-8-safe, stop strings already cut) and the tokens it came from.

    ``origin`` and ``round`` say where those tokens came from (the loop's round number, 0 for
    text outside a round such as an echo): a dashboard colours tokens by them, the OpenAI
    renderers ignore them. Text held back by the detokenizer or a stop-string scan comes out
    with a later delta, so a delta's text can lag its tokens."""

    text: str
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[LogprobEntry, ...] = ()
    origin: TokenOrigin = "plain"
    round: int = 0


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class GenerationStats:
    """What speculation did for this request (the ``tightwad`` object of a response)."""

    mode: str = "none"
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    plain_steps: int = 0
    draft_ms: float = 0.0
    verify_ms: float = 0.0
    prefill_ms: float = 0.0
    cached_prompt_tokens: int = 0
    draft_failures: int = 0
    accepted_by_position: tuple[int, ...] = ()
    # Grammar-forced tokens sent as drafts (included in drafted/accepted too).
    forced_drafted: int = 0
    forced_accepted: int = 0
    # The load the draft-length control priced each target step at, summed: over the steps
    # (rounds + plain_steps), the live runs on the route where the target batches them (1
    # each where it does not: the runs take turns, see loop.policy.priced_load).
    load_steps: int = 0

    @property
    def mean_accepted_length(self) -> float:
        """1 + accepted / rounds: tokens emitted per target forward pass in drafted rounds."""
        return 1.0 + self.accepted / self.rounds if self.rounds else 1.0

    def as_json(self) -> dict[str, object]:
        steps = self.rounds + self.plain_steps
        return {
            "mode": self.mode,
            "rounds": self.rounds,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "acceptance_rate": (self.accepted / self.drafted) if self.drafted else 0.0,
            "mean_accepted_length": self.mean_accepted_length,
            "plain_steps": self.plain_steps,
            "draft_ms": round(self.draft_ms, 3),
            "verify_ms": round(self.verify_ms, 3),
            "prefill_ms": round(self.prefill_ms, 3),
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "draft_failures": self.draft_failures,
            "accepted_by_position": list(self.accepted_by_position),
            "forced_drafted": self.forced_drafted,
            "forced_accepted": self.forced_accepted,
            "mean_live_runs": round(self.load_steps / steps, 3) if steps else 0.0,
        }


@dataclass(frozen=True, slots=True)
class Finished:
    finish_reason: FinishReason
    usage: Usage
    stats: GenerationStats


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of tool call ``index``: its id and name come once, in its first delta (with
    empty ``arguments``); later deltas carry the arguments' JSON text in pieces."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


GenerationEvent = TextDelta | ToolCallDelta | Finished


@dataclass(frozen=True, slots=True)
class RouteInfo:
    """What /v1/models and /v1/tightwad/status show about a route."""

    name: str
    target: str
    draft_mode: str
    draft: str | None
    ready: bool
    n_ctx: int
    can_verify: bool
    details: Mapping[str, object] = field(default_factory=dict)


class Backend(Protocol):
    """A route's generator. Errors are raised as :mod:`tightwad.errors` types: before the first
    event they become an HTTP error; after it, an SSE error event."""

    def info(self) -> RouteInfo: ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]: ...
