"""Helpers shared by tests (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from tightwad.engine.engine_config import EngineConfig
from tightwad.engine.server import EngineServer
from tightwad.gateway.api import GatewaySettings
from tightwad.gateway.engine_client import EngineClient
from tightwad.gateway.loop import RouteSpec
from tightwad.gateway.server import GatewayServer

# Batched and one-token forward passes may differ in the last bits. Measured here on CPU with
# flash attention: SmolLM2-135M is bit-identical for batches up to 16; Qwen2.5-Coder-1.5B is
# bit-identical up to 3 and differs by up to 0.78 in a logit from 4 on. A divergence between
# two greedy runs is acceptable only where the target's top two choices were this close.
NEAR_TIE_LOGPROB_GAP = 1.0


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def assert_equal_or_near_tie(
    reference: Sequence[int], other: Sequence[int], gaps: Sequence[float], what: str = ""
) -> bool:
    """Assert ``other`` equals ``reference`` or first differs where ``gaps`` (top-1 minus
    top-2 logprob of the reference run at each position) shows a near-tie. Returns whether
    they were identical."""
    i = first_divergence(reference, other)
    if i is None:
        return True
    assert i < len(gaps), f"{what}: outputs differ in length at {i} with no tie information"
    assert gaps[i] < NEAR_TIE_LOGPROB_GAP, (
        f"{what}: divergence at token {i} where the target's top-2 gap is {gaps[i]:.3f} "
        f"(not a near-tie): {list(reference)} vs {list(other)}"
    )
    return False


@contextlib.asynccontextmanager
async def live_gateway(
    model: str,
    path: Path,
    *,
    ctx_size: int,
    max_sessions: int = 4,
    settings: GatewaySettings | None = None,
) -> AsyncIterator[str]:
    """A real engine on ``path`` behind a real gateway on loopback, one n-gram route named
    ``model`` (no calibration): yields the gateway's URL; stops both on exit."""
    cfg = EngineConfig(model, path, ctx_size=ctx_size, max_sessions=max_sessions, threads=2)
    engine = EngineServer("127.0.0.1:0", engines=(cfg,))
    address = await engine.start()
    route = RouteSpec(
        name=model, target=EngineClient(address, model), draft_mode="ngram", calibrate=False
    )
    gateway = GatewayServer([route], settings or GatewaySettings(), host="127.0.0.1", port=0)
    try:
        yield await gateway.start()
    finally:
        await gateway.stop()
        await engine.stop(grace=0.5)
