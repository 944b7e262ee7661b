"""Fixtures shared by every test tier: real models from the cache, real agents on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tightwad.fetch_models import ensure_model


@pytest.fixture(scope="session")
def smollm_path() -> Path:
    return ensure_model("smollm2-135m")


@pytest.fixture(scope="session")
def qwen_draft_path() -> Path:
    return ensure_model("qwen2.5-coder-0.5b")


@pytest.fixture(scope="session")
def qwen_target_path() -> Path:
    return ensure_model("qwen2.5-coder-1.5b")


@pytest.fixture
async def smollm_agent(smollm_path: Path) -> AsyncIterator[object]:
    """A real agent on loopback serving SmolLM2-135M in its embedded engine."""
    from tightwad.agent.server import AgentServer, AgentSettings
    from tightwad.engine.engine_config import EngineConfig

    cfg = EngineConfig(
        model_id="smollm", path=smollm_path, ctx_size=1024, max_sessions=20, threads=2
    )
    server = AgentServer(AgentSettings(listen="127.0.0.1:0", engines=(cfg,)))
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace=0.5)
