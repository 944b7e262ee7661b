"""collect_inventory end to end: recorded tool outputs through ReplayRunner, and this machine."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tightwad.agent.inventory import (
    Backend,
    CommandResult,
    InventoryReport,
    ReplayRunner,
    SubprocessRunner,
    Vendor,
    collect_inventory,
)
from tightwad.engine.facts_wire import inventory_from_proto, inventory_to_proto

FIXTURES = Path(__file__).parent / "fixtures"
PROC = FIXTURES / "proc"
MIB = 1024**2
GIB = 1024**3
LLAMA = Path("/opt/llama/llama-server")

NV_CSV = (
    "nvidia-smi --query-gpu=index,uuid,name,pci.bus_id,memory.total,memory.free,"
    "utilization.gpu,temperature.gpu,driver_version,compute_cap --format=csv,noheader,nounits"
)
NV_XML = "nvidia-smi -q -x"
NV_LIST = "nvidia-smi -L"
ROCM_SMI = (
    "rocm-smi --showid --showproductname --showmeminfo vram --showuse --showtemp --showbus "
    "--showuniqueid --showdriverversion --json"
)
ROCMINFO = "rocminfo"
AMD_STATIC = "amd-smi static --json"
AMD_METRIC = "amd-smi metric --json"
PROFILER = "system_profiler SPDisplaysDataType -json"
MEMSIZE = "sysctl -n hw.memsize"
LIST_DEVICES = f"{LLAMA} --list-devices"
VERSION = f"{LLAMA} --version"


def ok(name: str) -> CommandResult:
    return CommandResult.success((FIXTURES / name).read_text())


def nvidia_two() -> dict[str, CommandResult]:
    return {
        NV_CSV: ok("nvidia_csv_two.txt"),
        NV_LIST: CommandResult.success(
            "GPU 0: NVIDIA GeForce RTX 4090 (UUID: GPU-3f2a1c7e-8b4d-4e6f-9a01-5c7d2e9b1a10)\n"
            "GPU 1: NVIDIA GeForce RTX 3090 (UUID: GPU-9c1e5d2b-0a7f-4b3c-8e6d-1f2a3b4c5d6e)\n"
        ),
    }


async def collect(
    answers: dict[str, CommandResult], **kwargs: Any
) -> tuple[InventoryReport, list[str]]:
    runner = ReplayRunner(answers)
    report = await collect_inventory(runner, proc_root=PROC, **kwargs)
    return report, runner.calls


async def test_mixed_host_nvidia_amd_and_cpu() -> None:
    answers = {**nvidia_two(), ROCM_SMI: ok("rocm_smi_v6.json"), ROCMINFO: ok("rocminfo.txt")}
    report, calls = await collect(answers)
    by_vendor = {v: [d for d in report.devices if d.vendor is v] for v in Vendor}
    assert len(by_vendor[Vendor.NVIDIA]) == 2 and len(by_vendor[Vendor.AMD]) == 2
    (cpu,) = by_vendor[Vendor.CPU]
    assert cpu.id == f"cpu:{report.host.hostname}" and cpu.backend is Backend.CPU
    assert (cpu.memory_total_bytes, cpu.memory_free_bytes) == (65774196 * 1024, 52428800 * 1024)
    assert report.host.cpu_cores == 4 and report.host.ram_total_bytes == 65774196 * 1024
    assert {d.compute_version for d in by_vendor[Vendor.AMD]} == {"gfx1100", "gfx1030"}
    assert len({d.id for d in report.devices}) == len(report.devices)
    assert NV_XML not in calls  # nothing was N/A, no MIG: the CSV was enough
    assert report.warnings == ()


async def test_no_tools_at_all_still_reports_the_cpu() -> None:
    report, calls = await collect({})
    assert [d.vendor for d in report.devices] == [Vendor.CPU]
    assert report.warnings == ()
    assert NV_CSV in calls and AMD_STATIC in calls and ROCM_SMI in calls and PROFILER in calls


@pytest.mark.parametrize(
    "error",
    [
        "Failed to initialize NVML: Driver/library version mismatch\nNVML library version: 550.54",
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure "
        "that the latest NVIDIA driver is installed and running.",
    ],
)
async def test_broken_nvidia_driver_is_a_warning(error: str) -> None:
    answers = {NV_CSV: CommandResult.failure(error, returncode=9)}
    report, calls = await collect(answers)
    assert [d.vendor for d in report.devices] == [Vendor.CPU]
    (warning,) = report.warnings
    assert warning.source == "nvidia-smi" and error.splitlines()[0][:40] in warning.message
    assert NV_XML not in calls


async def test_na_fields_fall_back_to_xml() -> None:
    answers = {NV_CSV: ok("nvidia_csv_na.txt"), NV_XML: ok("nvidia_q_a10.xml")}
    report, calls = await collect(answers)
    gpu = report.device("GPU-1b724e78-eef5-4163-d43c-e4da15d41176")
    assert NV_XML in calls
    assert gpu is not None and gpu.memory_free_bytes == 22524 * MIB and gpu.temperature_c == 38.0


async def test_permission_failure_of_the_query_uses_xml() -> None:
    answers = {
        NV_CSV: CommandResult.failure("Insufficient Permissions", returncode=4),
        NV_XML: ok("nvidia_q_a10.xml"),
    }
    report, _ = await collect(answers)
    assert [d.name for d in report.devices if d.vendor is Vendor.NVIDIA] == ["NVIDIA A10"]


async def test_both_nvidia_queries_failing_is_a_warning() -> None:
    answers = {
        NV_CSV: CommandResult.failure("Insufficient Permissions", returncode=4),
        NV_XML: CommandResult.failure("Insufficient Permissions", returncode=4),
    }
    report, _ = await collect(answers)
    assert [d.vendor for d in report.devices] == [Vendor.CPU]
    assert "Insufficient Permissions" in report.warnings[0].message


async def test_mig_instances_through_collect() -> None:
    answers = {
        NV_CSV: ok("nvidia_csv_mig.txt"),
        NV_LIST: ok("nvidia_L_mig.txt"),
        NV_XML: ok("nvidia_q_mig.xml"),
    }
    report, _ = await collect(answers)
    migs = [d for d in report.devices if d.parent_id]
    assert [d.memory_free_bytes for d in migs] == [19955 * MIB, 9849 * MIB]
    parent = report.device("GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77")
    assert parent is not None and parent.memory_free_bytes == 0


async def test_amd_smi_is_preferred_over_rocm_smi() -> None:
    answers = {
        AMD_STATIC: ok("amd_smi_static.json"),
        AMD_METRIC: ok("amd_smi_metric.json"),
        ROCM_SMI: ok("rocm_smi_v6.json"),
    }
    report, calls = await collect(answers)
    assert [d.name for d in report.devices if d.vendor is Vendor.AMD] == ["AMD Instinct MI300X"] * 2
    assert ROCM_SMI not in calls


async def test_broken_rocm_smi_output_is_a_warning() -> None:
    report, _ = await collect({ROCM_SMI: CommandResult.success("{not json")})
    assert [d.vendor for d in report.devices] == [Vendor.CPU]
    assert report.warnings[0].source == "rocm-smi"


async def test_apple_host() -> None:
    answers = {
        PROFILER: ok("system_profiler_m2max.json"),
        MEMSIZE: CommandResult.success(f"{64 * GIB}\n"),
    }
    report, _ = await collect(answers)
    (gpu,) = [d for d in report.devices if d.vendor is Vendor.APPLE]
    assert gpu.backend is Backend.METAL and gpu.memory_total_bytes == 48 * GIB


async def test_ggml_cross_check_flags_a_cpu_only_build() -> None:
    answers = {
        **nvidia_two(),
        LIST_DEVICES: ok("list_devices_none.txt"),
        VERSION: CommandResult(True, 0, "", "version: 6543 (1a2b3c4d)\nbuilt with cc"),
    }
    report, _ = await collect(answers, llama_server=LLAMA)
    assert report.host.llama_cpp_version == "b6543-1a2b3c4d"
    unseen = [w for w in report.warnings if w.source == "ggml"]
    assert len(unseen) == 2 and all("not by llama.cpp" in w.message for w in unseen)
    assert all(not d.ggml_name for d in report.devices if d.vendor is Vendor.NVIDIA)


async def test_ggml_cross_check_names_the_devices_of_a_mixed_host() -> None:
    answers = {
        NV_CSV: CommandResult.success(
            "0, GPU-a, NVIDIA GeForce RTX 4090, 00000000:01:00.0, 24564, 22500, 1, 40, 550.1, 8.9\n"
        ),
        ROCM_SMI: ok("rocm_smi_v6.json"),
        ROCMINFO: ok("rocminfo.txt"),
        LIST_DEVICES: ok("list_devices_nvidia_amd.txt"),
    }
    report, _ = await collect(answers, llama_server=LLAMA)
    names = {d.id: d.ggml_name for d in report.devices}
    assert names["GPU-a"] == "CUDA0" and names["pci:0000:03:00.0"] == "ROCm0"
    assert names[f"cpu:{report.host.hostname}"] == "CPU"
    (warning,) = report.warnings  # the RX 6800 XT: rocm-smi sees it, this ggml build does not
    assert "pci:0000:0a:00.0" in warning.message


async def test_rpc_banner_gives_the_protocol_version() -> None:
    banner = (FIXTURES / "rpc_server_banner.txt").read_text()
    report, _ = await collect(nvidia_two(), rpc_server_banner=banner)
    assert report.host.rpc_protocol_version == "3.0.0"


async def test_missing_llama_server_is_a_warning_not_a_crash() -> None:
    report, _ = await collect({}, llama_server=LLAMA)
    assert [w.source for w in report.warnings] == ["ggml"]


async def test_inventory_survives_the_wire() -> None:
    answers = {**nvidia_two(), ROCM_SMI: ok("rocm_smi_v6.json"), ROCMINFO: ok("rocminfo.txt")}
    report, _ = await collect(answers, rpc_server_banner="Starting RPC server v3.0.0\n")
    wire = inventory_to_proto(report)
    assert wire.devices[0].utilization_percent == -1.0  # the CPU: unknown on the wire is -1
    back = inventory_from_proto(wire)
    assert back.devices == report.devices and back.warnings == report.warnings
    assert back.host == replace(report.host, cpu_model="")  # the wire has no CPU model


async def test_subprocess_runner_missing_binary_and_timeout() -> None:
    runner = SubprocessRunner()
    missing = await runner.run(["tightwad-no-such-tool-xyz"], timeout_s=5)
    assert not missing.found and not missing.ok
    slow = await runner.run(["sleep", "5"], timeout_s=0.2)
    assert slow.timed_out and not slow.ok
    echo = await runner.run(["echo", "hi"], timeout_s=5)
    assert echo.ok and echo.stdout == "hi\n"


def _built_llama_server() -> Path | None:
    for candidate in sorted(Path.home().glob(".cache/tightwad/llama.cpp/*/*/bin/llama-server")):
        return candidate
    found = shutil.which("llama-server")
    return Path(found) if found else None


async def test_real_inventory_of_this_machine() -> None:
    """Whatever this host has, the CPU and its RAM are reported and nothing crashes."""
    llama = _built_llama_server()
    report = await asyncio.wait_for(
        collect_inventory(SubprocessRunner(), llama_server=llama), timeout=60
    )
    cpu = report.device(f"cpu:{report.host.hostname}")
    assert cpu is not None and cpu.backend is Backend.CPU
    assert report.host.ram_total_bytes > 256 * MIB and report.host.cpu_cores >= 1
    assert 0 < cpu.memory_free_bytes <= cpu.memory_total_bytes == report.host.ram_total_bytes
    if llama is not None:
        assert report.host.llama_cpp_version
