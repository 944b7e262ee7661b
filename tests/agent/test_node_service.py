"""The Node service through real gRPC on loopback, with real child processes and a real model."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from tightwad.agent.binaries import BinaryKind, BinaryLocator
from tightwad.agent.processes import RestartPolicy, SupervisorSettings
from tightwad.agent.server import AgentServer, AgentSettings
from tightwad.rpc import client_channel
from tightwad.v1 import agent_pb2, agent_pb2_grpc, engine_pb2, engine_pb2_grpc

pytestmark = pytest.mark.cluster

TOKEN = "s3cret-token"
RPC = agent_pb2.PROCESS_KIND_RPC_SERVER
# tightwad.rpc.client_channel attaches the token to unary-unary calls only (grpc.aio files a
# multi-kind interceptor under its first kind), so streaming calls here send it themselves.
AUTH = (("authorization", f"Bearer {TOKEN}"),)


@pytest.fixture
async def agent(tmp_path: Path, smollm_path: Path) -> AsyncIterator[AgentServer]:
    if BinaryLocator().try_find(BinaryKind.RPC_SERVER) is None:
        pytest.skip("no ggml-rpc-server built: run scripts/build_llama.sh bin")
    models = tmp_path / "models"
    models.mkdir()
    (models / "smollm.gguf").symlink_to(smollm_path)
    settings = AgentSettings(
        listen="127.0.0.1:0",
        token=TOKEN,
        model_dirs=(models,),
        supervisor=SupervisorSettings(
            restart=RestartPolicy(initial_backoff_s=0.1), port_low=51400, port_high=51499
        ),
        stop_grace_s=2.0,
    )
    server = AgentServer(settings)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace=0.5)


@pytest.fixture
async def node(agent: AgentServer) -> AsyncIterator[agent_pb2_grpc.NodeServiceStub]:
    async with client_channel(agent.address, token=TOKEN) as channel:
        yield agent_pb2_grpc.NodeServiceStub(channel)


async def test_inventory_and_model_files(node: agent_pb2_grpc.NodeServiceStub) -> None:
    inv = (await node.GetInventory(agent_pb2.GetInventoryRequest(), timeout=60)).inventory
    assert inv.host.cpu_cores > 0 and inv.host.agent_version
    assert any(d.id.startswith("cpu:") for d in inv.devices)
    files = await node.ListModelFiles(agent_pb2.ListModelFilesRequest(), timeout=30)
    (smol,) = [m for m in files.models if m.path.endswith("smollm.gguf")]
    assert smol.architecture == "llama" and smol.n_layers == 30 and smol.n_vocab == 49152
    digest = await node.HashModelFile(agent_pb2.HashModelFileRequest(path=smol.path), timeout=60)
    assert digest.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


async def test_processes_logs_and_watch(node: agent_pb2_grpc.NodeServiceStub) -> None:
    watch = node.WatchInventory(
        agent_pb2.WatchInventoryRequest(interval_s=30), timeout=60, metadata=AUTH
    )
    first = await watch.read()
    assert not first.inventory.processes
    spec = agent_pb2.ProcessSpec(name="rpc0", kind=RPC)
    started = await node.StartProcess(
        agent_pb2.StartProcessRequest(spec=spec, wait_healthy=True), timeout=60
    )
    st = started.status
    assert st.state == agent_pb2.PROCESS_STATE_RUNNING and st.healthy and st.pid > 0

    async def next_with(pred) -> agent_pb2.Inventory:  # type: ignore[no-untyped-def]
        async with asyncio.timeout(30):
            while True:
                msg = await watch.read()
                if pred(msg.inventory):
                    return msg.inventory

    def running(inv: agent_pb2.Inventory, pid_not: int = 0) -> bool:
        return any(
            p.state == agent_pb2.PROCESS_STATE_RUNNING and p.pid not in (0, pid_not)
            for p in inv.processes
        )

    inv = await next_with(running)
    assert inv.host.rpc_protocol_version.count(".") == 2
    os.kill(st.pid, signal.SIGKILL)
    await next_with(lambda i: any(p.state == agent_pb2.PROCESS_STATE_BACKOFF for p in i.processes))
    back = await next_with(lambda i: running(i, st.pid))
    assert back.processes[0].restarts == 1
    watch.cancel()

    listed = await node.ListProcesses(agent_pb2.ListProcessesRequest(), timeout=10)
    assert [p.name for p in listed.processes] == ["rpc0"]

    logs = node.StreamLogs(
        agent_pb2.StreamLogsRequest(name="rpc0", follow=True), timeout=30, metadata=AUTH
    )
    lines = []
    async with asyncio.timeout(20):
        async for msg in logs:
            lines.append(msg.line)
            if sum("Starting RPC server" in line for line in lines) >= 2:
                break
    restarted = await node.RestartProcess(agent_pb2.RestartProcessRequest(name="rpc0"), timeout=30)
    assert restarted.status.pid != back.processes[0].pid
    async with asyncio.timeout(20):
        async for msg in logs:  # follow: the restart's banner arrives live
            if "Starting RPC server" in msg.line:
                break
    logs.cancel()
    stopped = await node.StopProcess(agent_pb2.StopProcessRequest(name="rpc0"), timeout=30)
    assert stopped.status.state == agent_pb2.PROCESS_STATE_STOPPED


async def test_load_model_streams_progress_then_engine_works(
    node: agent_pb2_grpc.NodeServiceStub, agent: AgentServer, smollm_path: Path
) -> None:
    req = agent_pb2.LoadModelRequest(
        model="smol", path=str(smollm_path), ctx_size=256, max_sessions=1, threads=1
    )
    events = [msg async for msg in node.LoadModel(req, timeout=120, metadata=AUTH)]
    kinds = [m.WhichOneof("event") for m in events]
    assert kinds[0] == "progress" and kinds[-1] == "loaded" and kinds.count("loaded") == 1
    fractions = [m.progress.fraction for m in events if m.HasField("progress")]
    assert fractions == sorted(fractions)
    assert events[-1].loaded.ready and events[-1].loaded.model == "smol"
    async with client_channel(agent.address, token=TOKEN) as channel:
        info = await engine_pb2_grpc.EngineServiceStub(channel).Info(
            engine_pb2.InfoRequest(model="smol"), timeout=30
        )
    assert info.n_layers == 30 and info.n_vocab == 49152
    engines = await node.ListEngines(agent_pb2.ListEnginesRequest(), timeout=10)
    assert [e.model for e in engines.engines] == ["smol"]
    with pytest.raises(grpc.aio.AioRpcError) as dup:
        _ = [m async for m in node.LoadModel(req, timeout=30, metadata=AUTH)]
    assert dup.value.code() == grpc.StatusCode.ALREADY_EXISTS
    await node.UnloadModel(agent_pb2.UnloadModelRequest(model="smol"), timeout=30)
    assert not (await node.ListEngines(agent_pb2.ListEnginesRequest(), timeout=10)).engines


async def test_missing_token_is_unauthenticated(agent: AgentServer) -> None:
    async with client_channel(agent.address) as channel:
        stub = agent_pb2_grpc.NodeServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListProcesses(agent_pb2.ListProcessesRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_unknown_process_is_not_found(node: agent_pb2_grpc.NodeServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await node.StopProcess(agent_pb2.StopProcessRequest(name="nope"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
