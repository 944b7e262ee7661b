"""The GPU path on a real ggml GPU backend: the device of tests/gpu/conftest.py (``Vulkan0``,
Mesa's llvmpipe, on CI; ``CUDA0`` or the like under scripts/gpu_check.sh).

1. An engine with the default offload plan puts every layer of SmolLM2 on the device and its
   greedy output equals the CPU engine's, or first differs at a near-tie of the CPU run's top
   two logprobs (tests/support.py: GPU kernels round differently from the CPU's).
2. The agent's inventory and ``tightwad-agent --check`` list the device with ggml's memory.
3. ``ggml-rpc-server`` of the GPU build serves the device, and a ``llama-server`` that sees no
   GPU, pooled over it, puts every layer there and generates the CPU engine's tokens (or
   near-tie).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from support import assert_equal_or_near_tie

from gpu.vk import backend_of, child_env, port, run_child, wait_health, wait_port
from tightwad.agent.binaries import BinaryKind, find_binary
from tightwad.agent.check import built_backend
from tightwad.agent.inventory import Backend, SubprocessRunner, collect_inventory

pytestmark = [pytest.mark.gpu, pytest.mark.engine]

CHILD = Path(__file__).with_name("greedy_child.py")
AGENT = Path(sys.executable).with_name("tightwad-agent")
PROMPTS = ["What is the capital of Spain?", "Write a Python function that adds two numbers."]
N = 20
MIB = 1 << 20


def _greedy(model: Path, *, gpu: bool) -> dict[str, object]:
    return run_child(CHILD, model, N, *PROMPTS, gpu=gpu)


@pytest.fixture(scope="module")
def cpu_reference(smollm_path: Path) -> dict[str, object]:
    ref = _greedy(smollm_path, gpu=False)
    assert ref["gpu_layers"] == 0 and ref["placement"] == [["CPU", 30]]
    return ref


def test_engine_offloads_every_layer_to_the_gpu_and_matches_the_cpu(
    gpu_device: dict[str, object], smollm_path: Path, cpu_reference: dict[str, object]
) -> None:
    name, short = str(gpu_device["name"]), str(gpu_device["description"]).split(" (")[0]
    gpu = _greedy(smollm_path, gpu=True)
    assert gpu["gpu_layers"] == 31  # 30 layers + the output head, chosen by the planner
    assert gpu["devices"] == [name] and gpu["placement"] == [[name, 30]]
    assert str(gpu["summary"]).startswith(f"30/30 layers on {name} ({short}), ")
    for ref, run in zip(cpu_reference["runs"], gpu["runs"], strict=True):  # type: ignore[call-overload]
        assert run["prompt"] == ref["prompt"] and len(run["tokens"]) == N
        assert_equal_or_near_tie(ref["tokens"], run["tokens"], ref["gaps"], f"{name} vs CPU")


async def test_inventory_lists_the_gpu_with_ggml_memory(gpu_device: dict[str, object]) -> None:
    name = str(gpu_device["name"])
    report = await collect_inventory(
        SubprocessRunner(env=child_env(gpu=True)),
        llama_server=find_binary(BinaryKind.LLAMA_SERVER),
    )
    (dev,) = [d for d in report.devices if d.ggml_name == name]
    assert dev.backend is Backend(backend_of(name)) and dev.is_gpu
    total = int(gpu_device["memory_total_bytes"])  # type: ignore[call-overload]
    # ggml's own number, or a vendor tool's (nvidia-smi: whole MiB) within 2 %
    assert total > 0 and abs(dev.memory_total_bytes - total) <= 0.02 * total
    if gpu_device["device_id"]:  # keyed stably: the PCI id ggml gives, or the vendor tool's id
        assert dev.pci_bus_id or dev.id.startswith("pci:")
    else:
        assert dev.id == f"ggml:{report.host.hostname}:{name}"
    assert report.device(dev.id) == dev


def test_agent_check_lists_the_gpu_and_the_backend(gpu_device: dict[str, object]) -> None:
    out = subprocess.run(
        [str(AGENT), "--check"],
        env=child_env(gpu=True),
        capture_output=True,
        text=True,
        timeout=120,
    )
    backend = backend_of(str(gpu_device["name"]))
    lines = [x for x in out.stdout.splitlines() if x.startswith("[ok] device ")]
    assert [x for x in lines if f"({backend})" in x], out.stdout
    line = next(x for x in lines if f"({backend})" in x)
    if backend == "vulkan":  # ggml's own description and memory (no vendor tool for llvmpipe)
        gib = int(gpu_device["memory_total_bytes"]) / (1 << 30)  # type: ignore[call-overload]
        assert f"{gpu_device['description']} (vulkan)" in line
        assert line.endswith(f"of {gib:.1f} GiB free")
    assert f"[ok] llama-cpp-python backend: {backend}" in out.stdout


def _complete(url: str, tokens: list[int]) -> list[int]:
    body = {
        "prompt": tokens,
        "n_predict": N,
        "temperature": 0,
        "top_k": 1,
        "cache_prompt": False,
        "return_tokens": True,
        "ignore_eos": True,
    }
    req = urllib.request.Request(
        f"{url}/completion", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=300) as r:
        return list(json.loads(r.read())["tokens"])


@pytest.mark.cluster
def test_llama_server_pooled_over_a_gpu_rpc_server(
    gpu_device: dict[str, object],
    smollm_path: Path,
    cpu_reference: dict[str, object],
    tmp_path: Path,
) -> None:
    name = str(gpu_device["name"])
    rpc_bin = find_binary(BinaryKind.RPC_SERVER)
    server_bin = find_binary(BinaryKind.LLAMA_SERVER)
    if built_backend(rpc_bin) != backend_of(name):
        pytest.skip(f"{rpc_bin} is not the {backend_of(name)} build ({built_backend(rpc_bin)})")
    rpc_port, http_port = port(), port()
    rpc_log, server_log = tmp_path / "rpc.log", tmp_path / "server.log"
    with rpc_log.open("wb") as rl, server_log.open("wb") as sl:
        rpc = subprocess.Popen(
            [str(rpc_bin), "-H", "127.0.0.1", "-p", str(rpc_port), "-d", name],
            env=child_env(gpu=True),
            stdout=rl,
            stderr=subprocess.STDOUT,
        )
        server = None
        try:
            wait_port(rpc_port, rpc, "ggml-rpc-server")
            # The coordinator sees no local GPU (all hidden): every layer must go over RPC.
            server = subprocess.Popen(
                [
                    str(server_bin),
                    "-m",
                    str(smollm_path),
                    "--rpc",
                    f"127.0.0.1:{rpc_port}",
                    "-ngl",
                    "99",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(http_port),
                    "-c",
                    "1024",
                    "-np",
                    "1",
                    "-t",
                    "2",
                    "-fa",
                    "on",
                    "-lv",
                    "4",  # the load_tensors / buffer-size lines
                    "--no-webui",
                ],
                env=child_env(gpu=False),
                stdout=sl,
                stderr=subprocess.STDOUT,
            )
            url = f"http://127.0.0.1:{http_port}"
            wait_health(url, server)
            for ref in cpu_reference["runs"]:  # type: ignore[attr-defined]
                got = _complete(url, ref["prompt"])
                assert_equal_or_near_tie(ref["tokens"], got, ref["gaps"], f"RPC({name}) vs CPU")
        finally:
            for proc in (server, rpc):
                if proc is not None:
                    proc.terminate()
                    proc.wait(timeout=30)
    banner = rpc_log.read_text(errors="replace")
    assert name in banner, banner[-2000:]
    log = server_log.read_text(errors="replace")
    assert re.search(r"offloaded 31/31 layers to GPU", log), log[-3000:]
    assert re.search(r"RPC\S* model buffer size =\s+[\d.]+ MiB", log), log[-3000:]
