"""Fixtures: a real gateway app on a loopback port, raw aiohttp and openai clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass

import aiohttp
import openai
import pytest
from aiohttp import web

from tightwad.gateway.api import GatewaySettings, create_app
from tightwad.gateway.types import Backend

from .fakes import FakeBackend

API_KEY = "sk-test-key"


@dataclass
class Running:
    url: str
    app: web.Application
    session: aiohttp.ClientSession

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEY}"}

    def openai(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=API_KEY, max_retries=0)

    async def post(self, path: str, body: object, **kwargs: object) -> aiohttp.ClientResponse:
        headers = kwargs.pop("headers", self.auth)
        return await self.session.post(f"{self.url}{path}", json=body, headers=headers, **kwargs)  # type: ignore[arg-type]

    async def get(self, path: str, **kwargs: object) -> aiohttp.ClientResponse:
        headers = kwargs.pop("headers", self.auth)
        return await self.session.get(f"{self.url}{path}", headers=headers, **kwargs)  # type: ignore[arg-type]


Start = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Start a gateway: ``await start(routes, settings, handler_cancellation=True)``."""
    runners: list[web.AppRunner] = []
    sessions: list[aiohttp.ClientSession] = []

    async def _start(
        routes: Mapping[str, Backend] | None = None,
        settings: GatewaySettings | None = None,
        *,
        handler_cancellation: bool = True,
    ) -> Running:
        app = create_app(
            routes if routes is not None else {"fake": FakeBackend()},
            settings or GatewaySettings(api_key=API_KEY),
        )
        runner = web.AppRunner(app, handler_cancellation=handler_cancellation)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        session = aiohttp.ClientSession()
        sessions.append(session)
        return Running(f"http://127.0.0.1:{port}", app, session)

    yield _start
    for session in sessions:
        await session.close()
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
async def gw(start: Start, backend: FakeBackend) -> Running:
    return await start({"fake": backend})
