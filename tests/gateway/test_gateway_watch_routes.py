"""The gateway follows the controller's routes (issue #6) and survives its death (issue #8).

A real ``tightwad-controller`` process, a real agent (in-process, registering over the real
Register stream) whose engine-host child serves SmolLM2-135M, and a gateway with no route of
its own but ``controller`` set. In order:

(a) a deployment the controller publishes appears in ``GET /v1/models`` and answers;
(b) stopping it removes the route: 404 ``model_not_found`` in OpenAI's error shape;
(c) deployed again, then the controller is SIGKILLed: the known route keeps answering;
(d) the controller restarts on the same port and state: the gateway resubscribes.

The pure parts (file routes win, replacement keeps in-flight requests on the old clients)
are checked without processes at the end.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from tightwad.agent.server import AgentServer, AgentSettings
from tightwad.gateway.api import GatewaySettings
from tightwad.gateway.routes import ControllerRoutes, PublishedRoute, WatchSettings, _Counted
from tightwad.gateway.server import GatewayServer
from tightwad.gateway.types import Backend
from tightwad.rpc import client_channel
from tightwad.v1 import controller_pb2, controller_pb2_grpc

TOKEN = "watch-token"
SERVING = controller_pb2.DEPLOYMENT_STATE_SERVING


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _until(what: str, check: Callable[[], object], timeout_s: float = 60.0) -> object:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


class ControllerProcess:
    """``python -m tightwad.controller.main`` on a fixed port, so it can be killed and
    restarted where its clients expect it."""

    def __init__(self, config: Path, state: Path, port: int, log: Path) -> None:
        self.config, self.state, self.port, self.log = config, state, port, log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _spawn(self) -> None:
        args = [sys.executable, "-m", "tightwad.controller.main", "-c", str(self.config)]
        args += ["--listen", self.address, "--state", str(self.state)]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)

    async def start(self) -> None:
        self._spawn()
        await _until("controller listening", self._listening, 30.0)

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"controller exited: {self.log.read_text()[-2000:]}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
async def stack(
    tmp_path: Path, smollm_path: Path
) -> AsyncIterator[tuple[ControllerProcess, AgentServer, GatewayServer]]:
    models = tmp_path / "models"
    models.mkdir()
    (models / "smollm.gguf").symlink_to(smollm_path)
    config = tmp_path / "cluster.yaml"
    # The heartbeat timeout is the grace a restarted controller gives agents to re-attach; the
    # agent's reconnect backoff must fit in it, or the controller rightly withdraws the route.
    config.write_text(
        f"cluster:\n  token: {TOKEN}\n"
        "controller:\n  heartbeat_interval_s: 0.3\n  heartbeat_timeout_s: 15.0\n"
        "  reconcile_interval_s: 0.3\n"
        "engine:\n  threads: 2\n  max_sessions: 2\n"
        f"models:\n  smollm:\n    path: {models / 'smollm.gguf'}\n"
    )
    controller = ControllerProcess(config, tmp_path / "state.db", _free_port(), tmp_path / "c.log")
    await controller.start()
    agent = AgentServer(
        AgentSettings(
            listen="127.0.0.1:0",
            token=TOKEN,
            name="coord",
            model_dirs=(models,),
            controller=controller.address,
        )
    )
    await agent.start()
    gateway = GatewayServer(
        [],
        GatewaySettings(),
        port=0,
        controller=controller.address,
        token=TOKEN,
        watch=WatchSettings(retry_base_s=0.1, retry_cap_s=0.5, idle_s=3.0, start_timeout_s=30.0),
    )
    await gateway.start()
    try:
        yield controller, agent, gateway
    finally:
        await gateway.stop()
        await agent.stop(grace=1.0)
        controller.kill()


_CHANNELS: list[object] = []  # a stub does not keep its channel open


def _ctl(address: str) -> controller_pb2_grpc.ControllerServiceStub:
    channel = client_channel(address, token=TOKEN)
    _CHANNELS.append(channel)
    return controller_pb2_grpc.ControllerServiceStub(channel)


async def _deploy(address: str) -> str:
    ctl = _ctl(address)
    request = controller_pb2.ModelRequest(model="smollm", ctx_size=512)
    dep = (await ctl.Deploy(controller_pb2.DeployRequest(request=request))).deployment
    return str(dep.deployment_id)


async def _models(session: aiohttp.ClientSession, url: str) -> list[str]:
    async with session.get(f"{url}/v1/models") as r:
        assert r.status == 200
        return [m["id"] for m in (await r.json())["data"]]


async def _complete(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, object]]:
    body = {"model": "smollm", "prompt": "The capital of France is", "max_tokens": 4}
    async with session.post(f"{url}/v1/completions", json=body) as r:
        return r.status, await r.json()


@pytest.mark.cluster
@pytest.mark.engine
@pytest.mark.slow
async def test_gateway_follows_controller_routes_and_outlives_it(
    stack: tuple[ControllerProcess, AgentServer, GatewayServer],
) -> None:
    controller, agent, gateway = stack
    url = gateway.url
    await _until("agent attached", lambda: agent.link and agent.link.attached.is_set(), 30.0)
    async with aiohttp.ClientSession() as http:
        # (a) published -> listed and answering
        dep_id = await _deploy(controller.address)
        await _until("route listed", lambda: _has_model(http, url), 120.0)
        status, body = await _complete(http, url)
        assert status == 200, body
        watcher = gateway.watcher
        assert watcher is not None and watcher.subscriptions >= 1

        # (b) stopped -> 404 model_not_found
        await _ctl(controller.address).StopDeployment(
            controller_pb2.StopDeploymentRequest(deployment_id=dep_id)
        )
        await _until("route removed", lambda: _lacks_model(http, url), 60.0)
        status, body = await _complete(http, url)
        assert status == 404
        error = body["error"]
        assert isinstance(error, dict) and error["code"] == "model_not_found", body

        # (c) deployed again, then the controller dies: the known route still answers
        await _deploy(controller.address)
        await _until("route listed again", lambda: _has_model(http, url), 120.0)
        controller.kill()
        before = watcher.subscriptions
        for _ in range(3):
            await asyncio.sleep(0.5)
            status, body = await _complete(http, url)
            assert status == 200, body
        assert "smollm" in await _models(http, url)

        # (d) back on the same port and state: resubscribed, same route, still answering
        await controller.start()
        await _until("resubscribed", lambda: watcher.subscriptions > before, 30.0)
        status, body = await _complete(http, url)
        assert status == 200, body
        assert await _models(http, url) == ["smollm"]


async def _has_model(http: aiohttp.ClientSession, url: str) -> bool:
    return "smollm" in await _models(http, url)


async def _lacks_model(http: aiohttp.ClientSession, url: str) -> bool:
    return "smollm" not in await _models(http, url)


# --- without processes ------------------------------------------------------------------


class _Table:
    def __init__(self) -> None:
        self.routes: dict[str, Backend] = {}

    def put(self, name: str, backend: Backend) -> None:
        self.routes[name] = backend

    def remove(self, name: str) -> None:
        self.routes.pop(name, None)


async def test_file_routes_win_and_http_routes_are_skipped() -> None:
    table = _Table()
    watcher = ControllerRoutes("127.0.0.1:1", table, static={"big"})
    await watcher.apply(
        [
            PublishedRoute("big", engine_address="127.0.0.1:9", can_verify=True),
            PublishedRoute("plain", http_url="http://127.0.0.1:9"),
        ]
    )
    assert table.routes == {} and watcher.routes == {}


async def test_replaced_route_drains_before_its_clients_close() -> None:
    closed: list[str] = []

    class FakeBackend:
        def __init__(self, name: str) -> None:
            self.name = name
            self.spec = type("S", (), {"target": self, "drafters": (), "draft_mode": "none"})()

        async def close(self) -> None:
            closed.append(self.name)

        def info(self) -> object:
            raise NotImplementedError

        async def generate(self, request: object) -> AsyncIterator[object]:
            yield "token"
            await asyncio.sleep(0.3)
            yield "done"

    table = _Table()
    watcher = ControllerRoutes("127.0.0.1:1", table)
    old = _Counted(FakeBackend("old"))  # type: ignore[arg-type]
    new = _Counted(FakeBackend("new"))  # type: ignore[arg-type]
    route = PublishedRoute("m", engine_address="127.0.0.1:9", can_verify=True)
    watcher.routes["m"] = (route, old)
    table.put("m", old)
    events = old.generate(None)  # type: ignore[arg-type]
    first: object = await anext(events)
    assert first == "token"  # a request in flight on the old engine

    async def fake_start(r: PublishedRoute) -> _Counted | None:
        return new

    watcher._start = fake_start  # type: ignore[method-assign,assignment]
    await watcher.apply([PublishedRoute("m", engine_address="127.0.0.1:10", can_verify=True)])
    assert table.routes["m"] is new  # new requests go to the new clients
    await asyncio.sleep(0.05)
    assert closed == []  # the old ones stay open for the request in flight
    rest: list[object] = [e async for e in events]
    assert rest == ["done"]
    await _until("old clients closed", lambda: closed == ["old"], 5.0)
    await watcher.apply([])
    assert table.routes == {}
    await watcher.close()
    await _until("new clients closed", lambda: closed == ["old", "new"], 5.0)
