"""Auth, allow-lists, body and queue limits, deadlines, disconnects, metrics, status, health."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web

from tightwad.errors import ConfigError
from tightwad.gateway.api import GATEWAY, GatewaySettings, create_app

from .conftest import API_KEY, Start
from .fakes import FakeBackend, script

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}


async def eventually(condition: Callable[[], bool], within: float = 3.0) -> None:
    """Wait until ``condition()`` is true (polling state the gateway owns), or fail."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - no event to wait on: we poll server state
            await asyncio.sleep(0.01)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {API_KEY}"},
     {"Authorization": "Bearer"}],
)  # fmt: skip
@pytest.mark.parametrize("path", ["/v1/models", "/v1/tightwad/status", "/metrics", "/v1/nope"])
async def test_missing_or_wrong_key_is_401(
    start: Start, headers: dict[str, str], path: str
) -> None:
    gw = await start()
    response = await gw.get(path, headers=headers)
    assert response.status == 401
    error = (await response.json())["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_no_key_configured_means_open(start: Start) -> None:
    gw = await start(settings=GatewaySettings(api_key=None))
    assert (await gw.get("/v1/models", headers={})).status == 200


async def test_health_is_open_and_ready_reflects_routes(start: Start) -> None:
    up, down = FakeBackend(), FakeBackend(ready=False)
    gw = await start({"up": up, "down": down})
    assert (await gw.get("/healthz", headers={})).status == 200
    response = await gw.get("/readyz", headers={})
    assert response.status == 503
    assert (await response.json())["not_ready"] == ["down"]
    down.ready = True
    assert (await gw.get("/readyz", headers={})).status == 200


@pytest.mark.parametrize(("networks", "status"), [(("10.0.0.0/8",), 403), (("127.0.0.0/8",), 200)])
@pytest.mark.parametrize("path", ["/metrics", "/v1/tightwad/status"])
async def test_operator_routes_obey_allow_list(
    start: Start, networks: tuple[str, ...], status: int, path: str
) -> None:
    gw = await start(settings=GatewaySettings(api_key=API_KEY, status_allow_networks=networks))
    response = await gw.get(path)
    assert response.status == status
    if status == 403:
        assert (await response.json())["error"]["code"] == "forbidden"
    assert (await gw.post("/v1/chat/completions", CHAT)).status == 200


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="status_allow_networks"):
        create_app({}, GatewaySettings(status_allow_networks=("not-a-cidr",)))
    with pytest.raises(ConfigError, match="max_concurrency"):
        GatewaySettings(max_concurrency=0)


