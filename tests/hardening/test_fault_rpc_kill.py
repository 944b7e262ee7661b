"""The scenario of issue 19 as a user meets it: a pooled SmolLM2-135M deployment (a
coordinator's engine host over two workers' ``ggml-rpc-server``), a gateway following the
controller's routes, a completion request every 0.5 s, then SIGKILL of one rpc-server.

Proves, second by second from the client's side: every answer is a 200 or a 503 with
``Retry-After`` and an OpenAI error body, never a 404 for the configured model; ``/v1/models``
lists it throughout; it serves again through the same gateway; the timeline (first error, last
error, first success after them) is printed for the issue's note.
"""

from __future__ import annotations

import os
import signal

import aiohttp
import pytest
from cluster.test_pool_deploy import CTX, SERVING, TOKEN, Cluster, _state_is, _until, cluster

from tightwad.gateway.api import GatewaySettings
from tightwad.gateway.controller_routes import WatchSettings
from tightwad.gateway.server import GatewayServer
from tightwad.v1 import controller_pb2

from .timeline import LEAKS_ARE_ERRORS, Prober

__all__ = ["cluster"]  # the fixture this test uses

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.engine,
    pytest.mark.slow,
    *LEAKS_ARE_ERRORS,
]

BODY = {"model": "smollm", "prompt": "The capital of France is", "max_tokens": 4}


async def _ask(http: aiohttp.ClientSession, url: str) -> tuple[int, str, str]:
    async with http.post(f"{url}/v1/completions", json=BODY) as r:
        body = await r.json(content_type=None)
        message = body.get("error", {}).get("message", "") if r.status != 200 else ""
        return r.status, r.headers.get("Retry-After", ""), message


async def test_killed_rpc_server_is_503_with_retry_after_never_404(cluster: Cluster) -> None:
    c = cluster
    await _until(
        "three agents attached",
        lambda: all(a.link and a.link.attached.is_set() for a in c.agents.values()),
    )
    ctl = c.ctl()
    nodes = (await ctl.ListNodes(controller_pb2.ListNodesRequest())).nodes
    cpu = {n.node_id: [d.id for d in n.inventory.devices] for n in nodes}
    request = controller_pb2.ModelRequest(
        model="smollm",
        ctx_size=CTX,
        constraints=controller_pb2.PlacementConstraints(
            coordinator_node_id="coord", pin_device_ids=[*cpu["w1"], *cpu["w2"]]
        ),
    )
    await ctl.Deploy(controller_pb2.DeployRequest(request=request))
    await _until("serving", lambda: _state_is(c, SERVING), 120.0)
    gateway = GatewayServer(
        [],
        GatewaySettings(),
        port=0,
        controller=c.controller.address,
        token=TOKEN,
        watch=WatchSettings(retry_base_s=0.1, retry_cap_s=0.5, idle_s=3.0, start_timeout_s=30.0),
    )
    await gateway.start()
    url = gateway.url
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            await _until("routed", lambda: _ask_ok(http, url), 60.0)
        [rpc] = [p for p in c.agents["w1"].supervisor.processes() if p.name.startswith("rpc-")]
        body = {**BODY, "temperature": 0}  # greedy: the same answer before and after
        async with Prober(url, body, path="/v1/completions", list_model="smollm") as probe:
            probe.kill()
            os.kill(rpc.pid, signal.SIGKILL)
            await probe.serving_again()
            for _ in range(2):  # a few answers after it, to compare
                await probe.wait_for(lambda p: p.outcome == 200, "another answer")
    finally:
        await gateway.stop()
    states = sorted({str(p.listed) for p in probe.probes})
    probe.report(f"rpc-server SIGKILL (route states seen {states})")
    probe.check((200, 503))
    assert "absent" not in states, "/v1/models dropped the configured model"
    # The re-planned deployment answers as the first one did (greedy, same weights).
    assert len({p.text for p in probe.probes if p.outcome == 200}) == 1, probe.probes


async def _ask_ok(http: aiohttp.ClientSession, url: str) -> bool:
    return (await _ask(http, url))[0] == 200
