"""The controller SIGKILLed under a gateway that follows its routes (issue 19): the gateway
keeps serving its last known routes while the controller is gone and resubscribes when it is
back. A real ``tightwad-controller`` process, a real agent serving SmolLM2-135M (in-process)
and a gateway following the controller; the client's side, probe by probe (:mod:`timeline`):
every answer a 200 with the same greedy text, /v1/models listing the model throughout, longer
than the watcher's idle and retry windows.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from gateway.test_gateway_watch_routes import ControllerProcess, _deploy, _has_model, _until, stack

from tightwad.agent.server import AgentServer
from tightwad.gateway.server import GatewayServer

from .timeline import LEAKS_ARE_ERRORS, Prober

__all__ = ["stack"]  # the fixture this test uses

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.engine,
    pytest.mark.slow,
    *LEAKS_ARE_ERRORS,
]

BODY = {"model": "smollm", "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}
GONE_S = 8.0  # past the watcher's idle_s (3 s) and retry cap (0.5 s) several times


async def test_killed_controller_the_gateway_serves_its_known_routes(
    stack: tuple[ControllerProcess, AgentServer, GatewayServer],
) -> None:
    controller, agent, gateway = stack
    url = gateway.url
    await _until("agent attached", lambda: agent.link and agent.link.attached.is_set(), 30.0)
    await _deploy(controller.address)
    async with aiohttp.ClientSession() as http:
        await _until("route listed", lambda: _has_model(http, url), 120.0)
    watcher = gateway.watcher
    assert watcher is not None
    async with Prober(url, BODY, path="/v1/completions", list_model="smollm") as probe:
        probe.kill()
        controller.kill()
        before = watcher.subscriptions
        await asyncio.sleep(GONE_S)
        await controller.start()
        back = probe._now()
        await _until("resubscribed", lambda: watcher.subscriptions > before, 30.0)
        await probe.wait_for(lambda p: p.outcome == 200, "an answer after the resubscription")
    probe.report(f"controller SIGKILL (gateway following it; controller back at {back:.1f} s)")
    probe.check((200,), errors=False)
    assert {p.listed for p in probe.probes} == {"serving"}, probe.probes
    assert max(p.at for p in probe.probes) > GONE_S, probe.codes()
    assert len({p.text for p in probe.probes}) == 1, probe.probes  # greedy: the same answer
