"""Speculation with the target on the GPU: the gateway's loop with n-gram drafting over an
engine whose layers are all on the tier's device (Vulkan0 on CI) gives the output of the same
target alone (draft none), or first differs at a near-tie of the target's top two logprobs,
and accepts drafted tokens on an edit prompt. Both runs share one engine in one subprocess
(tests/gpu/spec_child.py), since a backend reads the device visibility once per process."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import assert_equal_or_near_tie

from gpu.vk import run_child

pytestmark = [pytest.mark.gpu, pytest.mark.engine]

CHILD = Path(__file__).with_name("spec_child.py")
N = 32  # llvmpipe decodes SmolLM2 at ~2 tokens/s: keep it short


def test_ngram_drafting_over_a_gpu_target_equals_the_target_alone(
    gpu_device: dict[str, object], smollm_path: Path
) -> None:
    got = run_child(CHILD, smollm_path, N, gpu=True, timeout=900)
    name = str(gpu_device["name"])
    assert got["devices"] == [name] and got["summary"].startswith(f"30/30 layers on {name} ")
    alone, ngram = got["alone"], got["ngram"]
    assert alone["stats"]["mode"] == "none" and alone["stats"]["accepted"] == 0
    assert len(alone["tokens"]) == len(alone["gaps"]) > 0
    stats = ngram["stats"]
    assert stats["mode"] == "ngram" and stats["rounds"] > 0
    assert 0 < stats["accepted"] <= stats["drafted"], stats
    assert_equal_or_near_tie(alone["tokens"], ngram["tokens"], alone["gaps"], f"n-gram on {name}")
