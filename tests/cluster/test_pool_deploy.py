"""A real pooled cluster on loopback: one controller, a coordinator agent and two worker
agents (in-process AgentServers, each with its own Supervisor registering over the real
Register stream), real ``ggml-rpc-server`` children on the workers and a real engine-host
child on the coordinator, SmolLM2-135M split over both rpc-servers.

One scenario, in order (each step needs the previous one's cluster):

(a) deploy: the pooled model's greedy output through the published Engine route equals the
    single-process output for three prompts, and its layers are on both rpc-servers;
(b) SIGKILL one worker's rpc-server: the controller marks the deployment DEGRADED with the
    reason, re-plans, restarts the engine host, and the model serves the same output again;
(c) restart the controller on the same state file: the deployment is intact, every agent
    re-attaches, and nothing is started again (same pids, no new start events);
(d) after everything stops, no process we saw is left (checked in /proc).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from tightwad.agent.processes import SupervisorSettings
from tightwad.agent.server import AgentServer, AgentSettings
from tightwad.config import default_config
from tightwad.config._schema import ModelConfig
from tightwad.controller.server import ControllerServer
from tightwad.engine.engine_config import EngineConfig
from tightwad.engine.llama_engine import Engine
from tightwad.gateway.engine_client import EngineClient
from tightwad.rpc import client_channel
from tightwad.spec.sampling import SamplingConfig
from tightwad.v1 import agent_pb2_grpc, controller_pb2, controller_pb2_grpc

pytestmark = [pytest.mark.cluster, pytest.mark.engine, pytest.mark.slow]

TOKEN = "pool-token"
PROMPTS = ("The capital of France is", "def fibonacci(n):", "Once upon a time")
N_TOKENS = 12
CTX = 512
SERVING = controller_pb2.DEPLOYMENT_STATE_SERVING
DEGRADED = controller_pb2.DEPLOYMENT_STATE_DEGRADED


def _free_base(span: int) -> int:
    """A port base with ``span`` free ports above it (ephemeral range avoided)."""
    for base in range(21000, 30000, 97):
        ok = True
        for port in range(base, base + span):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port range")


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
        await asyncio.sleep(0.1)


async def _greedy(client: EngineClient, prompt: str) -> list[int]:
    tokens = await client.tokenize(prompt, add_special=True, parse_special=True)
    session = client.session(timeout_s=60.0)
    try:
        await session.open(tokens, SamplingConfig())
        return [(await session.verify([])).next_token for _ in range(N_TOKENS)]
    finally:
        await session.close()


@dataclass
class Cluster:
    tmp: Path
    config: object
    controller: ControllerServer
    agents: dict[str, AgentServer]
    rpc_base: int

    def ctl(self) -> controller_pb2_grpc.ControllerServiceStub:
        channel = client_channel(self.controller.address, token=TOKEN)
        _CHANNELS.append(channel)
        return controller_pb2_grpc.ControllerServiceStub(channel)

    def node(self, name: str) -> agent_pb2_grpc.NodeServiceStub:
        channel = client_channel(self.agents[name].address, token=TOKEN)
        _CHANNELS.append(channel)
        return agent_pb2_grpc.NodeServiceStub(channel)

    async def deployment(self) -> controller_pb2.Deployment:
        got = await self.ctl().ListDeployments(controller_pb2.ListDeploymentsRequest())
        [dep] = got.deployments
        return dep

    async def events(self) -> list[controller_pb2.Event]:
        stream = self.ctl().WatchEvents(controller_pb2.WatchEventsRequest(follow=False))
        return [r.event async for r in stream]

    def pids(self) -> dict[str, int]:
        return {
            f"{name}/{p.name}": p.pid
            for name, agent in self.agents.items()
            for p in agent.supervisor.processes()
            if p.pid
        }


_CHANNELS: list[object] = []


@pytest.fixture
async def reference(smollm_path: Path) -> dict[str, list[int]]:
    engine = await Engine.load(EngineConfig("ref", smollm_path, ctx_size=CTX, max_sessions=1))
    try:
        out = {}
        for prompt in PROMPTS:
            tokens = await engine.tokenize(prompt, add_special=True, parse_special=True)
            s, _, _ = await engine.open_session(tokens, SamplingConfig())
            out[prompt] = [(await s.verify([])).next_token for _ in range(N_TOKENS)]
            s.release()
        return out
    finally:
        await engine.close()


@pytest.fixture
async def cluster(tmp_path: Path, smollm_path: Path) -> AsyncIterator[Cluster]:
    models = tmp_path / "models"
    models.mkdir()
    (models / smollm_path.name).symlink_to(smollm_path)
    cfg = default_config()
    cfg = replace(
        cfg,
        cluster=replace(cfg.cluster, token=TOKEN),
        controller=replace(
            cfg.controller,
            heartbeat_interval_s=0.3,
            heartbeat_timeout_s=3.0,
            reconcile_interval_s=0.2,
        ),
        engine=replace(cfg.engine, max_sessions=2, threads=2),
        models={"smollm": ModelConfig(name="smollm", path=str(models / smollm_path.name))},
    )
    base = _free_base(200)
    controller = ControllerServer(
        cfg, listen="127.0.0.1:0", state_path=tmp_path / "state.db", rpc_port_base=base
    )
    await controller.start()
    agents: dict[str, AgentServer] = {}
    for i, name in enumerate(("coord", "w1", "w2")):
        low = base + 20 + 50 * i
        agents[name] = AgentServer(
            AgentSettings(
                listen="127.0.0.1:0",
                token=TOKEN,
                name=name,
                model_dirs=(models,) if name == "coord" else (),
                controller=controller.address,
                supervisor=SupervisorSettings(port_low=low, port_high=low + 49),
            )
        )
        await agents[name].start()
    c = Cluster(tmp_path, cfg, controller, agents, base)
    try:
        yield c
    finally:
        for agent in agents.values():
            await agent.stop(grace=1.0)
        await c.controller.stop(0.5)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


async def test_pooled_deploy_survives_a_dead_worker_and_a_controller_restart(
    cluster: Cluster, reference: dict[str, list[int]]
) -> None:
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
    plan = (await ctl.PlanPlacement(controller_pb2.PlanPlacementRequest(request=request))).placement
    assert plan.fits, plan.reason
    rpc_devices = [d.ggml_device for d in plan.devices if d.ggml_device.startswith("RPC[")]
    assert len(rpc_devices) == 2, plan

    # (a) deploy, serve, compare with the single process
    dep = (await ctl.Deploy(controller_pb2.DeployRequest(request=request))).deployment
    await _until("serving", lambda: _state_is(c, SERVING), 120.0)
    route = (await c.deployment()).route
    client = EngineClient(route.engine_address, "smollm", token=TOKEN)
    try:
        info = await client.info()
        assert info.can_verify
        for prompt in PROMPTS:
            assert await _greedy(client, prompt) == reference[prompt], prompt
    finally:
        await client.close()
    engine_name = f"engine-{dep.deployment_id}"
    engine = c.agents["coord"].supervisor.status(engine_name)
    args = list(engine.spec.args)
    assert args[args.index("--devices") + 1].split(",")[-2:] == rpc_devices
    log = "\n".join(line.line for line in c.agents["coord"].supervisor.logs(engine_name).tail(0))
    for device in rpc_devices:  # the engine host's own account of where the layers went
        assert f"{device}=" in log and f"{device}=0" not in log, log
    seen_pids = set(c.pids().values())

    # (b) SIGKILL a worker's rpc-server
    [rpc] = [p for p in c.agents["w1"].supervisor.processes() if p.name.startswith("rpc-")]
    os.kill(rpc.pid, signal.SIGKILL)
    await _until("degraded", lambda: _state_is(c, DEGRADED), 30.0)
    await _until("serving again", lambda: _state_is(c, SERVING), 120.0)
    kinds = [e.kind for e in await c.events()]
    assert "deployment_degraded" in kinds and "deployment_replanned" in kinds
    degraded = [e.message for e in await c.events() if e.kind == "deployment_degraded"]
    assert any("rpc-server" in m and "w1" in m for m in degraded), degraded
    route = (await c.deployment()).route
    client = EngineClient(route.engine_address, "smollm", token=TOKEN)
    try:
        for prompt in PROMPTS:
            assert await _greedy(client, prompt) == reference[prompt], prompt
    finally:
        await client.close()
    seen_pids |= set(c.pids().values())

    # (c) restart the controller on the same state file
    before = await c.deployment()
    pids = c.pids()
    starts = sum(1 for e in await c.events() if e.kind.endswith("_started"))
    address = c.controller.address
    await c.controller.stop(0.5)
    c.controller.listen = address
    await c.controller.start()
    await _until(
        "agents re-attached",
        lambda: all(
            a.link and a.link.sessions >= 2 and a.link.attached.is_set() for a in c.agents.values()
        ),
        30.0,
    )
    await asyncio.sleep(2.0)  # several syncs and heartbeats
    after = await c.deployment()
    assert (after.deployment_id, after.state, after.route) == (
        before.deployment_id,
        SERVING,
        before.route,
    )
    assert c.pids() == pids
    assert sum(1 for e in await c.events() if e.kind.endswith("_started")) == starts
    nodes = (await c.ctl().ListNodes(controller_pb2.ListNodesRequest())).nodes
    assert {n.node_id: n.state for n in nodes} == dict.fromkeys(
        ("coord", "w1", "w2"), controller_pb2.NODE_STATE_READY
    )

    # (d) stop everything: nothing we saw survives
    for agent in c.agents.values():
        await agent.stop(grace=1.0)
    await _until("children gone", lambda: not any(_alive(p) for p in seen_pids), 15.0)


async def _state_is(c: Cluster, state: int) -> bool:
    return (await c.deployment()).state == state
