"""Placement's expected bytes per device against what llama.cpp says it allocated (issue #6:
within 15% on real runs).

A model is planned over the local CPU (the coordinator) and one real ``ggml-rpc-server``
(its device pinned, its free memory set so the layers split between the two), then loaded by
a real ``llama-server`` with the plan's ``-ngl`` and ``--tensor-split``. Its log names every
buffer per device: ``load_tensors: <dev> model buffer size`` (plus ``CPU_REPACK`` on the CPU),
``llama_kv_cache: <dev> KV buffer size``, ``sched_reserve: <dev> compute buffer size`` and
the host ``output buffer size``. No mmap (``-lm none``): with mmap, the CPU's figure is the
mapped file range, not an allocation. Flash attention on and one sequence, as the plan
assumes. The layer split llama.cpp reports must also be the planned one.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tightwad.agent.binaries import BinaryKind, find_binary
from tightwad.controller.ids import DeviceId, NodeId
from tightwad.controller.placement import (
    Candidate,
    Constraints,
    Placement,
    PlacementOptions,
    PlacementRequest,
    plan_placement,
)
from tightwad.engine.device_facts import Backend, DeviceInfo, Vendor
from tightwad.engine.model_facts import read_model_facts

pytestmark = [pytest.mark.cluster, pytest.mark.engine]

MiB = 1024 * 1024
GiB = 1024 * MiB
TOLERANCE = 0.15
# Margins are the plan's safety, not an allocation: zero here, so free memory is the budget.
OPTIONS = PlacementOptions(margin_fraction=0.0, margin_min_bytes=0)
_BUFFER = re.compile(
    r"(\S+?)(?:\[[^\]]*\])?\s+(model|KV|compute|output) buffer size =\s+([\d.]+) MiB"
)
_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")


def _device(dev_id: str, free: int) -> DeviceInfo:
    return DeviceInfo(
        id=dev_id,
        index=0,
        name=dev_id,
        vendor=Vendor.CPU,
        backend=Backend.CPU,
        memory_total_bytes=free,
        memory_free_bytes=free,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Allocated:
    bytes_by_device: dict[str, float]  # "CPU" / "RPC" -> bytes
    offloaded: int


def _run_llama(model: Path, ctx: int, plan: Placement, port: int) -> Allocated:
    rpc = subprocess.Popen(
        [str(find_binary(BinaryKind.RPC_SERVER)), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert time.monotonic() < deadline, "rpc-server did not listen"
            time.sleep(0.05)
        # This llama.cpp names an rpc-server's device "RPC0" in --device; the plan's
        # "RPC[host:port]" is what the engine host resolves itself.
        args = [
            str(find_binary(BinaryKind.LLAMA_SERVER)),
            "-m", str(model), "-c", str(ctx), "-ngl", str(plan.n_gpu_layers),
            "--rpc", f"127.0.0.1:{port}", "--device", "RPC0",
            "--tensor-split", ",".join(f"{f:g}" for f in plan.tensor_split),
            "-fa", "on", "-np", "1", "-lm", "none", "--fit", "off",
            "-t", "2", "-lv", "4", "--host", "127.0.0.1", "--port", "0",
        ]  # fmt: skip
        server = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: list[str] = []
        try:
            assert server.stdout is not None
            for line in server.stdout:
                lines.append(line)
                if "model loaded" in line or "listening on" in line:
                    break
        finally:
            server.kill()
            server.wait(10)
    finally:
        os.kill(rpc.pid, signal.SIGKILL)
        rpc.wait(10)
    got: dict[str, float] = {}
    offloaded = -1
    for line in lines:
        if m := _BUFFER.search(line):
            device = "RPC" if m.group(1).startswith("RPC") else m.group(1).split("_")[0]
            got[device] = got.get(device, 0.0) + float(m.group(3)) * MiB
        if m := _OFFLOADED.search(line):
            offloaded = int(m.group(1))
    assert set(got) == {"CPU", "RPC"}, "".join(lines[-40:])
    return Allocated(got, offloaded)


@pytest.mark.parametrize("ctx", [512, 2048])
@pytest.mark.parametrize("model_name", ["smollm2-135m", "qwen2.5-coder-0.5b"])
def test_expected_bytes_per_device_within_15_percent(model_name: str, ctx: int) -> None:
    from tightwad.fetch_models import ensure_model

    path = ensure_model(model_name)
    facts = read_model_facts(path)
    worker_free = int(facts.tensor_bytes * 0.55)  # about half the layers fit over RPC
    port = _free_port()
    cands = [
        Candidate(NodeId("coord"), _device("cpu:coord", 64 * GiB), "127.0.0.1", 0),
        Candidate(NodeId("w1"), _device("cpu:w1", worker_free), "127.0.0.1", port),
    ]
    request = PlacementRequest(
        model_name,
        ctx,
        constraints=Constraints(
            pin_device_ids=frozenset({DeviceId("cpu:w1")}), coordinator=NodeId("coord")
        ),
    )
    plan = plan_placement(request, facts, cands, OPTIONS)
    assert plan.fits, plan.reason
    cpu, rpc = plan.assignments
    assert cpu.is_cpu and rpc.is_rpc and cpu.n_layers > 0 and rpc.n_layers > 1, plan

    got = _run_llama(path, ctx, plan, port)

    assert got.offloaded == plan.n_gpu_layers == rpc.n_layers + 1  # + the output head
    for a, device in ((cpu, "CPU"), (rpc, "RPC")):
        actual = got.bytes_by_device[device]
        error = (a.expected_bytes - actual) / actual
        assert abs(error) <= TOLERANCE, (
            f"{model_name} ctx {ctx} {device}: expected {a.expected_bytes / MiB:.1f} MiB "
            f"(weights {a.weight_bytes / MiB:.1f}, KV {a.kv_bytes / MiB:.1f}, compute "
            f"{a.compute_bytes / MiB:.1f}), llama.cpp allocated {actual / MiB:.1f} MiB "
            f"({error:+.1%})"
        )
