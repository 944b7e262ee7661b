"""The offload planner against llama.cpp's own allocation: a plan over the GPU device and a
second device served by a ``ggml-rpc-server`` (its CPU), each given room for about ten of
SmolLM2's 30 layers, splits the model CPU + GPU + RPC; ``llama-server`` loaded with the plan's
``--device``, ``-ngl`` and ``--tensor-split`` allocates, per device, the weight and KV bytes the
plan predicted within 15 % (its ``model buffer size`` / ``KV buffer size`` log lines). Measured
on llvmpipe: Vulkan0 21.1 MiB weights + 7.5 MiB KV, RPC0 49.8 + 7.5 (the output head's copy of
the tied embedding included), CPU KV 7.5: the plan's numbers to 0.1 MiB."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from gpu.vk import child_env, port, wait_health, wait_port
from tightwad.agent.binaries import BinaryKind, find_binary
from tightwad.engine.model_facts import ModelFacts, read_model_facts
from tightwad.engine.offload import OffloadDevice, OffloadOptions, compute_bytes, plan_offload

pytestmark = [pytest.mark.gpu, pytest.mark.engine, pytest.mark.cluster]

MIB = 1 << 20
CELLS = 1024
BUFFER = re.compile(r"(\S+) (model|KV) buffer size =\s+([\d.]+) MiB")


def _room_for(facts: ModelFacts, layers: range, output: bool, opts: OffloadOptions) -> int:
    """Free memory that holds exactly ``layers`` (+ the output head) under the plan's rules."""
    kv_layer = facts.kv_bytes_per_token * CELLS / facts.n_layers
    need = sum(facts.layer_bytes[i] + kv_layer for i in layers)
    need += compute_bytes(facts, CELLS, opts) + (facts.output_bytes if output else 0)
    half = facts.layer_bytes[layers.start - 1] // 2  # less than the next layer down
    return int(need + opts.margin_min_bytes + half)


def test_a_cpu_gpu_rpc_split_allocates_what_the_plan_predicted(
    gpu_device: dict[str, object], smollm_path: Path, tmp_path: Path
) -> None:
    facts = read_model_facts(smollm_path)
    opts = OffloadOptions(ubatch=512, flash_attn=True)
    name = str(gpu_device["name"])
    rpc_port, http_port = port(), port()
    rpc_name = f"RPC[127.0.0.1:{rpc_port}]"
    gpu_free = _room_for(facts, range(10, 20), False, opts)
    rpc_free = _room_for(facts, range(20, 30), True, opts)
    plan = plan_offload(
        facts,
        [
            OffloadDevice(name, str(gpu_device["description"]), gpu_free, gpu_free),
            OffloadDevice(rpc_name, "ggml-rpc-server (CPU)", rpc_free, rpc_free),
        ],
        CELLS,
        opts,
    )
    assert [(s.first_layer, s.n_layers) for s in plan.shares] == [(10, 10), (20, 10)]
    assert plan.cpu_layers == 10 and plan.n_gpu_layers == 21, plan.summary()

    rpc_bin, server_bin = find_binary(BinaryKind.RPC_SERVER), find_binary(BinaryKind.LLAMA_SERVER)
    rpc_log, server_log = tmp_path / "rpc.log", tmp_path / "server.log"
    with rpc_log.open("wb") as rl, server_log.open("wb") as sl:
        rpc = subprocess.Popen(
            [str(rpc_bin), "-H", "127.0.0.1", "-p", str(rpc_port), "-d", "CPU"],
            env=child_env(gpu=False),
            stdout=rl,
            stderr=subprocess.STDOUT,
        )
        server = None
        try:
            wait_port(rpc_port, rpc, "ggml-rpc-server")
            listed = subprocess.run(
                [str(server_bin), "--rpc", f"127.0.0.1:{rpc_port}", "--list-devices"],
                env=child_env(gpu=True),
                capture_output=True,
                text=True,
                timeout=120,
            ).stdout
            (rpc_dev,) = re.findall(rf"^\s*(\S+): 127\.0\.0\.1:{rpc_port}\b", listed, re.M)
            split = ",".join(f"{x:g}" for x in plan.tensor_split)
            server = subprocess.Popen(
                [
                    str(server_bin),
                    "-m",
                    str(smollm_path),
                    "--rpc",
                    f"127.0.0.1:{rpc_port}",
                    "--device",
                    f"{name},{rpc_dev}",
                    "-ngl",
                    str(plan.n_gpu_layers),
                    "-ts",
                    split,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(http_port),
                    "-c",
                    str(CELLS),
                    "-np",
                    "1",
                    "-t",
                    "2",
                    "-fa",
                    "on",
                    "-lv",
                    "4",
                    "--no-webui",
                ],
                env=child_env(gpu=True),
                stdout=sl,
                stderr=subprocess.STDOUT,
            )
            wait_health(f"http://127.0.0.1:{http_port}", server)
        finally:
            for proc in (server, rpc):
                if proc is not None:
                    proc.terminate()
                    proc.wait(timeout=30)
    log = server_log.read_text(errors="replace")
    got: dict[tuple[str, str], float] = {}
    for dev, kind, mib in BUFFER.findall(log):
        got[(dev, kind)] = got.get((dev, kind), 0.0) + float(mib) * MIB
    assert re.search(r"offloaded 21/31 layers to GPU", log), log[-3000:]
    for share, dev in zip(plan.shares, (name, rpc_dev), strict=True):
        model = next(v for (d, k), v in got.items() if k == "model" and d.startswith(dev[:3]))
        kv = next(v for (d, k), v in got.items() if k == "KV" and d.startswith(dev[:3]))
        assert abs(model - share.weight_bytes) <= 0.15 * share.weight_bytes, (dev, model, share)
        assert abs(kv - share.kv_bytes) <= 0.15 * share.kv_bytes, (dev, kv, share)
    # The CPU keeps the first layers' KV (its weights are the mmapped file: CPU_Mapped is it all).
    cpu_kv = sum(v for (d, k), v in got.items() if k == "KV" and d.startswith("CPU"))
    planned_cpu_kv = plan.kv_bytes - sum(s.kv_bytes for s in plan.shares)
    assert abs(cpu_kv - planned_cpu_kv) <= 0.15 * planned_cpu_kv, (cpu_kv, planned_cpu_kv)
