"""A real engine host supervised by a real Supervisor, pooled over two real rpc-servers:
healthy through gRPC health, serving the Engine service with the cluster token, and when a
worker's rpc-server is SIGKILLed it leaves at once (exit 75: its peer is gone, no abort) and
is restarted against the live servers by its supervisor."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from tightwad.agent.binaries import find_binary
from tightwad.agent.engine_host import EXIT_RPC_PEER_LOST, TOKEN_ENV
from tightwad.agent.processes import ProcessKind, ProcessSpec, ProcessState, Supervisor
from tightwad.agent.processes.probes import ProbeError, grpc_health
from tightwad.errors import AuthenticationError
from tightwad.gateway.engine_client import EngineClient

pytestmark = [pytest.mark.cluster, pytest.mark.engine]


async def test_engine_host_restarts_when_its_rpc_peer_dies(smollm_path: Path) -> None:
    sup = Supervisor(find_binary, engine_env={TOKEN_ENV: "tok"})
    try:
        rpcs = [
            await sup.start(
                ProcessSpec(f"rpc-{i}", ProcessKind.RPC_SERVER, args=("-t", "1")),
                wait_healthy=True,
            )
            for i in range(2)
        ]
        devices = ",".join(f"RPC[127.0.0.1:{r.port}]" for r in rpcs)
        spec = ProcessSpec(
            "engine",
            ProcessKind.ENGINE_HOST,
            args=(
                "--model", str(smollm_path), "--model-id", "smol", "--ctx-size", "256",
                "--max-sessions", "1", "--gpu-layers", "20", "--threads", "1",
                "--devices", devices, "--tensor-split", "1,1",
            ),
        )  # fmt: skip
        engine = await sup.start(spec, wait_healthy=True)
        assert engine.state is ProcessState.RUNNING and engine.healthy, engine.message
        assert await grpc_health("127.0.0.1", engine.port, "tightwad.v1.EngineService")
        with pytest.raises(ProbeError):
            await grpc_health("127.0.0.1", engine.port, "tightwad.v1.NodeService")
        client = EngineClient(f"127.0.0.1:{engine.port}", "smol", token="tok")
        intruder = EngineClient(f"127.0.0.1:{engine.port}", "smol", token="wrong")
        try:
            assert (await client.info()).can_verify
            with pytest.raises(AuthenticationError):
                await intruder.info()
        finally:
            await client.close()
            await intruder.close()
        log = [line.line for line in sup.logs("engine").tail(0)]
        assert any("RPC[127.0.0.1:" in line and "=10" in line for line in log), log

        os.kill(rpcs[0].pid, signal.SIGKILL)
        for _ in range(200):
            status = sup.status("engine")
            if status.restarts >= 1 and status.state is ProcessState.RUNNING:
                break
            await asyncio.sleep(0.1)
        assert status.state is ProcessState.RUNNING and status.healthy, status
        assert status.last_exit_code == EXIT_RPC_PEER_LOST, status  # left by itself, no abort
        assert status.pid != engine.pid
        log = "\n".join(line.line for line in sup.logs("engine").tail(0))
        assert "engine_host_rpc_peer_lost" in log
    finally:
        await sup.close()
