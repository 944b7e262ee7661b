"""A route's own ``max_concurrency`` / ``queue_size`` (the cluster file) are the limits the
served gateway applies to that route; the other routes keep the gateway's."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp

from tightwad.config import config_from_mapping
from tightwad.gateway.api import GatewaySettings
from tightwad.gateway.server import GatewayServer, RouteLimits, route_limits, settings_from_config

from .fakes import FakeBackend
from .test_api_limits import eventually

API_KEY = "sk-limits"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@dataclass
class _Started(FakeBackend):
    """A FakeBackend the server may start (as it starts every static route)."""

    async def start(self) -> None:
        return None


def _chat(model: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}]}


def test_gateway_max_choices_comes_from_the_file() -> None:
    assert (
        settings_from_config(config_from_mapping({})).max_choices == GatewaySettings().max_choices
    )
    cfg = config_from_mapping({"gateway": {"max_choices": 3}})
    assert settings_from_config(cfg).max_choices == 3


def test_route_limits_come_from_the_routes_that_set_them() -> None:
    cfg = config_from_mapping(
        {
            "routes": [
                {
                    "name": "a",
                    "target": "grpc://127.0.0.1:1",
                    "max_concurrency": 1,
                    "queue_size": 0,
                },
                {"name": "b", "target": "grpc://127.0.0.1:1", "queue_size": 3},
                {"name": "c", "target": "grpc://127.0.0.1:1"},
            ]
        }
    )
    assert route_limits(cfg) == {"a": RouteLimits(1, 0), "b": RouteLimits(None, 3)}


async def test_a_routes_own_limit_applies_and_the_others_keep_the_gateways() -> None:
    gate = asyncio.Event()
    own, other = _Started(gate=gate, name="own"), _Started(gate=gate, name="other")
    server = GatewayServer(
        [],
        GatewaySettings(api_key=API_KEY, max_concurrency=4, max_queue=8),
        port=0,
        passthrough={"own": own, "other": other},
        limits={"own": RouteLimits(max_concurrency=1, max_queue=0)},
    )
    base = await server.start()
    try:
        async with aiohttp.ClientSession(headers=AUTH) as http:

            async def post(model: str) -> int:
                async with http.post(f"{base}/v1/chat/completions", json=_chat(model)) as r:
                    await r.read()
                    return r.status

            running = asyncio.create_task(post("own"))
            others = [asyncio.create_task(post("other")) for _ in range(3)]
            await eventually(lambda: own.started == 1 and other.started == 3)
            assert await post("own") == 429  # its own limit: 1 running, no queue
            async with http.get(f"{base}/v1/tightwad/status") as r:
                routes = {x["name"]: x for x in (await r.json())["routes"]}
            assert (routes["own"]["in_flight"], routes["other"]["in_flight"]) == (1, 3)
            gate.set()
            assert [await t for t in (running, *others)] == [200, 200, 200, 200]
        # A route put later (the controller's) gets its own limits too.
        server.put("own", own)
        assert server._limiters["own"]._max_queue == 0
    finally:
        await server.stop()
