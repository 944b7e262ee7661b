"""Exactness against the numerics the target saw.

With flash attention (the engine's default) and aligned prefill chunks, a batched Verify
computes the same logits as one-token decoding. Measured on this machine and asserted here:
SmolLM2-135M is bit-identical at every draft length up to 16; Qwen2.5-Coder-1.5B is
bit-identical up to 3 and differs by at most ~0.8 in a logit from 4 on (the envelope the
near-tie threshold of tests/support.py covers).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tightwad.engine.binding import LlamaLoadParams, LlamaModel
from tightwad.engine.engine_config import EngineConfig
from tightwad.engine.llama_engine import Engine
from tightwad.spec.sampling import SamplingConfig

pytestmark = pytest.mark.engine

PROMPTS = [
    "Write a Python function that returns the square of a number.",
    "List three fruits and their colors.",
]


def _envelope(path: Path, ks: list[int], *, flash_attn: bool, n: int = 16) -> dict[int, float]:
    """Max |logit difference| between one-token decoding and verify batches of k+1 tokens."""
    m = LlamaModel(
        LlamaLoadParams(path=path, n_ctx=2048, n_threads=2, n_seq_max=4, flash_attn=flash_attn)
    )
    out: dict[int, float] = {}
    try:
        for k in ks:
            worst = 0.0
            for text in PROMPTS:
                toks = m.tokenize(text, add_special=True, parse_special=True)
                m.seq_rm(0, -1, -1)
                m.decode(0, toks[:-1], 0, ())
                seq, pos, rows = list(toks), len(toks) - 1, []
                for _ in range(n):
                    m.decode(0, [seq[-1]], pos, (0,))
                    pos += 1
                    rows.append(m.logits_row(0))
                    seq.append(int(np.argmax(rows[-1])))
                m.seq_rm(1, -1, -1)
                m.decode(1, toks[:-1], 0, ())
                cur, base, i, batched = [toks[-1], *seq[len(toks) :]], len(toks) - 1, 0, []
                while i < n:
                    chunk = cur[i : i + k + 1]
                    m.decode(1, chunk, base + i, range(len(chunk)))
                    batched += [m.logits_row(j) for j in range(len(chunk))]
                    i += len(chunk)
                worst = max(
                    worst,
                    *(float(np.abs(a - b).max()) for a, b in zip(rows, batched, strict=False)),
                )
            out[k] = worst
    finally:
        m.close()
    return out


def test_verify_is_bit_identical_to_one_token_decoding_smollm(smollm_path: Path) -> None:
    env = _envelope(smollm_path, [0, 1, 3, 7, 15], flash_attn=True)
    assert env == {0: 0.0, 1: 0.0, 3: 0.0, 7: 0.0, 15: 0.0}


@pytest.mark.slow
def test_qwen_envelope_matches_what_we_document(qwen_target_path: Path) -> None:
    env = _envelope(qwen_target_path, [1, 2, 7], flash_attn=True, n=12)
    assert env[1] == 0.0 and env[2] == 0.0
    assert env[7] < 1.0


async def test_replaying_recorded_verify_batches_reproduces_every_token(
    smollm_path: Path,
) -> None:
    """Record a speculative run's verify batches; a fresh session fed the same batches at the
    same boundaries emits the same tokens."""
    cfg = EngineConfig("m", smollm_path, ctx_size=1024, max_sessions=2, threads=2)
    engine = await Engine.load(cfg)
    try:
        prompt = await engine.tokenize(PROMPTS[0], add_special=True, parse_special=True)
        s, _, _ = await engine.open_session(prompt, SamplingConfig())
        first = (await s.verify([])).next_token
        # Drafts: a fixed, partly wrong guess each round (what an n-gram proposer might send).
        recorded: list[tuple[list[int], int, int]] = []
        for r in range(8):
            draft = [first + r, 198, 198][: (r % 3) + 1]
            res = await s.verify(draft)
            recorded.append((draft, res.accepted, res.next_token))
        emitted = list(s.tokens[len(prompt) :])
        s.release()
        replay, _, _ = await engine.open_session(prompt, SamplingConfig())
        assert (await replay.verify([])).next_token == first
        for draft, accepted, nxt in recorded:
            res = await replay.verify(draft)
            assert (res.accepted, res.next_token) == (accepted, nxt)
        assert list(replay.tokens[len(prompt) :]) == emitted
        replay.release()
    finally:
        await engine.close()
