"""The event log: append (persisted, then announced) and follow (history, then live).

Every state change the controller makes is told here once, with a snake_case ``kind`` and a
message a person can act on. ``follow(since)`` yields events with ``event_id > since`` from the
store, then new ones as they are appended, without gaps or duplicates.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

from tightwad.clock import Clock
from tightwad.controller.domain import Event, EventLevel
from tightwad.controller.store import Store
from tightwad.logs import get_logger

__all__ = ["EventLog"]

log = get_logger("tightwad.controller.events")


class EventLog:
    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._wakeup = asyncio.Event()
        self._last = store.last_event_id()
        self._closed = False

    def append(
        self,
        kind: str,
        message: str,
        *,
        level: EventLevel = EventLevel.INFO,
        node_id: str = "",
        deployment_id: str = "",
        fields: Mapping[str, str] | None = None,
    ) -> Event:
        event = self._store.append_event(
            self._clock.time(),
            level,
            kind,
            message,
            node_id=node_id,
            deployment_id=deployment_id,
            fields=fields,
        )
        self._last = event.event_id
        log.info(
            "event",
            kind=kind,
            level=level.value,
            node=node_id,
            deployment=deployment_id,
            msg=message,
        )
        self._wake()
        return event

    def _wake(self) -> None:
        """Wake every follower waiting now; later waits use a fresh event."""
        self._wakeup.set()
        self._wakeup = asyncio.Event()

    async def close(self) -> None:
        """Ends every follower."""
        self._closed = True
        self._wake()

    async def follow(self, since: int = 0, *, follow: bool = True) -> AsyncIterator[Event]:
        cursor = since
        while True:
            batch = self._store.events_since(cursor, limit=1000)
            for event in batch:
                cursor = event.event_id
                yield event
            if batch:
                continue
            if not follow or self._closed:
                return
            wakeup = self._wakeup
            if self._last <= cursor and not self._closed:
                await wakeup.wait()
