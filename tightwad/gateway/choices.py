"""Several choices of one request (OpenAI ``n``): their event streams run at once, merged.

Owns :func:`choice_request` (the request choice ``i`` runs: its own seed) and
:func:`merge_choices`. Guarantees:

- every choice is its own run of the Backend (its own speculative loop); they start together,
  so the engine's prefix cache shares the prompt's prefill between them (a session opened
  while another's prefill is queued copies that prefix);
- events come out as ``(index, event)`` in the order they were produced, so streamed choices
  interleave by index; a choice's events keep their order;
- the first error of any choice ends the merge with that error; however the merge ends, every
  choice's task is cancelled and awaited and every stream closed (``aclose``) after, so no
  task or generator outlives the request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

from tightwad.gateway.types import GenerationEvent, GenerationRequest
from tightwad.logs import get_logger

__all__ = ["choice_request", "merge_choices"]

log = get_logger("tightwad.gateway.choices")

_INT64_MAX = 2**63 - 1


def choice_request(request: GenerationRequest, index: int) -> GenerationRequest:
    """The request of choice ``index``: with a seed, choice ``i`` samples with ``seed + i``
    (``seed - i`` where that would overflow), so seeded choices differ yet repeat."""
    if index == 0:
        return request
    seed = request.seed
    if seed is not None:
        seed = seed + index if seed + index <= _INT64_MAX else seed - index
    rid = f"{request.request_id}-{index}" if request.request_id else ""
    return replace(request, seed=seed, request_id=rid)


async def _aclose(stream: object) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:
            log.exception("choice_close_failed")


_END = object()


async def merge_choices(
    streams: Sequence[AsyncIterator[GenerationEvent]],
) -> AsyncIterator[tuple[int, GenerationEvent]]:
    """The events of ``streams`` as ``(index, event)``, as they come (see the module)."""
    if len(streams) == 1:
        try:
            async for event in streams[0]:
                yield 0, event
        finally:
            await _aclose(streams[0])
        return
    queue: asyncio.Queue[tuple[int, object]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[GenerationEvent]) -> None:
        try:
            async for event in stream:
                await queue.put((index, event))
        except Exception as exc:
            await queue.put((index, exc))
            return
        await queue.put((index, _END))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        left = len(streams)
        while left:
            index, item = await queue.get()
            if item is _END:
                left -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for stream in streams:
            await _aclose(stream)