@pytest.mark.parametrize("chunked", [False, True])
async def test_body_over_limit_is_413(start: Start, chunked: bool) -> None:
    backend = FakeBackend()
    gw = await start({"fake": backend}, GatewaySettings(api_key=API_KEY, max_body_bytes=1000))
    body = json.dumps({**CHAT, "user": "x" * 2000}).encode()

    async def chunks() -> AsyncIterator[bytes]:
        yield body

    data = chunks() if chunked else body
    headers = {**gw.auth, "Content-Type": "application/json"}
    response = await gw.session.post(f"{gw.url}/v1/chat/completions", data=data, headers=headers)
    assert response.status == 413
    error = (await response.json())["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "request_too_large")
    assert backend.started == 0


async def test_full_queue_is_429_at_once(start: Start) -> None:
    gate = asyncio.Event()
    backend = FakeBackend(gate=gate)
    settings = GatewaySettings(api_key=API_KEY, max_concurrency=1, max_queue=1)
    gw = await start({"fake": backend}, settings)
    running = asyncio.create_task(gw.post("/v1/chat/completions", CHAT))
    await eventually(lambda: backend.started == 1)
    queued = asyncio.create_task(gw.post("/v1/chat/completions", CHAT))
    limiter = gw.app[GATEWAY].limiters["fake"]
    await eventually(lambda: limiter.waiting == 1)
    refused = await gw.post("/v1/chat/completions", CHAT)
    assert refused.status == 429
    error = (await refused.json())["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert refused.headers["Retry-After"] == "1"
    status = await (await gw.get("/v1/tightwad/status")).json()
    assert (status["totals"]["in_flight"], status["totals"]["queued"]) == (1, 1)
    gate.set()
    assert [(await task).status for task in (running, queued)] == [200, 200]
    assert backend.started == 2
    metrics = await (await gw.get("/metrics")).text()
    assert 'tightwad_queue_rejections_total{route="fake"} 1.0' in metrics


async def test_deadline_before_first_byte_is_504(start: Start) -> None:
    backend = FakeBackend(hang_at=0)
    gw = await start({"fake": backend}, GatewaySettings(api_key=API_KEY, request_timeout_s=0.2))
    for stream in (False, True):
        response = await gw.post("/v1/chat/completions", {**CHAT, "stream": stream})
        assert response.status == 504
        assert (await response.json())["error"]["code"] == "timeout"
    assert backend.closed == 2


async def test_deadline_while_queued_is_504(start: Start) -> None:
    backend = FakeBackend()
    settings = GatewaySettings(api_key=API_KEY, request_timeout_s=0.3, max_concurrency=1)
    gw = await start({"fake": backend}, settings)
    async with gw.app[GATEWAY].limiters["fake"].slot():  # the only slot, held by the test
        response = await gw.post("/v1/chat/completions", CHAT)
    assert response.status == 504
    assert "queue" in (await response.json())["error"]["message"]
    assert backend.started == 0


async def test_deadline_after_first_byte_is_an_sse_error(start: Start) -> None:
    backend = FakeBackend(hang_at=2)
    gw = await start({"fake": backend}, GatewaySettings(api_key=API_KEY, request_timeout_s=0.3))
    response = await gw.post("/v1/chat/completions", {**CHAT, "stream": True})
    assert response.status == 200
    frames = [f.removeprefix("data: ") for f in (await response.text()).split("\n\n") if f]
    assert "[DONE]" not in frames
    assert json.loads(frames[-1])["error"]["code"] == "timeout"
    assert json.loads(frames[-2])["choices"][0]["delta"] == {"content": "lo"}
    assert backend.closed == 1


@pytest.mark.parametrize("handler_cancellation", [True, False])
async def test_client_disconnect_closes_the_backend(
    start: Start, handler_cancellation: bool
) -> None:
    # Without handler cancellation the gateway notices at its next write, so keep writing.
    events = script(["tok"] * 400)
    backend = (
        FakeBackend(events=events, hang_at=3)
        if handler_cancellation
        else FakeBackend(events=events, delay=0.01)
    )
    gw = await start({"fake": backend}, handler_cancellation=handler_cancellation)
    response = await gw.post("/v1/chat/completions", {**CHAT, "stream": True})
    assert response.status == 200
    first = await response.content.readuntil(b"\n\n")
    assert first.startswith(b"data: ")
    response.close()
    await eventually(lambda: backend.closed == 1)
    assert backend.finished_normally == 0


async def test_metrics_count_requests_tokens_and_speculation(start: Start) -> None:
    gw = await start()
    assert (await gw.post("/v1/chat/completions", CHAT)).status == 200
    assert (await gw.post("/v1/chat/completions", {**CHAT, "n": 9})).status == 400
    response = await gw.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = await response.text()
    ok = 'tightwad_requests_total{endpoint="/v1/chat/completions",route="fake",status="200"} 1.0'
    bad = 'tightwad_requests_total{endpoint="/v1/chat/completions",route="",status="400"} 1.0'
    assert ok in text and bad in text
    assert 'tightwad_generated_tokens_total{route="fake"} 3.0' in text
    assert 'tightwad_drafted_tokens_total{route="fake"} 6.0' in text
    assert 'tightwad_accepted_tokens_total{route="fake"} 4.0' in text
    assert 'tightwad_time_to_first_token_seconds_count{route="fake"} 1.0' in text
    assert 'tightwad_in_flight_requests{route="fake"} 0.0' in text
    assert "tightwad_request_duration_seconds_bucket" in text
    assert "tightwad_draft_failures_total" in text


async def test_status_shows_routes_and_totals(start: Start) -> None:
    gw = await start({"fake": FakeBackend(), "other": FakeBackend(ready=False)})
    assert (await gw.post("/v1/chat/completions", CHAT)).status == 200
    status = await (await gw.get("/v1/tightwad/status")).json()
    routes = {route["name"]: route for route in status["routes"]}
    assert routes["fake"]["ready"] is True and routes["other"]["ready"] is False
    assert routes["fake"]["target"] == "target.gguf"
    assert routes["fake"]["details"] == {"hosts": 2}
    assert (routes["fake"]["in_flight"], routes["fake"]["queued"]) == (0, 0)
    totals = status["totals"]
    assert (totals["requests"], totals["completion_tokens"], totals["drafted"]) == (1, 3, 6)
    assert totals["acceptance_rate"] == pytest.approx(4 / 6)


async def test_on_shutdown_hook_runs() -> None:
    calls: list[web.Application] = []

    async def hook(app: web.Application) -> None:
        calls.append(app)

    app = create_app({"fake": FakeBackend()}, GatewaySettings(), on_shutdown=hook)
    runner = web.AppRunner(app)
    await runner.setup()
    await runner.cleanup()
    assert calls == [app]
