"""A scripted Backend for the HTTP layer's tests: it implements the Protocol of
``tightwad.gateway.types`` and records what it was asked and whether it was closed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field

from tightwad.gateway.types import (
    Finished,
    GenerationEvent,
    GenerationRequest,
    GenerationStats,
    LogprobEntry,
    RouteInfo,
    TextDelta,
    Usage,
)

STATS = GenerationStats(mode="draft", rounds=2, drafted=6, accepted=4, plain_steps=1)


def script(
    texts: Sequence[str],
    *,
    finish: str = "stop",
    prompt_tokens: int = 7,
    with_logprobs: bool = False,
) -> list[GenerationEvent]:
    """One TextDelta per text (one token each), then Finished with the Backend's own usage."""
    events: list[GenerationEvent] = []
    for i, text in enumerate(texts):
        logprobs: tuple[LogprobEntry, ...] = ()
        if with_logprobs:
            top = ((text, text.encode(), -0.1), ("zz", b"zz", -2.5))
            logprobs = (LogprobEntry(text, text.encode(), -0.1 * (i + 1), top),)
        events.append(TextDelta(text, (100 + i,), logprobs))
    usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=len(texts))
    events.append(Finished(finish, usage, STATS))  # type: ignore[arg-type]
    return events


@dataclass
class FakeBackend:
    """Emits ``events`` in order. Knobs: ``gate`` (wait before the first event), ``fail_at``
    (raise ``error`` before event i), ``hang_at`` (block forever before event i), ``delay``
    (sleep between events). Completions ``echo`` is honoured as the Protocol expects: the prompt
    text comes first, as ordinary text."""

    events: Sequence[GenerationEvent] = field(default_factory=lambda: script(["Hel", "lo", "!"]))
    name: str = "fake"
    ready: bool = True
    gate: asyncio.Event | None = None
    fail_at: int | None = None
    error: BaseException = field(default_factory=lambda: RuntimeError("boom"))
    hang_at: int | None = None
    delay: float = 0.0
    requests: list[GenerationRequest] = field(default_factory=list)
    started: int = 0
    closed: int = 0
    finished_normally: int = 0
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    generators: list[AsyncGenerator[GenerationEvent]] = field(default_factory=list)

    def info(self) -> RouteInfo:
        return RouteInfo(
            name=self.name,
            target="target.gguf",
            draft_mode="draft",
            draft="draft.gguf",
            ready=self.ready,
            n_ctx=4096,
            can_verify=True,
            details={"hosts": 2},
        )

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        # Keep a reference, so only an explicit ``aclose()`` (never garbage collection) can
        # close an unfinished generator: the tests then prove that the gateway calls it.
        generator = self._generate(request)
        self.generators.append(generator)
        return generator

    async def _generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent]:
        self.requests.append(request)
        self.started += 1
        self.entered.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
            if request.echo and request.prompt:
                yield TextDelta(request.prompt)
            for i, event in enumerate(self.events):
                if i == self.fail_at:
                    raise self.error
                if i == self.hang_at:
                    await asyncio.Event().wait()
                if i and self.delay:
                    await asyncio.sleep(self.delay)
                yield event
            self.finished_normally += 1
        finally:
            self.closed += 1
