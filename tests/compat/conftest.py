"""A live gateway for the client-library suite: a real engine on Qwen2.5-Coder-1.5B (its
template takes tools; its output follows schemas under the grammar) behind a real gateway on
loopback, served from a thread of its own so that synchronous clients (LangChain's ``invoke``,
the openai SDK's sync client) and asynchronous ones both talk to it as to any server.

One gateway per test module (module scope): a model load costs seconds, a request far less."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from tightwad.engine.engine_config import EngineConfig
from tightwad.engine.server import EngineServer
from tightwad.fetch_models import ensure_model
from tightwad.gateway.api import GatewaySettings
from tightwad.gateway.engine_client import EngineClient
from tightwad.gateway.loop import RouteSpec
from tightwad.gateway.server import GatewayServer

API_KEY = "sk-compat"
MODEL = "qwen"


@dataclass(frozen=True)
class Live:
    """A running gateway: its OpenAI base URL (``.../v1``), key and model name."""

    base_url: str
    api_key: str = API_KEY
    model: str = MODEL

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=0)

    def async_openai(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=0)


class _Served:
    """An event loop in a daemon thread that hosts the engine and the gateway."""

    def __init__(self, model_path: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.model_path = model_path
        self.engine: EngineServer | None = None
        self.gateway: GatewayServer | None = None

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 300.0) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    async def _start(self) -> str:
        cfg = EngineConfig(MODEL, self.model_path, ctx_size=4096, max_sessions=4, threads=2)
        self.engine = EngineServer("127.0.0.1:0", engines=(cfg,))
        address = await self.engine.start()
        route = RouteSpec(
            name=MODEL, target=EngineClient(address, MODEL), draft_mode="ngram", calibrate=False
        )
        settings = GatewaySettings(api_key=API_KEY, max_tokens_cap=1024)
        self.gateway = GatewayServer([route], settings, host="127.0.0.1", port=0)
        return await self.gateway.start()

    async def _stop(self) -> None:
        if self.gateway is not None:
            await self.gateway.stop()
        if self.engine is not None:
            await self.engine.stop(grace=0.5)

    def __enter__(self) -> str:
        self.thread.start()
        try:
            return str(self.call(self._start()))
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            self.call(self._stop(), timeout=60.0)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10.0)
            self.loop.close()


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    """A gateway on Qwen2.5-Coder-1.5B, shared by the tests of one module."""
    with _Served(ensure_model("qwen2.5-coder-1.5b")) as url:
        yield Live(f"{url}/v1")
