"""The dashboard's cluster view in a real browser (issue 16): a real ControllerServer on
loopback, a real agent registered with it (its real inventory, SmolLM2-135M in its embedded
engine, which the gateway's route uses), and a gateway with ``controller`` set. Checked: the
node and its device (with a memory bar) appear, the event log holds the join, and an event the
controller records while the page is open (the node drained) arrives live.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tightwad.agent.server import AgentServer, AgentSettings
from tightwad.cli.client import ControllerClient
from tightwad.config import ModelConfig, default_config
from tightwad.controller.domain import DeploymentSpec
from tightwad.controller.server import ControllerServer
from tightwad.engine.engine_config import EngineConfig
from tightwad.gateway.api import GatewaySettings
from tightwad.gateway.engine_client import EngineClient
from tightwad.gateway.loop import RouteSpec
from tightwad.gateway.server import GatewayServer

pytestmark = [pytest.mark.engine, pytest.mark.slow]

TOKEN = "dashboard-cluster-token"
NODE = "node-a"
ROUTE = "smollm"
DEPLOYED = "smollm-deployed"


@pytest.fixture
async def stack(smollm_path: Path, tmp_path: Path) -> AsyncIterator[tuple[Any, ...]]:
    models = tmp_path / "models"
    models.mkdir()
    (models / "smollm.gguf").symlink_to(smollm_path)
    cfg = default_config()
    cfg = replace(
        cfg,
        cluster=replace(cfg.cluster, token=TOKEN),
        controller=replace(cfg.controller, reconcile_interval_s=0.2),
        models={DEPLOYED: ModelConfig(DEPLOYED, str(models / "smollm.gguf"), ctx_size=512)},
    )
    controller = ControllerServer(cfg, listen="127.0.0.1:0", state_path=tmp_path / "c.db")
    await controller.start()
    engine = EngineConfig(model_id=ROUTE, path=smollm_path, ctx_size=1024, max_sessions=4,
                          threads=2)  # fmt: skip
    agent = AgentServer(
        AgentSettings(
            listen="127.0.0.1:0", token=TOKEN, name=NODE, engines=(engine,),
            controller=controller.address, heartbeat_refresh_s=2.0, model_dirs=(models,),
        )
    )  # fmt: skip
    await agent.start()
    assert agent.link is not None
    await asyncio.wait_for(agent.link.attached.wait(), 30)
    spec = RouteSpec(name=ROUTE, target=EngineClient(agent.address, ROUTE, token=TOKEN))
    gateway = GatewayServer(
        [spec], GatewaySettings(), port=0, controller=controller.address, token=TOKEN
    )
    await gateway.start()
    try:
        yield controller, agent, gateway
    finally:
        await gateway.stop()
        await agent.stop(grace=0.2)
        await controller.stop(grace=0.2)


async def test_nodes_devices_and_events_live(stack: tuple[Any, ...], browser: Any) -> None:
    controller, _agent, gateway = stack
    b = await browser(height=1000)
    page = b.page
    await page.goto(gateway.url + "/#cluster")
    node = page.locator(f'#nodes [data-node="{NODE}"]')
    await node.wait_for(timeout=30_000)
    assert await page.locator("#cluster").is_visible()
    assert await page.locator("#nav-cluster").is_visible()
    assert "node_joined" in await page.locator("#events").inner_text()
    device = node.locator("[data-device]").first
    await device.wait_for()
    assert await device.locator(".bar-track").count() == 1

    # A deployment: its layer split drawn per device, its bytes on the device's memory bar.
    async with ControllerClient(controller.address, token=TOKEN) as client:
        dep = await client.deploy(DeploymentSpec(DEPLOYED, ctx_size=512))
    assert dep.placement is not None and dep.placement.assignments
    row = page.locator(f'#deployments [data-deployment="{dep.deployment_id}"]')
    await row.wait_for(timeout=15_000)
    segments = row.locator(".split span")
    assert await segments.count() == len(dep.placement.assignments)
    layers = sum(a.n_layers for a in dep.placement.assignments)
    texts = await segments.all_inner_texts()
    assert sum(int(t.rsplit("·", 1)[1]) for t in texts) == layers, texts
    assert f"{layers} layers over {len(dep.placement.assignments)} device(s)" in (
        await row.inner_text()
    )
    held = page.locator(f'#nodes [data-device="{dep.placement.assignments[0].device_id}"] .held')
    await held.first.wait_for(timeout=15_000)
    assert DEPLOYED in (await held.first.get_attribute("title") or "")
    await page.locator("#events li", has_text="deployment_created").wait_for(timeout=15_000)

    state = await node.locator(".state").inner_text()
    seen = await page.locator("#events li").count()

    async with ControllerClient(controller.address, token=TOKEN) as client:
        await client.drain(NODE)
    drained = page.locator("#events li", has_text="node_drained")
    await drained.wait_for(timeout=15_000)
    assert await page.locator("#events li").count() > seen
    await page.wait_for_function(
        "([sel, s]) => document.querySelector(sel).textContent !== s",
        arg=[f'#nodes [data-node="{NODE}"] .state', state], timeout=15_000,
    )  # fmt: skip
    await b.element("dashboard-cluster.png", "#cluster")
    assert b.console_errors() == []
