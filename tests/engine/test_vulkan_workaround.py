"""The engine turns off ggml-vulkan's op fusion only where a model is about to run on Mesa's
software Vulkan device (llvmpipe, which crashes in the fused kernels: tests/gpu/
test_llvmpipe_fusion.py): a table over faked ggml device lists, the devices a config names,
the layers it offloads and a value the user set."""

from __future__ import annotations

import pytest

from tightwad.engine import ggml_devices
from tightwad.engine.ggml_devices import VK_DISABLE_FUSION, GgmlDeviceProps

GiB = 1 << 30
CPU = GgmlDeviceProps("CPU", "AMD EPYC", "cpu", 8 * GiB, 8 * GiB)
LLVMPIPE = GgmlDeviceProps("Vulkan0", "llvmpipe (LLVM 15.0.6, 256 bits)", "gpu", 2 * GiB, 2 * GiB)
RADEON = GgmlDeviceProps(
    "Vulkan1", "AMD Radeon RX 6700 XT (RADV NAVI22)", "gpu", 12 * GiB, 12 * GiB
)
CUDA = GgmlDeviceProps("CUDA0", "NVIDIA GeForce RTX 3090", "gpu", 24 * GiB, 24 * GiB)

CASES = [
    # (ggml's devices, config devices, n_gpu_layers, env before, device returned, env after)
    ((CPU, LLVMPIPE), (), -1, {}, "Vulkan0", "1"),
    ((CPU, LLVMPIPE), ("Vulkan0",), 30, {}, "Vulkan0", "1"),
    ((CPU, LLVMPIPE), (), 0, {}, "", None),  # every layer on the CPU: nothing runs on Vulkan
    ((CPU, LLVMPIPE, RADEON), ("Vulkan1",), -1, {}, "", None),  # the real GPU keeps fusion
    ((CPU, LLVMPIPE, RADEON), ("Vulkan1", "Vulkan0"), -1, {}, "Vulkan0", "1"),
    ((CPU, RADEON), (), -1, {}, "", None),
    ((CPU, CUDA), (), -1, {}, "", None),
    ((CPU,), (), -1, {}, "", None),
    ((CPU, LLVMPIPE), ("RPC[127.0.0.1:50052]",), -1, {}, "", None),  # its own process decides
    ((CPU, LLVMPIPE), (), -1, {VK_DISABLE_FUSION: ""}, "", ""),  # the user's value stays
]


@pytest.mark.parametrize(("seen", "devices", "layers", "env", "want", "after"), CASES)
def test_fusion_is_turned_off_only_for_llvmpipe(
    monkeypatch: pytest.MonkeyPatch,
    seen: tuple[GgmlDeviceProps, ...],
    devices: tuple[str, ...],
    layers: int,
    env: dict[str, str],
    want: str,
    after: str | None,
) -> None:
    monkeypatch.setattr(ggml_devices, "list_ggml_devices", lambda: seen)
    env = dict(env)
    assert ggml_devices.software_vulkan_workaround(devices, layers, env) == want
    assert env.get(VK_DISABLE_FUSION) == after
