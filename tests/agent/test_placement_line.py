"""The line an engine prints (and logs) at start about where its model went: a planned offload
(``gpu_layers="auto"``, the default everywhere) or the layer count it was given."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tightwad.agent.engine_host import build_parser, settings_from_args
from tightwad.engine.engine_config import EngineConfig
from tightwad.engine.model_facts import ModelFacts
from tightwad.engine.offload import MiB, OffloadDevice, OffloadOptions, placement_line, plan_offload

OPTS = OffloadOptions(margin_min_bytes=64 * MiB, margin_fraction=0.0)


def _facts(n_layers: int = 28, layer: int = 40 * MiB) -> ModelFacts:
    return ModelFacts(
        path="m.gguf",
        size_bytes=n_layers * layer,
        architecture="qwen2",
        name="m",
        n_layers=n_layers,
        context_length=4096,
        embedding_length=1536,
        n_head=12,
        n_head_kv=2,
        layer_bytes=(layer,) * n_layers,
        embedding_bytes=100 * MiB,
        output_bytes=100 * MiB,
        kv_bytes_per_token=n_layers * 2 * 256 * 2,
        quantization="Q4_K_M",
        n_vocab=151936,
        vocab_fingerprint="x",
    )


def _with_plan(devices: list[OffloadDevice], free_cells: int = 8192) -> EngineConfig:
    plan = plan_offload(_facts(), devices, ctx_cells=free_cells, options=OPTS)
    return dataclasses.replace(EngineConfig("m", Path("m.gguf"), gpu_layers=0), offload=plan)


def test_a_model_on_one_gpu_names_the_device_its_layers_and_bytes() -> None:
    cfg = _with_plan(
        [OffloadDevice("Vulkan0", "llvmpipe (LLVM 15.0.6, 256 bits)", 4 << 30, 4 << 30)]
    )
    line = placement_line(cfg)
    assert line == "28/28 layers on Vulkan0 (llvmpipe), 1.19 GiB; KV 224.0 MiB"


def test_a_split_says_how_many_layers_stay_on_the_cpu_and_why() -> None:
    small = OffloadDevice("CUDA0", "NVIDIA GeForce GTX 1050 Ti", 800 * MiB, 4 << 30)
    line = placement_line(_with_plan([small]))
    gpu_part, cpu_part = line.split(" + ")
    gpu = int(gpu_part.split("/")[0])
    assert 0 < gpu < 28 and gpu_part.startswith(f"{gpu}/28 layers on CUDA0 (NVIDIA")
    assert cpu_part.startswith(f"{28 - gpu}/28 layers on CPU")
    assert f"({28 - gpu} layer(s) do not fit (CUDA0 800.0 MiB free))" in cpu_part


def test_no_gpu_says_zero_layers_on_a_gpu_and_why() -> None:
    line = placement_line(_with_plan([]))
    assert line.startswith("0/28 layers on a GPU: no GPU device visible to ggml (CPU, ")
    assert line.endswith("; KV 224.0 MiB)")


def test_a_given_layer_count_reports_the_engines_own_layers() -> None:
    cfg = EngineConfig("m", Path("m.gguf"), gpu_layers=20, devices=("CUDA0",))
    assert placement_line(cfg, (("CPU", 10), ("CUDA0", 20))) == (
        "10/30 layers on CPU + 20/30 layers on CUDA0 (gpu_layers 20)"
    )
    cpu = EngineConfig("m", Path("m.gguf"), gpu_layers=0)
    assert placement_line(cpu) == "0 layers on a GPU: gpu_layers 0 (CPU)"
    assert placement_line(cpu, (("CPU", 30),)) == "30/30 layers on CPU (gpu_layers 0)"


def test_the_default_on_this_host_is_planned_and_all_cpu(smollm_path: Path) -> None:
    # Non-GPU tests see no ggml GPU: Mesa's llvmpipe stays hidden without GGML_VK_VISIBLE_DEVICES.
    ns = build_parser().parse_args(["--listen", "127.0.0.1:1", "--model", str(smollm_path)])
    assert ns.gpu_layers == "auto"
    cfg = settings_from_args(ns, {}).engine
    assert cfg.offload is not None and cfg.gpu_layers == 0 and cfg.devices == ()
    assert placement_line(cfg).startswith("0/30 layers on a GPU: no GPU device visible to ggml")


def test_gpu_layers_flag_takes_auto_or_a_count() -> None:
    parser = build_parser()
    base = ["--listen", "h:1", "--model", "m.gguf"]
    assert parser.parse_args([*base, "--gpu-layers", "auto"]).gpu_layers == "auto"
    assert parser.parse_args([*base, "--gpu-layers", "-1"]).gpu_layers == -1
    assert parser.parse_args([*base, "--gpu-layers", "12"]).gpu_layers == 12


def test_a_bad_gpu_layers_flag_is_refused_with_the_reason(capsys) -> None:  # type: ignore[no-untyped-def]
    parser = build_parser()
    for bad, why in (("all", "'all'"), ("-2", "-2")):
        try:
            parser.parse_args(["--listen", "h:1", "--model", "m", "--gpu-layers", bad])
        except SystemExit as exc:
            assert exc.code == 2
        else:
            raise AssertionError(f"--gpu-layers {bad} accepted")
        err = capsys.readouterr().err
        assert f"expected 'auto' or an integer >= -1, got {why}" in err
