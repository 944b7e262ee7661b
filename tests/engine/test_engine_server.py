"""EngineServer: the Engine service alone on loopback, without the host daemon."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from tightwad.engine.engine_config import EngineConfig
from tightwad.engine.server import EngineServer
from tightwad.v1 import engine_pb2, engine_pb2_grpc


def test_importing_the_engine_server_loads_no_host_daemon() -> None:
    code = (
        "import sys, tightwad.engine.server; "
        "print(sorted(m for m in sys.modules if m.startswith('tightwad.agent')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.engine
async def test_serves_its_engines_and_closes_them_on_stop(smollm_path: Path) -> None:
    server = EngineServer(
        "127.0.0.1:0",
        token="s3cret",
        engines=(EngineConfig("smollm", smollm_path, ctx_size=256, max_sessions=2),),
    )
    address = await server.start()
    try:
        async with grpc.aio.insecure_channel(address) as ch:
            stub = engine_pb2_grpc.EngineServiceStub(ch)
            auth = (("authorization", "Bearer s3cret"),)
            info = await stub.Info(engine_pb2.InfoRequest(model="smollm"), metadata=auth)
            assert info.model == "smollm" and info.capabilities.can_verify
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Info(engine_pb2.InfoRequest(model="smollm"))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        engine = server.registry.get("smollm")
    finally:
        await server.stop(grace=0.5)
    assert server.registry.all() == []
    with pytest.raises(Exception, match="closed"):
        await engine.tokenize("hi", add_special=False, parse_special=False)
