"""Device pinning on a real ggml GPU backend: an rpc-server the agent's Supervisor starts for
the GPU device sees that device, and one started for the CPU sees no GPU at all, although the
agent itself sees the GPU (its environment shows it, as on a llvmpipe host). On Vulkan that is
``GGML_VK_VISIBLE_DEVICES`` (tightwad.agent.processes.launch)."""

from __future__ import annotations

import asyncio

import pytest

from gpu.vk import backend_of, child_env
from tightwad.agent.binaries import BinaryKind, BinaryLocator
from tightwad.agent.check import built_backend
from tightwad.agent.processes import (
    ProcessKind,
    ProcessSpec,
    ProcessState,
    RestartPolicy,
    Supervisor,
    SupervisorSettings,
)
from tightwad.engine.device_facts import Backend, DeviceInfo, Vendor

pytestmark = [pytest.mark.gpu, pytest.mark.cluster]

FAST = SupervisorSettings(
    restart=RestartPolicy(initial_backoff_s=0.1, max_backoff_s=0.2, crash_loop_restarts=3),
    stop_grace_s=2.0,
    port_low=51400,
    port_high=51499,
)


async def _log(sup: Supervisor, name: str, marker: str) -> list[str]:
    """The process's log once ``marker`` is in it (ggml prints its devices as it starts)."""
    async with asyncio.timeout(30):
        while True:
            lines = [entry.line for entry in sup.logs(name).tail()]
            if any(marker in line for line in lines):
                return lines
            await asyncio.sleep(0.1)


async def test_an_rpc_server_for_the_vulkan_device_sees_it_and_one_for_the_cpu_does_not(
    gpu_device: dict[str, object],
) -> None:
    name = str(gpu_device["name"])
    if backend_of(name) != "vulkan":
        pytest.skip(f"{name}: this test pins a Vulkan device")
    binaries = BinaryLocator()
    rpc_bin = binaries.try_find(BinaryKind.RPC_SERVER)
    if rpc_bin is None or built_backend(rpc_bin) != "vulkan":
        pytest.skip(f"{rpc_bin} is not a Vulkan build of ggml-rpc-server")
    gpu = DeviceInfo(
        id=f"ggml:test:{name}",
        index=0,
        name=str(gpu_device["description"]),
        vendor=Vendor.UNKNOWN,
        backend=Backend.VULKAN,
        memory_total_bytes=int(gpu_device["memory_total_bytes"]),  # type: ignore[call-overload]
        memory_free_bytes=int(gpu_device["memory_free_bytes"]),  # type: ignore[call-overload]
        ggml_name=name,
    )
    cpu = DeviceInfo("cpu:test", 0, "cpu", Vendor.CPU, Backend.CPU, 1 << 30, 1 << 30)
    devices = {d.id: d for d in (gpu, cpu)}
    # The agent's own environment shows the GPU (GGML_VK_VISIBLE_DEVICES=0 for llvmpipe).
    sup = Supervisor(binaries, devices=devices.get, settings=FAST, base_env=child_env(gpu=True))
    short = str(gpu_device["description"]).split(" (")[0]
    try:
        on_gpu = await sup.start(
            ProcessSpec("rpc-gpu", ProcessKind.RPC_SERVER, device_ids=(gpu.id,)), wait_healthy=True
        )
        on_cpu = await sup.start(
            ProcessSpec("rpc-cpu", ProcessKind.RPC_SERVER, device_ids=(cpu.id,)), wait_healthy=True
        )
        assert on_gpu.state is ProcessState.RUNNING and on_gpu.healthy, on_gpu.message
        assert on_cpu.state is ProcessState.RUNNING and on_cpu.healthy, on_cpu.message
        gpu_log = await _log(sup, "rpc-gpu", "Vulkan devices")
        cpu_log = await _log(sup, "rpc-cpu", "Vulkan devices")
    finally:
        await sup.close(2.0)
    assert any("Found 1 Vulkan devices" in line for line in gpu_log), gpu_log
    assert any(f"0 = {short}" in line for line in gpu_log), gpu_log
    assert any("Found 0 Vulkan devices" in line for line in cpu_log), cpu_log
    assert not any(short in line for line in cpu_log), cpu_log
