"""Session.generate queues the next step while the caller streams: same tokens as one step at a
time, and a step decoded for a caller that stopped early is undone."""

from __future__ import annotations

from pathlib import Path

import pytest

from tightwad.engine.engine_config import EngineConfig
from tightwad.engine.llama_engine import Engine
from tightwad.spec.sampling import SamplingConfig

pytestmark = pytest.mark.engine

PROMPT = "def fibonacci(n):\n"


async def _stepwise(engine: Engine, prompt: list[int], n: int) -> list[int]:
    s, _, _ = await engine.open_session(prompt, SamplingConfig())
    out = [(await s.verify([])).next_token for _ in range(n)]
    s.release()
    return out


async def test_generate_equals_plain_steps_and_undoes_an_abandoned_step(
    smollm_path: Path,
) -> None:
    engine = await Engine.load(EngineConfig("m", smollm_path, ctx_size=512, max_sessions=2))
    try:
        prompt = await engine.tokenize(PROMPT, add_special=True, parse_special=False)
        ref = await _stepwise(engine, prompt, 12)

        s, _, _ = await engine.open_session(prompt, SamplingConfig())
        got = [tok async for tok, _lp, _why in s.generate(12, ignore_eos=True)]
        assert got == ref
        assert len(s.tokens) == len(prompt) + 12
        s.release()

        # Stop after 3 tokens: the 4th step was already queued; it is undone, so the session
        # holds exactly what the caller saw and continues from there.
        s, _, _ = await engine.open_session(prompt, SamplingConfig())
        gen = s.generate(12, ignore_eos=True)
        seen = [(await anext(gen))[0] for _ in range(3)]
        await gen.aclose()
        assert seen == ref[:3]
        rest = [(await s.verify([])).next_token for _ in range(3)]
        assert len(s.tokens) == len(prompt) + 6
        assert n_kv_consistent(s)
        assert rest == ref[3:6]
        s.release()
    finally:
        await engine.close()


def n_kv_consistent(session: object) -> bool:
    """The pending token is the only one not in the KV cache."""
    return session.n_kv == len(session.tokens) - 1  # type: ignore[attr-defined]
