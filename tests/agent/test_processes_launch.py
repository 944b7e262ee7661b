"""Device pinning of supervised processes: the visibility variables a child gets for the
devices of its spec (pure: specs and inventory devices in, environment out)."""

from __future__ import annotations

from tightwad.agent.processes import ProcessKind, ProcessSpec
from tightwad.agent.processes.launch import child_env, device_env, vulkan_index
from tightwad.engine.device_facts import Backend, DeviceInfo, Vendor

GIB = 1 << 30


def _dev(id_: str, backend: Backend, index: int, ggml_name: str = "") -> DeviceInfo:
    vendor = Vendor.CPU if backend is Backend.CPU else Vendor.UNKNOWN
    return DeviceInfo(id_, index, id_, vendor, backend, GIB, GIB, ggml_name=ggml_name)


DEVICES = {
    d.id: d
    for d in (
        _dev("cpu:h", Backend.CPU, 0, "CPU"),
        _dev("GPU-aaaa", Backend.CUDA, 0, "CUDA0"),
        _dev("ggml:h:Vulkan0", Backend.VULKAN, 0, "Vulkan0"),
        _dev("pci:0000:c1:00.0", Backend.VULKAN, 1, "Vulkan1"),
    )
}


def _spec(*device_ids: str) -> ProcessSpec:
    return ProcessSpec("rpc-x", ProcessKind.RPC_SERVER, device_ids=device_ids)


def test_a_vulkan_rpc_server_sees_only_its_device_and_no_cuda() -> None:
    env = device_env(_spec("pci:0000:c1:00.0"), DEVICES.get)
    assert env["GGML_VK_VISIBLE_DEVICES"] == "1"
    assert env["CUDA_VISIBLE_DEVICES"] == ""


def test_the_agents_own_vulkan_list_maps_ggml_numbers_to_physical_indices() -> None:
    # llvmpipe made visible on the agent (``GGML_VK_VISIBLE_DEVICES=2,0``): ggml's Vulkan0 is
    # physical device 2, Vulkan1 is 0.
    base = {"GGML_VK_VISIBLE_DEVICES": "2,0", "PATH": "/bin"}
    assert vulkan_index(DEVICES["ggml:h:Vulkan0"], base) == 2
    assert vulkan_index(DEVICES["pci:0000:c1:00.0"], base) == 0
    env = child_env(base, _spec("ggml:h:Vulkan0"), DEVICES.get)
    assert env["GGML_VK_VISIBLE_DEVICES"] == "2" and env["PATH"] == "/bin"
    assert vulkan_index(DEVICES["pci:0000:c1:00.0"], {}) == 1


def test_cpu_and_cuda_processes_hide_vulkan_and_the_spec_env_wins() -> None:
    assert device_env(_spec("cpu:h"), DEVICES.get)["GGML_VK_VISIBLE_DEVICES"] == ""
    cuda = device_env(_spec("GPU-aaaa"), DEVICES.get)
    assert (cuda["CUDA_VISIBLE_DEVICES"], cuda["GGML_VK_VISIBLE_DEVICES"]) == ("GPU-aaaa", "")
    spec = ProcessSpec(
        "rpc-x",
        ProcessKind.RPC_SERVER,
        device_ids=("cpu:h",),
        env={"GGML_VK_VISIBLE_DEVICES": "0"},
    )
    assert child_env({}, spec, DEVICES.get)["GGML_VK_VISIBLE_DEVICES"] == "0"


def test_a_process_without_devices_keeps_the_agents_visibility() -> None:
    base = {"GGML_VK_VISIBLE_DEVICES": "0"}
    spec = ProcessSpec("engine-x", ProcessKind.ENGINE_HOST, args=("--devices", "Vulkan0"))
    assert child_env(base, spec, DEVICES.get)["GGML_VK_VISIBLE_DEVICES"] == "0"
    assert "GGML_VK_VISIBLE_DEVICES" not in device_env(spec, DEVICES.get)


def test_a_process_pinned_to_llvmpipe_runs_without_ggml_vulkans_fused_kernels() -> None:
    # Mesa's software Vulkan device crashes in them (tightwad.engine.ggml_devices); a real
    # Vulkan GPU keeps them.
    soft = DeviceInfo(
        "ggml:h:Vulkan0", 0, "llvmpipe (LLVM 15.0.6, 256 bits)", Vendor.UNKNOWN,
        Backend.VULKAN, GIB, GIB, ggml_name="Vulkan0",
    )  # fmt: skip
    radeon = DeviceInfo(
        "pci:0000:c1:00.0", 1, "AMD Radeon RX 6700 XT (RADV NAVI22)", Vendor.AMD,
        Backend.VULKAN, GIB, GIB, ggml_name="Vulkan1",
    )  # fmt: skip
    lookup = {d.id: d for d in (soft, radeon)}.get
    assert device_env(_spec(soft.id), lookup)["GGML_VK_DISABLE_FUSION"] == "1"
    assert "GGML_VK_DISABLE_FUSION" not in device_env(_spec(radeon.id), lookup)
    assert "GGML_VK_DISABLE_FUSION" not in device_env(_spec("GPU-aaaa"), DEVICES.get)
