"""Pure parsers of the vendor tools' outputs, on fixtures written from their documented formats."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tightwad.agent.inventory import (
    Backend,
    DeviceInfo,
    GgmlDevice,
    Vendor,
    cross_check,
    metal_working_set,
    parse_amd_smi,
    parse_cpuinfo,
    parse_ggml_devices_json,
    parse_list_devices,
    parse_meminfo,
    parse_nvidia_csv,
    parse_nvidia_list,
    parse_nvidia_xml,
    parse_rocm_smi,
    parse_rocminfo,
    parse_rpc_server_banner,
    parse_system_profiler,
)
from tightwad.agent.inventory.amd import join_rocminfo
from tightwad.agent.inventory.ggml import parse_llama_version
from tightwad.agent.inventory.nvidia import apply_mig, merge_nvidia, needs_xml
from tightwad.agent.inventory.units import normalize_pci, parse_bytes

FIXTURES = Path(__file__).parent / "fixtures"
MIB = 1024**2
GIB = 1024**3


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_nvidia_csv_two_gpus_keyed_by_uuid() -> None:
    a, b = parse_nvidia_csv(fixture("nvidia_csv_two.txt"))
    assert a.id == "GPU-3f2a1c7e-8b4d-4e6f-9a01-5c7d2e9b1a10"
    assert (a.name, a.vendor, a.backend) == ("NVIDIA GeForce RTX 4090", Vendor.NVIDIA, Backend.CUDA)
    assert (a.memory_total_bytes, a.memory_free_bytes) == (24564 * MIB, 23012 * MIB)
    assert (a.utilization_percent, a.temperature_c) == (7.0, 41.0)
    assert (a.driver_version, a.compute_version, a.pci_bus_id) == ("550.120", "8.9", "0000:01:00.0")
    assert (b.index, b.pci_bus_id, b.compute_version) == (1, "0000:4c:00.0", "8.6")
    assert not needs_xml(fixture("nvidia_csv_two.txt"))


def test_nvidia_na_fields_are_filled_from_the_xml_report() -> None:
    csv_text = fixture("nvidia_csv_na.txt")
    assert needs_xml(csv_text)
    (partial,) = parse_nvidia_csv(csv_text)
    assert partial.memory_free_bytes == 0 and partial.utilization_percent is None
    (merged,) = merge_nvidia([partial], parse_nvidia_xml(fixture("nvidia_q_a10.xml")))
    assert merged.id == "GPU-1b724e78-eef5-4163-d43c-e4da15d41176"
    assert merged.memory_free_bytes == 22524 * MIB
    assert (merged.utilization_percent, merged.temperature_c) == (2.0, 38.0)
    assert merged.compute_version == "8.6"  # kept from the CSV: the XML has none


def test_nvidia_xml_alone_gives_the_devices() -> None:
    (gpu,) = parse_nvidia_xml(fixture("nvidia_q_a10.xml"))
    assert (gpu.id, gpu.pci_bus_id, gpu.driver_version) == (
        "GPU-1b724e78-eef5-4163-d43c-e4da15d41176",
        "0000:17:00.0",
        "535.54.03",
    )
    assert gpu.memory_total_bytes == 23028 * MIB


def test_mig_instances_are_devices_with_parent_and_the_parent_has_no_free_memory() -> None:
    gpus = parse_nvidia_csv(fixture("nvidia_csv_mig.txt"))
    listings = parse_nvidia_list(fixture("nvidia_L_mig.txt"))
    assert [m.profile for m in listings] == ["3g.20gb", "2g.10gb"]
    parent, big, small = apply_mig(gpus, listings, fixture("nvidia_q_mig.xml"))
    assert parent.id == "GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77" and parent.memory_free_bytes == 0
    assert big.id == "MIG-c6d4f1ef-42e4-5de3-91c7-45d71c87eb3f"
    assert big.parent_id == parent.id and small.parent_id == parent.id
    assert (big.memory_total_bytes, big.memory_free_bytes) == (19968 * MIB, 19955 * MIB)
    assert small.memory_total_bytes == 9856 * MIB
    assert big.name == "NVIDIA A100-SXM4-40GB MIG 3g.20gb"


def test_mig_without_xml_uses_the_profile_size() -> None:
    gpus = parse_nvidia_csv(fixture("nvidia_csv_mig.txt"))
    _, big, _ = apply_mig(gpus, parse_nvidia_list(fixture("nvidia_L_mig.txt")), None)
    assert big.memory_total_bytes == 20 * GIB


@pytest.mark.parametrize("name", ["rocm_smi_v6.json", "rocm_smi_v5.json"])
def test_rocm_smi_key_variants(name: str) -> None:
    devices = parse_rocm_smi(fixture(name))
    gpu = next(d for d in devices if d.pci_bus_id == "0000:0a:00.0")
    assert gpu.id == "pci:0000:0a:00.0" and gpu.vendor is Vendor.AMD and gpu.backend is Backend.ROCM
    assert gpu.memory_total_bytes == 17163091968
    assert gpu.memory_free_bytes < gpu.memory_total_bytes
    assert "0x" not in gpu.name and "6800" in gpu.name
    assert gpu.temperature_c is not None and gpu.utilization_percent is not None


def test_rocm_smi_newer_fields_and_driver() -> None:
    xtx, _ = parse_rocm_smi(fixture("rocm_smi_v6.json"))
    assert xtx.memory_free_bytes == 25753026560 - 1130496000
    assert (xtx.utilization_percent, xtx.temperature_c, xtx.driver_version) == (3.0, 39.0, "6.3.6")


def test_rocminfo_gpu_agents_join_by_pci_location() -> None:
    agents = parse_rocminfo(fixture("rocminfo.txt"))
    assert [(a.gfx, a.pci_bus_id) for a in agents] == [
        ("gfx1100", "0000:03:00.0"),
        ("gfx1030", "0000:0a:00.0"),
    ]
    reversed_cards = list(reversed(parse_rocm_smi(fixture("rocm_smi_v6.json"))))
    joined = join_rocminfo(reversed_cards, agents)
    assert [(d.pci_bus_id, d.compute_version) for d in joined] == [
        ("0000:0a:00.0", "gfx1030"),
        ("0000:03:00.0", "gfx1100"),
    ]
    assert joined[1].name == "Radeon RX 7900 XTX"


def test_amd_smi_static_and_metric() -> None:
    a, b = parse_amd_smi(fixture("amd_smi_static.json"), fixture("amd_smi_metric.json"))
    assert a.id == "pci:0000:0c:00.0" and a.name == "AMD Instinct MI300X"
    assert (a.compute_version, a.driver_version) == ("gfx942", "6.7.0")
    assert (a.memory_total_bytes, a.memory_free_bytes) == (196592 * MIB, 176112 * MIB)
    assert (a.utilization_percent, a.temperature_c) == (5.0, 42.0)  # edge N/A -> hotspot
    assert b.memory_free_bytes == (196592 - 288) * MIB and b.temperature_c == 36.0


def test_amd_smi_static_only_uses_the_vram_size() -> None:
    a, _ = parse_amd_smi(fixture("amd_smi_static.json"), None)
    assert a.memory_total_bytes == a.memory_free_bytes == 196592 * MIB


@pytest.mark.parametrize(
    ("ram_gib", "share_gib"), [(16, 16 * 2 / 3), (36, 24), (64, 48), (192, 144)]
)
def test_metal_working_set_rule(ram_gib: int, share_gib: float) -> None:
    assert metal_working_set(ram_gib * GIB) == pytest.approx(share_gib * GIB, abs=1)


def test_apple_unified_memory_reports_the_usable_share() -> None:
    (gpu,) = parse_system_profiler(fixture("system_profiler_m2max.json"), 64 * GIB, "mac")
    assert (gpu.id, gpu.name, gpu.vendor, gpu.backend) == (
        "metal:mac:0",
        "Apple M2 Max",
        Vendor.APPLE,
        Backend.METAL,
    )
    assert gpu.memory_total_bytes == 48 * GIB and gpu.compute_version == "metal3"


def test_proc_meminfo_and_cpuinfo() -> None:
    total, available = parse_meminfo(fixture("proc/meminfo"))
    assert (total, available) == (65774196 * 1024, 52428800 * 1024)
    cpu = parse_cpuinfo(fixture("proc/cpuinfo"))
    assert (cpu.model, cpu.cores) == ("AMD Ryzen 9 7950X 16-Core Processor", 4)


def test_list_devices_lines_and_cpu_only_build() -> None:
    devices = parse_list_devices(fixture("list_devices_nvidia_amd.txt"))
    assert devices is not None
    assert [(d.name, d.backend) for d in devices] == [
        ("CUDA0", Backend.CUDA),
        ("ROCm0", Backend.ROCM),
        ("Vulkan0", Backend.VULKAN),
    ]
    assert devices[0].memory_free_bytes == 22490 * MIB
    assert parse_list_devices(fixture("list_devices_none.txt")) == []
    assert parse_list_devices("error: unknown argument") is None


def test_rpc_server_banners_new_and_old() -> None:
    new = parse_rpc_server_banner(fixture("rpc_server_banner.txt"))
    assert new is not None and new.protocol_version == "3.0.0"
    assert new.endpoint == "10.0.0.5:50052" and [d.name for d in new.devices] == ["CUDA0"]
    old = parse_rpc_server_banner(fixture("rpc_server_banner_old.txt"))
    assert old is not None and old.devices == () and old.backend_memory_bytes == 24080 * MIB
    assert parse_rpc_server_banner("hello") is None


def test_llama_version() -> None:
    text = "version: 6543 (1a2b3c4d)\nbuilt with cc (GCC) 13.2.0 for x86_64-linux-gnu"
    assert parse_llama_version(text) == "b6543-1a2b3c4d"


def _gpu(id_: str, name: str, vendor: Vendor, total_mib: int, free_mib: int) -> DeviceInfo:
    backend = {Vendor.NVIDIA: Backend.CUDA, Vendor.AMD: Backend.ROCM}[vendor]
    return DeviceInfo(id_, 0, name, vendor, backend, total_mib * MIB, free_mib * MIB)


def test_cross_check_names_devices_and_prefers_the_native_backend() -> None:
    devices = [
        _gpu("GPU-a", "NVIDIA GeForce RTX 4090", Vendor.NVIDIA, 24564, 22500),
        _gpu("pci:0000:03:00.0", "Radeon RX 7900 XTX", Vendor.AMD, 24560, 23450),
    ]
    ggml = parse_list_devices(fixture("list_devices_nvidia_amd.txt")) or []
    named, warnings = cross_check(devices, ggml)
    assert [(d.id, d.ggml_name, d.backend) for d in named] == [
        ("GPU-a", "CUDA0", Backend.CUDA),
        ("pci:0000:03:00.0", "ROCm0", Backend.ROCM),
    ]
    assert warnings == []


def test_cross_check_identical_gpus_are_told_apart_by_free_memory() -> None:
    devices = [
        _gpu("GPU-busy", "NVIDIA GeForce RTX 3090", Vendor.NVIDIA, 24576, 4000),
        _gpu("GPU-idle", "NVIDIA GeForce RTX 3090", Vendor.NVIDIA, 24576, 24000),
    ]
    listing = (
        "Available devices:\n"
        "  CUDA0: NVIDIA GeForce RTX 3090 (24135 MiB, 23800 MiB free)\n"
        "  CUDA1: NVIDIA GeForce RTX 3090 (24135 MiB, 3900 MiB free)\n"
    )
    named, _ = cross_check(devices, parse_list_devices(listing) or [])
    assert {d.id: d.ggml_name for d in named} == {"GPU-busy": "CUDA1", "GPU-idle": "CUDA0"}


def test_cross_check_warns_when_ggml_does_not_see_a_gpu_and_vice_versa() -> None:
    devices = [_gpu("GPU-a", "NVIDIA GeForce RTX 4090", Vendor.NVIDIA, 24564, 22500)]
    _, cpu_only = cross_check(devices, parse_list_devices(fixture("list_devices_none.txt")) or [])
    assert len(cpu_only) == 1 and "GPU-a" in cpu_only[0].message
    assert "not by llama.cpp" in cpu_only[0].message
    ghost = parse_list_devices(
        "Available devices:\n  ROCm0: Radeon PRO W7900 (46064 MiB, 46000 MiB free)\n"
    )
    _, extra = cross_check(devices, ghost or [])
    messages = " | ".join(w.message for w in extra)
    assert "ROCm0" in messages and "no vendor tool" in messages and "GPU-a" in messages


def test_cross_check_replaces_the_apple_estimate_with_metal_numbers() -> None:
    (gpu,) = parse_system_profiler(fixture("system_profiler_m2max.json"), 64 * GIB, "mac")
    (named,), warnings = cross_check(
        [gpu], parse_list_devices(fixture("list_devices_metal.txt")) or []
    )
    assert named.ggml_name == "Metal" and named.memory_total_bytes == 49152 * MIB
    assert warnings == []


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("00000000:4C:00.0", "0000:4c:00.0"), ("0a:00.0", "0000:0a:00.0"), ("[N/A]", "")],
)
def test_normalize_pci(raw: str, expected: str) -> None:
    assert normalize_pci(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("24564 MiB", 24564 * MIB),
        ("8 GB", 8 * GIB),
        ({"value": 2, "unit": "GB"}, 2 * GIB),
        ("[N/A]", None),
        ("N/A", None),
    ],
)
def test_parse_bytes(raw: object, expected: int | None) -> None:
    assert parse_bytes(raw) == expected


LAVAPIPE_JSON = (
    '{"name": "CPU", "description": "AMD EPYC", "type": "cpu", "memory_free_bytes": 1, '
    '"memory_total_bytes": 2, "device_id": ""}\n'
    "ggml_vulkan: Found 1 Vulkan devices:\n"
    '{"name": "Vulkan0", "description": "llvmpipe (LLVM 15.0.6, 256 bits)", "type": "gpu", '
    '"memory_free_bytes": 2147483648, "memory_total_bytes": 2147483648, "device_id": ""}\n'
)


def test_parse_ggml_devices_json_keeps_gpus_only() -> None:
    (vk,) = parse_ggml_devices_json(LAVAPIPE_JSON) or []
    assert (vk.name, vk.backend, vk.memory_total_bytes) == ("Vulkan0", Backend.VULKAN, 2 * GIB)
    assert parse_ggml_devices_json(LAVAPIPE_JSON.splitlines()[0]) == []  # a CPU-only build
    assert parse_ggml_devices_json("") is None  # no binding: nothing to cross-check with


def test_cross_check_reports_a_device_only_ggml_sees() -> None:
    cpu = DeviceInfo("cpu:box", 0, "AMD EPYC", Vendor.CPU, Backend.CPU, GIB, GIB, ggml_name="CPU")
    devices, warnings = cross_check([cpu], parse_ggml_devices_json(LAVAPIPE_JSON) or [])
    assert warnings == []  # Vulkan has no vendor tool to disagree with
    vk = devices[1]
    assert (vk.id, vk.ggml_name, vk.backend, vk.vendor) == (
        "ggml:box:Vulkan0",
        "Vulkan0",
        Backend.VULKAN,
        Vendor.UNKNOWN,
    )
    assert vk.is_gpu and vk.memory_free_bytes == vk.memory_total_bytes == 2 * GIB
    arc = GgmlDevice("SYCL0", "Intel(R) Arc(TM) A770", 16 * GIB, 15 * GIB, "0000:03:00.0")
    (_, sycl), _ = cross_check([cpu], [arc])
    assert (sycl.id, sycl.vendor, sycl.pci_bus_id) == (
        "pci:0000:03:00.0",
        Vendor.INTEL,
        arc.device_id,
    )


def test_cross_check_matches_by_pci_id_before_names() -> None:
    nv = replace(
        _gpu("GPU-a", "NVIDIA H200", Vendor.NVIDIA, 143771, 143000), pci_bus_id="0000:4c:00.0"
    )
    odd = GgmlDevice("Vulkan0", "some renamed device", 100 * GIB, 90 * GIB, "0000:4c:00.0")
    (named,), warnings = cross_check([nv], [odd])
    assert named.ggml_name == "Vulkan0" and named.id == "GPU-a"
    assert len(warnings) == 1 and "vendor tool says" in warnings[0].message  # memory disagrees
