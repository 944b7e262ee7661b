"""The offload planner: pure facts in, layers per device out."""

from __future__ import annotations

import bisect
from pathlib import Path

import pytest

from tightwad.engine.engine_config import EngineConfig
from tightwad.engine.model_facts import ModelFacts
from tightwad.engine.offload import (
    MiB,
    OffloadDevice,
    OffloadOptions,
    compute_bytes,
    plan_offload,
    plan_sessions,
)

OPTS = OffloadOptions(margin_min_bytes=64 * MiB, margin_fraction=0.0)


def facts(n_layers: int = 10, layer: int = 50 * MiB, output: int = 40 * MiB) -> ModelFacts:
    return ModelFacts(
        path="m.gguf",
        size_bytes=n_layers * layer + 2 * output,
        architecture="llama",
        name="m",
        n_layers=n_layers,
        context_length=4096,
        embedding_length=1024,
        n_head=16,
        n_head_kv=4,
        layer_bytes=(layer,) * n_layers,
        embedding_bytes=output,
        output_bytes=output,
        kv_bytes_per_token=n_layers * 2 * 256 * 2,
        quantization="Q4_K_M",
        n_vocab=32000,
        vocab_fingerprint="x",
    )


def dev(name: str, free_mib: int) -> OffloadDevice:
    return OffloadDevice(name, f"{name} gpu (test)", free_mib * MiB, free_mib * MiB)


def test_no_gpu_keeps_every_layer_on_the_cpu() -> None:
    plan = plan_offload(facts(), [], ctx_cells=1024, options=OPTS)
    assert (plan.n_gpu_layers, plan.cpu_layers, plan.shares) == (0, 10, ())
    assert plan.summary().startswith("10/10 layers on CPU")
    assert "no GPU device visible" in plan.summary()


def test_a_model_that_fits_goes_entirely_on_the_gpu() -> None:
    plan = plan_offload(facts(), [dev("Vulkan0", 2048)], ctx_cells=1024, options=OPTS)
    assert plan.n_gpu_layers == 11  # 10 layers + the output head, llama.cpp's count
    (share,) = plan.shares
    assert (share.first_layer, share.n_layers, share.holds_output) == (0, 10, True)
    assert share.weight_bytes == 10 * 50 * MiB + 40 * MiB
    assert plan.devices == ("Vulkan0",) and plan.tensor_split == ()
    assert plan.summary() == (
        f"10/10 layers on Vulkan0 (Vulkan0 gpu), 540.0 MiB; KV {plan.kv_bytes / MiB:.1f} MiB"
    )


def test_a_model_too_big_is_split_gpu_cpu_within_free_memory() -> None:
    f = facts()
    ctx = 1024
    free = 400
    plan = plan_offload(f, [dev("CUDA0", free)], ctx_cells=ctx, options=OPTS)
    (share,) = plan.shares
    assert 0 < share.n_layers < 10 and plan.cpu_layers == 10 - share.n_layers
    assert share.first_layer == plan.cpu_layers  # the last layers go on the GPU
    assert plan.n_gpu_layers == share.n_layers + 1
    room = free * MiB - share.margin_bytes
    assert share.expected_bytes <= room
    one_more = f.layer_bytes[0] + f.kv_bytes_per_token * ctx / f.n_layers
    assert share.expected_bytes + one_more > room
    assert share.compute_bytes == compute_bytes(f, ctx, OPTS)
    text = plan.summary()
    assert (
        f"{share.n_layers}/10 layers on CUDA0" in text
        and f"{plan.cpu_layers}/10 layers on CPU" in text
    )
    assert "do not fit (CUDA0 400.0 MiB free)" in text


def test_no_room_for_the_output_head_offloads_nothing() -> None:
    plan = plan_offload(facts(), [dev("CUDA0", 100)], ctx_cells=1024, options=OPTS)
    assert plan.n_gpu_layers == 0 and plan.cpu_layers == 10
    assert "output head does not fit on CUDA0" in plan.summary()


