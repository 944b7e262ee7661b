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
        engines=(
            EngineConfig("smollm", smollm_path, ctx_size=256, max_sessions=2, batch_steps=False),
        ),
    )
    address = await server.start()
    try:
        async with grpc.aio.insecure_channel(address) as ch:
            stub = engine_pb2_grpc.EngineServiceStub(ch)
            auth = (("authorization", "Bearer s3cret"),)
            info = await stub.Info(engine_pb2.InfoRequest(model="smollm"), metadata=auth)
            assert info.model == "smollm" and info.capabilities.can_verify
            assert not info.HasField("batch")  # batching off: no occupancy to tell
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Info(engine_pb2.InfoRequest(model="smollm"))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        engine = server.registry.get("smollm")
    finally:
        await server.stop(grace=0.5)
    assert server.registry.all() == []
    with pytest.raises(Exception, match="closed"):
        await engine.tokenize("hi", add_special=False, parse_special=False)


@pytest.mark.engine
async def test_info_carries_the_live_batch_occupancy(smollm_path: Path) -> None:
    """Info says how full the engine's steps are: sessions and tokens per forward pass, with
    the settings (max sessions, step token budget, prefill chunk)."""
    import asyncio

    from tightwad.gateway.engine_client import EngineClient
    from tightwad.spec.sampling import SamplingConfig

    cfg = EngineConfig(
        "smollm", smollm_path, ctx_size=256, max_sessions=3, batch_size=256, batch_steps=True
    )
    server = EngineServer("127.0.0.1:0", engines=(cfg,))
    address = await server.start()
    client = EngineClient(address, "smollm")
    try:
        before = (await client.info()).batch
        assert before.enabled and before.decodes == 0
        assert (before.max_sessions, before.step_token_budget, before.prefill_chunk) == (
            3,
            256,
            cfg.prefill_chunk,
        )
        engine = server.registry.get("smollm")
        prompt = await engine.tokenize("The sea is", add_special=True, parse_special=False)

        async def run() -> int:
            s, _, _ = await engine.open_session(prompt, SamplingConfig())
            try:
                return len([t async for t, _lp, _why in s.generate(8, ignore_eos=True)])
            finally:
                s.release()

        assert await asyncio.gather(run(), run(), run()) == [8, 8, 8]
        after = (await client.info()).batch
    finally:
        await client.close()
        await server.stop(grace=0.5)
    assert after.decodes > 0 and after.jobs >= 3 * 8
    assert after.mean_sessions_per_step == pytest.approx(after.jobs / after.decodes)
    assert after.mean_sessions_per_step > 1.0  # the three streams shared forward passes
    assert after.mean_tokens_per_step == pytest.approx(after.tokens / after.decodes)
    assert 1 <= after.max_jobs <= 3 and after.max_tokens <= 256
    assert after.recent_sessions_per_step > 0
