"""Faults look like faults (issue 19), through the served gateway app: a known route that is
not serving answers 503 naming its state with ``Retry-After``, stays in ``/v1/models`` with
its state in a ``tightwad`` field; 404 only for names never known or removed on purpose; a
stream cut by an engine fault ends with an error event. And how ControllerRoutes turns the
controller's deployment states into those answers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import aiohttp
import pytest

from tightwad.errors import UnavailableError
from tightwad.gateway.api import GatewaySettings
from tightwad.gateway.controller_routes import ControllerRoutes, PublishedRoute, _Counted
from tightwad.gateway.faults import UnavailableRoute
from tightwad.gateway.server import GatewayServer
from tightwad.gateway.types import Backend

from .fakes import FakeBackend

API_KEY = "sk-faults"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@dataclass
class _Started(FakeBackend):
    async def start(self) -> None:
        return None


def _chat(model: str, stream: bool = False) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}


@pytest.fixture
async def served() -> AsyncIterator[tuple[GatewayServer, aiohttp.ClientSession]]:
    backends = {
        "ok": _Started(name="ok"),
        "down": _Started(name="down", fail_at=0, error=UnavailableError("engine restarting")),
        "cut": _Started(name="cut", fail_at=2, error=UnavailableError("the engine went away")),
    }
    server = GatewayServer([], GatewaySettings(api_key=API_KEY), port=0, passthrough=backends)
    await server.start()
    server.put("m", UnavailableRoute("m", "degraded", detail="rpc-server lost", retry_after_s=7.2))
    async with aiohttp.ClientSession(base_url=server.url, headers=AUTH) as http:
        try:
            yield server, http
        finally:
            await server.stop()


async def test_a_known_route_that_does_not_serve_is_503_with_retry_after(
    served: tuple[GatewayServer, aiohttp.ClientSession],
) -> None:
    _, http = served
    for stream in (False, True):
        async with http.post("/v1/chat/completions", json=_chat("m", stream)) as r:
            assert r.status == 503
            assert r.headers["Retry-After"] == "8"
            error = (await r.json())["error"]
        assert (error["type"], error["code"]) == ("server_error", "service_unavailable")
        assert "state: degraded" in error["message"] and "rpc-server lost" in error["message"]
    # An engine that fails before the first token: 503, the default Retry-After.
    async with http.post("/v1/chat/completions", json=_chat("down")) as r:
        assert r.status == 503 and r.headers["Retry-After"] == "5"
        assert "engine restarting" in (await r.json())["error"]["message"]
    # Never configured: 404, as OpenAI says it.
    async with http.post("/v1/chat/completions", json=_chat("never")) as r:
        assert r.status == 404 and "Retry-After" not in r.headers
        assert (await r.json())["error"]["code"] == "model_not_found"


async def test_models_keep_listing_it_with_its_state(
    served: tuple[GatewayServer, aiohttp.ClientSession],
) -> None:
    _, http = served
    async with http.get("/v1/models") as r:
        assert r.status == 200
        data = {m["id"]: m for m in (await r.json())["data"]}
    assert set(data) == {"ok", "down", "cut", "m"}
    assert data["m"]["tightwad"] == {"state": "degraded", "ready": False, "retry_after_s": 7.2}
    assert data["ok"]["tightwad"] == {"state": "serving", "ready": True}
    assert data["m"]["object"] == "model" and data["m"]["owned_by"] == "tightwad"
    async with http.get("/v1/models/m") as r:
        assert r.status == 200 and (await r.json())["tightwad"]["state"] == "degraded"


async def test_a_stream_cut_by_an_engine_fault_ends_with_an_error_event(
    served: tuple[GatewayServer, aiohttp.ClientSession],
) -> None:
    _, http = served
    async with http.post("/v1/chat/completions", json=_chat("cut", stream=True)) as r:
        assert r.status == 200
        text = await r.text()
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert events and events[-1] != "[DONE]"
    last = json.loads(events[-1])
    assert last["error"]["code"] == "service_unavailable"
    assert "the engine went away" in last["error"]["message"]
    assert any("choices" in json.loads(e) for e in events[:-1])  # tokens came first


# --- ControllerRoutes: states -> 503 or 404 -----------------------------------------------


class _Table:
    def __init__(self) -> None:
        self.routes: dict[str, Backend] = {}

    def put(self, name: str, backend: Backend) -> None:
        self.routes[name] = backend

    def remove(self, name: str) -> None:
        self.routes.pop(name, None)


class _Serving:
    spec = type("S", (), {"target": None, "drafters": (), "draft_mode": "ngram"})()

    def info(self) -> object:
        raise NotImplementedError

    async def close(self) -> None:
        return None


async def test_unpublished_routes_follow_their_deployment_state() -> None:
    table = _Table()
    states: dict[str, tuple[str, str]] = {}
    fail = False

    async def ask() -> Mapping[str, tuple[str, str]]:
        if fail:
            raise UnavailableError("controller down")
        return dict(states)

    watcher = ControllerRoutes("127.0.0.1:1", table, states=ask)

    async def start(route: PublishedRoute) -> _Counted | None:
        return _Counted(_Serving())  # type: ignore[arg-type]

    watcher._start = start  # type: ignore[method-assign]
    m = PublishedRoute("m", engine_address="127.0.0.1:9", can_verify=True)
    states["m"] = ("serving", "")
    await watcher.apply([m])
    assert isinstance(table.routes["m"], _Counted)

    states["m"] = ("degraded", "re-placing after a lost rpc-server")
    await watcher.apply([])  # withdrawn while the controller re-plans
    stand_in = table.routes["m"]
    assert isinstance(stand_in, UnavailableRoute) and stand_in.state == "degraded"

    states["p"] = ("pending", "")  # a deployment not published yet is known too
    await watcher.apply([])
    assert isinstance(table.routes["p"], UnavailableRoute)

    states["m"] = ("serving", "")
    await watcher.apply([m])  # back: served again
    assert isinstance(table.routes["m"], _Counted) and "m" not in watcher.unavailable

    states["m"], states["p"] = ("stopping", ""), ("stopped", "")
    await watcher.apply([])  # stopped on purpose: gone (404)
    assert table.routes == {}

    await watcher.apply([m])
    fail = True
    await watcher.apply([])  # the controller cannot say: removed, as before
    assert table.routes == {}
    await watcher.close()
