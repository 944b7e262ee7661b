"""The controller as the dashboard sees it: one follower per gateway, shared by every page.

Owns :class:`ClusterFeed`. While at least one page is open it reads the controller through
:class:`tightwad.cli.client.ControllerClient` (the project's one client of the controller):
``GetStatus`` every ``poll_s`` (nodes, devices, deployments), and ``WatchEvents`` followed
live. Each page subscribes to a bounded queue of ``(kind, payload)`` messages: ``("cluster",
view)`` and ``("event", event)``; a new subscriber first gets the latest view and the last
``keep_events`` events. Guarantees: however many pages are open, the controller sees one
status poll per ``poll_s`` and one event stream; an unreachable controller is a ``cluster``
message with ``reachable: false`` and the reason, retried with capped exponential backoff; a
slow page never blocks the others (its queue drops what it cannot hold); after the last page
leaves, the follower stops.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

import grpc

from tightwad.cli.client import ControllerClient
from tightwad.errors import TightwadError
from tightwad.gateway.dashboard.views import cluster_view, event_view
from tightwad.logs import get_logger

__all__ = ["ClusterFeed", "Message"]

log = get_logger(__name__)

Message = tuple[str, dict[str, Any]]


class ClusterFeed:
    """Follows one controller for the dashboard's pages."""

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        poll_s: float = 2.0,
        keep_events: int = 200,
        timeout_s: float = 5.0,
        retry_cap_s: float = 10.0,
    ) -> None:
        self.address = address
        self.token = token
        self.credentials = credentials
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.retry_cap_s = retry_cap_s
        self.latest: dict[str, Any] | None = None
        self.events: deque[dict[str, Any]] = deque(maxlen=keep_events)
        self._subscribers: set[asyncio.Queue[Message]] = set()
        self._task: asyncio.Task[None] | None = None
        self._last_event = 0

    # -- pages ----------------------------------------------------------------------------

    def subscribe(self) -> asyncio.Queue[Message]:
        """A queue of this feed's messages, starting with the latest view and events."""
        queue: asyncio.Queue[Message] = asyncio.Queue(maxsize=self.events.maxlen or 200)
        if self.latest is not None:
            queue.put_nowait(("cluster", self.latest))
        for event in list(self.events)[-(queue.maxsize - 1) :]:
            queue.put_nowait(("event", event))
        self._subscribers.add(queue)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="dashboard_cluster_feed")
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Message]) -> None:
        self._subscribers.discard(queue)
        if not self._subscribers and self._task is not None:
            self._task.cancel()

    async def close(self) -> None:
        self._subscribers.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _publish(self, kind: str, payload: dict[str, Any]) -> None:
        for queue in self._subscribers:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait((kind, payload))

    # -- the controller -------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                async with ControllerClient(
                    self.address,
                    token=self.token,
                    timeout=self.timeout_s,
                    credentials=self.credentials,
                ) as client:
                    await client.connect()
                    failures = 0
                    async with asyncio.TaskGroup() as group:
                        group.create_task(self._poll(client))
                        group.create_task(self._follow(client))
            except* (TightwadError, grpc.aio.AioRpcError, OSError) as group_error:
                error = group_error.exceptions[0]
                failures += 1
                log.warning("dashboard_controller_unreachable", controller=self.address,
                            error=str(error))  # fmt: skip
                self.latest = {"reachable": False, "address": self.address, "error": str(error)}
                self._publish("cluster", self.latest)
            await asyncio.sleep(min(self.retry_cap_s, 0.5 * 2 ** min(failures, 8)))

    async def _poll(self, client: ControllerClient) -> None:
        while True:
            status = await client.status()
            self.latest = cluster_view(
                status.nodes,
                status.deployments,
                address=self.address,
                version=status.controller_version,
                uptime_s=status.uptime_s,
            )
            self._publish("cluster", self.latest)
            await asyncio.sleep(self.poll_s)

    async def _follow(self, client: ControllerClient) -> None:
        async for event in client.events(self._last_event, follow=True):
            self._last_event = max(self._last_event, event.event_id)
            view = event_view(event)
            self.events.append(view)
            self._publish("event", view)
        raise TightwadError("the controller closed the event stream")