def _llama_cpp_layer_devices(split: tuple[float, ...], n_gpu: int) -> list[int]:
    """llama.cpp's assignment: device = upper_bound(cumulative normalised split, i / n_gpu)."""
    total = sum(split)
    cum = [sum(split[: i + 1]) / total for i in range(len(split))]
    return [bisect.bisect_right(cum, i / n_gpu) for i in range(n_gpu)]


def test_two_devices_get_contiguous_ranges_that_llama_cpp_reproduces() -> None:
    plan = plan_offload(
        facts(n_layers=20), [dev("CUDA0", 600), dev("CUDA1", 500)], ctx_cells=512, options=OPTS
    )
    first, last = plan.shares
    assert first.first_layer + first.n_layers == last.first_layer
    assert last.first_layer + last.n_layers == 20 and last.holds_output
    assert plan.devices == ("CUDA0", "CUDA1")
    placed = _llama_cpp_layer_devices(plan.tensor_split, plan.n_gpu_layers)
    expected = [0] * first.n_layers + [1] * (last.n_layers + 1)
    assert placed == expected


def test_engine_config_resolves_auto_and_keeps_overrides(tmp_path: Path) -> None:
    missing = EngineConfig("m", tmp_path / "none.gguf")
    assert missing.gpu_layers == 0 and missing.offload is None  # the load will say why
    assert EngineConfig("m", tmp_path / "none.gguf", gpu_layers=7).gpu_layers == 7
    with pytest.raises(ValueError, match="gpu_layers"):
        EngineConfig("m", tmp_path / "none.gguf", gpu_layers="all")  # type: ignore[arg-type]


def test_engine_config_plans_a_real_gguf_on_this_process_devices(smollm_path: Path) -> None:
    cfg = EngineConfig("smol", smollm_path, ctx_size=256, max_sessions=2)
    assert cfg.offload is not None
    assert cfg.offload.n_layers == 30
    # Non-GPU tests see no ggml GPU (Vulkan's llvmpipe is hidden without GGML_VK_VISIBLE_DEVICES).
    assert cfg.gpu_layers == cfg.offload.n_gpu_layers
    assert "30/30 layers on" in cfg.offload_summary


def _fits(free_mib: int, cells: int) -> bool:
    plan = plan_offload(facts(), [dev("CUDA0", free_mib)], ctx_cells=cells, options=OPTS)
    return plan.cpu_layers == 0


def test_fewer_sessions_when_their_kv_is_what_keeps_layers_off_the_gpu() -> None:
    ctx = 8192  # 10 KiB of KV a cell: 80 MiB a session, 640 MiB for 8
    free = next(m for m in range(600, 2000, 10) if _fits(m, 3 * ctx) and not _fits(m, 4 * ctx))
    plan = plan_sessions(facts(), [dev("CUDA0", free)], ctx, 8, options=OPTS)
    assert plan.sessions == 3 and plan.cpu_layers == 0 and plan.n_gpu_layers == 11
    assert plan.kv_bytes == 3 * ctx * facts().kv_bytes_per_token
    asked = plan_offload(facts(), [dev("CUDA0", free)], ctx_cells=8 * ctx, options=OPTS)
    assert asked.cpu_layers > 0
    assert f"would leave {asked.cpu_layers} layer(s) on the CPU, so 3 session(s)" in plan.summary()
    assert plan.summary().startswith("10/10 layers on CUDA0")


def test_sessions_stay_as_asked_when_everything_fits_or_nothing_would() -> None:
    roomy = plan_sessions(facts(), [dev("CUDA0", 4000)], 8192, 8, options=OPTS)
    assert roomy.sessions == 0 and roomy.cpu_layers == 0 and not roomy.sessions_note
    # the weights alone do not fit: one session would not bring every layer on, keep 8
    small = plan_sessions(facts(), [dev("CUDA0", 400)], 8192, 8, options=OPTS)
    assert small.sessions == 0 and small.cpu_layers > 0
    assert small == plan_offload(facts(), [dev("CUDA0", 400)], ctx_cells=8 * 8192, options=OPTS)
    # no GPU: nothing to gain by fewer sessions
    assert plan_sessions(facts(), [], 8192, 8, options=OPTS).sessions == 0
