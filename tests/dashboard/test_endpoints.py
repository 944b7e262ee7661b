"""The dashboard's endpoints over a real gateway on loopback with no model (no route): the page
is open, the data endpoints demand the API key like the API (OpenAI-style 401), the live
stream's SSE framing, and the playground's errors before the stream starts."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from yarl import URL

from tightwad.gateway.api import GatewaySettings
from tightwad.gateway.dashboard import DashboardSettings
from tightwad.gateway.server import GatewayServer

KEY = "sk-dashboard-unit"
DATA = (("GET", "/dashboard/api/snapshot"), ("GET", "/dashboard/api/live"),
        ("POST", "/dashboard/api/chat"))  # fmt: skip


@pytest.fixture
async def gateway() -> AsyncIterator[Callable[..., Any]]:
    servers: list[GatewayServer] = []

    async def start(api_key: str | None = None) -> GatewayServer:
        gw = GatewayServer(
            [], GatewaySettings(api_key=api_key), port=0,
            dashboard=DashboardSettings(push_s=0.05, interval_s=0.5),
        )  # fmt: skip
        await gw.start()
        servers.append(gw)
        return gw

    try:
        yield start
    finally:
        for gw in servers:
            await gw.stop()


async def test_with_a_key_the_data_endpoints_refuse_and_the_page_loads(gateway: Any) -> None:
    gw = await gateway(api_key=KEY)
    async with aiohttp.ClientSession() as http:
        for method, path in DATA:
            for auth in ({}, {"Authorization": "Bearer sk-wrong"}):
                async with http.request(method, gw.url + path, headers=auth, json={}) as r:
                    assert r.status == 401, (path, auth)
                    assert r.headers["WWW-Authenticate"] == "Bearer"
                    error = (await r.json())["error"]
                    assert error["type"] == "invalid_request_error", error
                    assert error["code"] == "invalid_api_key" and error["message"], error
        for path, kind in (("/", "text/html"), ("/dashboard/static/app.js", "text/javascript"),
                           ("/dashboard/static/app.css", "text/css")):  # fmt: skip
            async with http.get(gw.url + path) as r:
                assert r.status == 200 and r.headers["Content-Type"].startswith(kind), path
                assert "connect-src 'self'" in r.headers["Content-Security-Policy"]
        # A path out of the page's folder serves nothing (the package's source stays private).
        escape = URL(gw.url + "/dashboard/static/..%2F__init__.py", encoded=True)
        async with http.get(escape) as r:
            assert r.status in (401, 404) and "import" not in await r.text()
        async with http.get(gw.url + "/dashboard/static/nope.js") as r:
            assert r.status == 404 and (await r.json())["error"]["code"] == "unknown_url"
        bearer = {"Authorization": f"Bearer {KEY}"}
        async with http.get(gw.url + "/dashboard/api/snapshot", headers=bearer) as r:
            assert r.status == 200
            snap = await r.json()
    assert snap["auth"] is True and snap["routes"] == [] and snap["controller"] is None
    assert snap["uptime_s"] >= 0 and snap["time"] > 0


async def test_without_a_key_the_snapshot_is_open(gateway: Any) -> None:
    gw = await gateway()
    async with aiohttp.ClientSession() as http, http.get(gw.url + "/dashboard/api/snapshot") as r:
        assert r.status == 200 and (await r.json())["auth"] is False


async def test_the_live_stream_is_sse_frames_of_route_snapshots(gateway: Any) -> None:
    gw = await gateway(api_key=KEY)
    bearer = {"Authorization": f"Bearer {KEY}"}
    frames: list[dict[str, Any]] = []
    live = gw.url + "/dashboard/api/live"
    async with aiohttp.ClientSession() as http, http.get(live, headers=bearer) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        buf = b""
        while len(frames) < 2:
            buf += await r.content.readany()
            while b"\n\n" in buf:
                raw, buf = buf.split(b"\n\n", 1)
                lines = raw.decode().split("\n")
                assert len(lines) == 1 and lines[0].startswith("data: "), raw
                frames.append(json.loads(lines[0][len("data: ") :]))
    assert [f["type"] for f in frames] == ["routes", "routes"]
    assert frames[1]["data"]["time"] >= frames[0]["data"]["time"]
    assert frames[0]["data"]["routes"] == []


async def test_the_playground_refuses_bad_chats_before_streaming(gateway: Any) -> None:
    gw = await gateway(api_key=KEY)
    bearer = {"Authorization": f"Bearer {KEY}"}
    chat = gw.url + "/dashboard/api/chat"
    message = [{"role": "user", "content": "hi"}]
    async with aiohttp.ClientSession(headers=bearer) as http:
        async with http.post(chat, json={"model": "nope", "messages": message}) as r:
            assert r.status == 404 and (await r.json())["error"]["code"] == "model_not_found"
        body = {"model": "nope", "messages": message, "stream": False}
        async with http.post(chat, json=body) as r:
            assert r.status == 400 and (await r.json())["error"]["param"] == "stream"
        async with http.post(chat, data=b"[1, 2]") as r:
            assert r.status == 400 and (await r.json())["error"]["type"] == "invalid_request_error"
