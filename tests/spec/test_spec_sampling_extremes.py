"""The sampling chain at the wire's bounds: ``repeat_penalty`` up to float32 max (the API
accepts any positive float32) gives no floating-point warning and a sane distribution."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from tightwad.spec.sampling import SamplingConfig, apply_penalties_and_bias, target_distribution

F32_MAX = float(np.finfo(np.float32).max)


@pytest.mark.parametrize("penalty", [F32_MAX, 3.4e38, 1e30])
def test_huge_repeat_penalty_drops_seen_negative_logits_without_a_warning(penalty: float) -> None:
    logits = np.array([-1.5, 2.0, 0.5, -0.25, 3.0], dtype=np.float32)
    history = [0, 1, 3]  # tokens 0 and 3 (negative logits) and 1 (positive) were seen
    cfg = SamplingConfig(repeat_penalty=penalty, frequency_penalty=2.0, presence_penalty=-2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow RuntimeWarning fails the test
        out = apply_penalties_and_bias(logits, history, cfg)
    assert out.dtype == np.float32
    # seen, not positive: logit *= penalty, in float32 (overflowing to -inf as C does)
    with np.errstate(over="ignore"):
        expect = logits * np.float32(penalty)
    assert out[0] == expect[0] and out[3] == expect[3]
    assert (out[0] == -np.inf) == (penalty > 3e38)  # 1.5 * 3.4e38 is past float32 max
    # seen, positive: logit /= penalty is ~0, then the frequency/presence terms (-2 + 2)
    assert out[1] == np.float32(2.0) / np.float32(penalty) - np.float32(0.0)
    # unseen: untouched
    assert out[2] == np.float32(0.5) and out[4] == np.float32(3.0)


@pytest.mark.parametrize("temperature", [0.0, 0.3, 1.0, 2.0])
def test_huge_repeat_penalty_gives_a_proper_distribution(temperature: float) -> None:
    logits = np.array([-1.5, 2.0, 0.5, -0.25, 3.0], dtype=np.float32)
    cfg = SamplingConfig(temperature=temperature, repeat_penalty=F32_MAX)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dist = target_distribution(logits, [0, 3, 4], cfg)
    probs = dict(zip(dist.token_ids.tolist(), dist.probs.tolist(), strict=True))
    assert all(np.isfinite(p) and p >= 0 for p in probs.values()), probs
    assert sum(probs.values()) == pytest.approx(1.0)
    assert probs.get(0, 0.0) == 0.0 and probs.get(3, 0.0) == 0.0  # penalised out
    # token 4 (3.0, seen: now ~0) falls below the unseen 2.0: the top token is 1
    assert max(probs, key=probs.__getitem__) == 1


def test_every_candidate_penalised_out_is_a_clear_error() -> None:
    logits = np.array([-2.0, -3.0], dtype=np.float32)  # both overflow to -inf
    cfg = SamplingConfig(temperature=1.0, repeat_penalty=F32_MAX)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="no finite logit"):
            target_distribution(logits, [0, 1], cfg)
