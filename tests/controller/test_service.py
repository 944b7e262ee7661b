"""A real ControllerServer on loopback; fake agents speak the real Register stream and serve
a real NodeService (in-memory processes and engines)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from tightwad.config import default_config
from tightwad.controller.server import ControllerServer
from tightwad.engine.device_facts import Backend, HostFacts
from tightwad.engine.facts_wire import device_to_proto, host_to_proto, model_facts_to_proto
from tightwad.rpc import GrpcServer, ServiceRegistration, client_channel
from tightwad.v1 import agent_pb2, agent_pb2_grpc, controller_pb2, controller_pb2_grpc

from .factories import GiB, MiB, device, facts

TOKEN = "s3cret"


class FakeNode(agent_pb2_grpc.NodeServiceServicer):
    def __init__(self) -> None:
        self.processes: dict[str, agent_pb2.ProcessStatus] = {}
        self.engines: dict[str, agent_pb2.EngineStatus] = {}
        self.calls: list[str] = []
        self.specs: dict[str, agent_pb2.ProcessSpec] = {}

    async def StartProcess(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.append(f"start {request.spec.name}")
        self.specs[request.spec.name] = request.spec
        st = agent_pb2.ProcessStatus(
            name=request.spec.name,
            spec=request.spec,
            state=agent_pb2.PROCESS_STATE_RUNNING,
            healthy=True,
            host=request.spec.host or "127.0.0.1",
            port=request.spec.port or 50100 + len(self.specs),  # the agent allocates
            since=time.time(),
        )
        self.processes[request.spec.name] = st
        return agent_pb2.StartProcessResponse(status=st)

    async def StopProcess(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.append(f"stop {request.name}")
        st = self.processes.pop(request.name)
        st.state = agent_pb2.PROCESS_STATE_STOPPED
        st.since = time.time()
        return agent_pb2.StopProcessResponse(status=st)

    async def LoadModel(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.append(f"load {request.model} {','.join(request.devices)}")
        yield agent_pb2.LoadModelResponse(progress=agent_pb2.LoadProgress(fraction=0.5))
        st = agent_pb2.EngineStatus(
            model=request.model, path=request.path, ready=True, devices=request.devices
        )
        self.engines[request.model] = st
        yield agent_pb2.LoadModelResponse(loaded=st)

    async def UnloadModel(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.append(f"unload {request.model}")
        self.engines.pop(request.model, None)
        return agent_pb2.UnloadModelResponse()


class FakeAgent:
    """A NodeService on loopback plus a Register stream to the controller."""

    def __init__(self, name: str, gpu_free: int, rpc_version: str = "3.0.0") -> None:
        self.name = name
        self.node = FakeNode()
        self.gpu_free = gpu_free
        self.rpc_version = rpc_version
        self.server = GrpcServer(
            [
                ServiceRegistration(
                    "tightwad.v1.NodeService",
                    self.node,
                    agent_pb2_grpc.add_NodeServiceServicer_to_server,
                )
            ],
            token=TOKEN,
        )

    def inventory(self) -> agent_pb2.Inventory:
        host = HostFacts(
            self.name,
            "linux",
            "x86_64",
            4,
            16 * GiB,
            16 * GiB,
            llama_cpp_version="b1",
            rpc_protocol_version=self.rpc_version,
        )
        return agent_pb2.Inventory(
            host=host_to_proto(host),
            devices=[
                device_to_proto(device(f"cpu:{self.name}", 8 * GiB, backend=Backend.CPU)),
                device_to_proto(device(f"GPU-{self.name}", self.gpu_free, index=0)),
            ],
            processes=list(self.node.processes.values()),
            engines=list(self.node.engines.values()),
        )

    async def register(self, controller: str, token: str = TOKEN) -> AsyncIterator[object]:
        channel = client_channel(controller, token=TOKEN)
        stub = controller_pb2_grpc.ControllerServiceStub(channel)
        queue: asyncio.Queue[controller_pb2.RegisterRequest] = asyncio.Queue()
        hello = controller_pb2.AgentHello(
            node_id=self.name,
            join_token=token,
            address=self.server.bound_address,
            inventory=self.inventory(),
            models=[model_facts_to_proto(facts(8, 50 * MiB))],
            protocol_version="1",
        )
        await queue.put(controller_pb2.RegisterRequest(hello=hello))

        async def requests() -> AsyncIterator[controller_pb2.RegisterRequest]:
            while True:
                yield await queue.get()

        self.queue = queue
        self.call = stub.Register(requests())
        self.channel = channel
        return self.call  # type: ignore[return-value]

    async def heartbeat(self) -> None:
        await self.queue.put(
            controller_pb2.RegisterRequest(
                heartbeat=controller_pb2.Heartbeat(time=time.time(), inventory=self.inventory())
            )
        )
        await self.call.read()


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[ControllerServer, list[FakeAgent]]]:
    from dataclasses import replace

    cfg = default_config()
    cfg = replace(
        cfg,
        cluster=replace(cfg.cluster, token=TOKEN),
        controller=replace(cfg.controller, reconcile_interval_s=0.05),
    )
    server = ControllerServer(cfg, listen="127.0.0.1:0", state_path=tmp_path / "c.db")
    await server.start()
    agents = [FakeAgent("a", 300 * MiB + 256 * MiB), FakeAgent("b", 900 * MiB + 256 * MiB)]
    for agent in agents:
        await agent.server.start()
    try:
        yield server, agents
    finally:
        for agent in agents:
            if hasattr(agent, "call"):
                agent.call.cancel()
                await agent.channel.close()
            await agent.server.stop(0)
        await server.stop(0.1)


_CHANNELS: list[grpc.aio.Channel] = []


def stub(server: ControllerServer, token: str = TOKEN) -> controller_pb2_grpc.ControllerServiceStub:
    channel = client_channel(server.address, token=token)
    _CHANNELS.append(channel)  # a channel nobody holds is closed under the call
    return controller_pb2_grpc.ControllerServiceStub(channel)


async def test_join_checks_token_and_rpc_protocol(cluster) -> None:  # type: ignore[no-untyped-def]
    server, (a, b) = cluster
    call = await a.register(server.address, token="wrong")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    call = await a.register(server.address)
    assert (await call.read()).welcome.node_id == "a"
    b.rpc_version = "4.0.0"
    call = await b.register(server.address)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "ggml RPC protocol 4.0.0" in (err.value.details() or "")
    nodes = (await stub(server).ListNodes(controller_pb2.ListNodesRequest())).nodes
    assert [(n.node_id, n.state) for n in nodes] == [("a", controller_pb2.NODE_STATE_READY)]


async def test_plan_deploy_serve_then_restart_redeploys_nothing(cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    server, agents = cluster
    for agent in agents:
        await (await agent.register(server.address)).read()
    ctl = stub(server)
    req = controller_pb2.ModelRequest(
        model="m",
        ctx_size=1024,
        constraints=(
            controller_pb2.PlacementConstraints(
                coordinator_node_id="a", exclude_device_ids=["cpu:a"]
            )
        ),
    )
    plan = (await ctl.PlanPlacement(controller_pb2.PlanPlacementRequest(request=req))).placement
    assert plan.fits, plan.reason
    assert [d.ggml_device.split("[")[0] for d in plan.devices] == ["CPU", "CUDA0", "RPC"]
    dep = (await ctl.Deploy(controller_pb2.DeployRequest(request=req))).deployment
    for _ in range(100):
        for agent in agents:
            await agent.heartbeat()
        got = (await ctl.ListDeployments(controller_pb2.ListDeploymentsRequest())).deployments
        if got[0].state == controller_pb2.DEPLOYMENT_STATE_SERVING:
            break
        await asyncio.sleep(0.05)
    assert got[0].state == controller_pb2.DEPLOYMENT_STATE_SERVING, got[0]
    engine = agents[0].node.processes[f"engine-{dep.deployment_id}"]
    assert engine.spec.kind == agent_pb2.PROCESS_KIND_ENGINE_HOST
    assert got[0].route.engine_address == f"127.0.0.1:{engine.port}"
    assert agents[1].node.calls == ["start rpc-GPU-b"]
    assert agents[0].node.calls == [f"start engine-{dep.deployment_id}"]
    args = list(engine.spec.args)
    assert args[args.index("--devices") + 1].startswith("CUDA0,RPC[127.0.0.1:")
    events = [r.event.kind async for r in ctl.WatchEvents(controller_pb2.WatchEventsRequest())]
    assert "deployment_created" in events and "deployment_serving" in events
    assert "engine_host_started" in events
    routes = ctl.WatchRoutes(controller_pb2.WatchRoutesRequest())
    assert [r.model for r in (await routes.read()).routes] == ["m"]
    routes.cancel()

    # restart the controller on the same state: agents re-attach, nothing is redone
    calls = [list(a.node.calls) for a in agents]
    address = server.address
    for agent in agents:
        agent.call.cancel()
    await server.stop(0.1)
    server.listen = address
    await server.start()
    for agent in agents:
        await (await agent.register(server.address)).read()
    for _ in range(5):
        for agent in agents:
            await agent.heartbeat()
        await asyncio.sleep(0.05)
    assert [a.node.calls for a in agents] == calls
    got = await stub(server).ListDeployments(controller_pb2.ListDeploymentsRequest())
    assert got.deployments[0].deployment_id == dep.deployment_id
    assert got.deployments[0].state == controller_pb2.DEPLOYMENT_STATE_SERVING
