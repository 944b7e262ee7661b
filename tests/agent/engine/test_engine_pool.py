"""Speculation over a pool: the embedded engine with layers on two real ggml-rpc-servers."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tightwad.agent.binaries import BinaryKind, find_binary
from tightwad.engine.engine_config import EngineConfig
from tightwad.engine.llama_engine import Engine
from tightwad.errors import ModelLoadError
from tightwad.spec.sampling import SamplingConfig

pytestmark = [pytest.mark.engine, pytest.mark.cluster]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"rpc-server on {port} did not listen")


@pytest.fixture
def rpc_servers() -> Iterator[list[int]]:
    binary = find_binary(BinaryKind.RPC_SERVER)
    ports = [_free_port(), _free_port()]
    procs = [
        subprocess.Popen(
            [str(binary), "-H", "127.0.0.1", "-p", str(p), "-t", "1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for p in ports
    ]
    try:
        for p in ports:
            _wait_port(p)
        yield ports
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


async def _greedy(engine: Engine, prompt: list[int], n: int) -> list[int]:
    s, _, _ = await engine.open_session(prompt, SamplingConfig())
    out = [(await s.verify([])).next_token for _ in range(n)]
    s.release()
    return out


async def test_pooled_engine_verifies_drafts_and_matches_single_process(
    smollm_path: Path, rpc_servers: list[int]
) -> None:
    local = await Engine.load(EngineConfig("local", smollm_path, ctx_size=512, max_sessions=2))
    prompt = await local.tokenize("The capital of France is", add_special=True, parse_special=True)
    reference = await _greedy(local, prompt, 16)
    await local.close()
    devices = tuple(f"RPC[127.0.0.1:{p}]" for p in rpc_servers)
    pooled = await Engine.load(
        EngineConfig(
            "pool",
            smollm_path,
            ctx_size=512,
            max_sessions=2,
            gpu_layers=20,
            devices=devices,
            tensor_split=(1.0, 1.0),
        )
    )
    try:
        info = await pooled.info()
        assert info.devices == (("CPU", 10), (devices[0], 10), (devices[1], 10))
        assert await _greedy(pooled, prompt, 16) == reference
        s, _, _ = await pooled.open_session(prompt, SamplingConfig())
        await s.verify([])
        res = await s.verify(reference[1:9])
        s.release()
        assert res.accepted == 8 and res.next_token == reference[9]
    finally:
        await pooled.close()


async def test_unreachable_rpc_endpoint_is_a_clear_error(smollm_path: Path) -> None:
    port = _free_port()
    with pytest.raises(ModelLoadError, match="unreachable"):
        await Engine.load(
            EngineConfig(
                "pool",
                smollm_path,
                ctx_size=512,
                max_sessions=1,
                gpu_layers=30,
                devices=(f"RPC[127.0.0.1:{port}]",),
            )
        )
