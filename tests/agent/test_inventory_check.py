"""``tightwad-agent --check``: which backend each build is for, and the CPU-only-build warning."""

from __future__ import annotations

from pathlib import Path

from tightwad.agent.check import backend_items, backends_in, built_backend
from tightwad.agent.inventory import Backend, DeviceInfo, HostFacts, InventoryReport, Vendor

GIB = 1 << 30


def _report(*gpus: DeviceInfo) -> InventoryReport:
    host = HostFacts("box", "linux", "x86_64", 8, 32 * GIB, 30 * GIB)
    cpu = DeviceInfo("cpu:box", 0, "EPYC", Vendor.CPU, Backend.CPU, 32 * GIB, 30 * GIB)
    return InventoryReport(host=host, devices=(cpu, *gpus))


def _touch(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_backends_in_reads_the_ggml_library_names(tmp_path: Path) -> None:
    for name in ("libggml.so", "libggml-base.so", "libggml-cpu.so", "libggml-rpc.so"):
        _touch(tmp_path / name)
    assert backends_in(tmp_path) == []
    _touch(tmp_path / "libggml-vulkan.so")
    _touch(tmp_path / "libggml-cuda.so.1")
    assert backends_in(tmp_path) == ["cuda", "vulkan"]


def test_built_backend_prefers_build_env_then_libraries(tmp_path: Path) -> None:
    cached = _touch(tmp_path / "cache" / "cuda" / "bin" / "ggml-rpc-server")
    _touch(tmp_path / "cache" / "cuda" / "build.env", "backend=cuda\nversion=0.3.36\n")
    assert built_backend(cached) == "cuda"
    loose = _touch(tmp_path / "opt" / "bin" / "llama-server")
    _touch(tmp_path / "opt" / "bin" / "libggml-cpu.so")
    assert built_backend(loose) == "cpu"
    _touch(tmp_path / "opt" / "bin" / "libggml-hip.so")
    assert built_backend(loose) == "rocm"
    static = _touch(tmp_path / "static" / "llama-server")
    assert built_backend(static) == "unknown"


def test_a_gpu_host_with_a_cpu_only_build_is_told_how_to_rebuild() -> None:
    nv = DeviceInfo("GPU-a", 0, "NVIDIA H200", Vendor.NVIDIA, Backend.CUDA, 141 * GIB, 140 * GIB)
    items = backend_items(_report(nv), {"rpc_server": "cpu", "llama-cpp-python": "cuda"})
    warn, ok = items
    assert (warn.level, warn.what) == ("warn", "rpc_server backend")
    assert "nvidia GPU" in warn.detail and warn.fix.startswith("TIGHTWAD_BACKEND=cuda ")
    assert (ok.level, ok.detail) == ("ok", "cuda")


def test_a_software_vulkan_device_or_no_gpu_is_no_reason_to_warn() -> None:
    llvmpipe = DeviceInfo(
        "ggml:box:Vulkan0", 0, "llvmpipe", Vendor.UNKNOWN, Backend.VULKAN, 2 * GIB, 2 * GIB
    )
    for report in (_report(), _report(llvmpipe)):
        items = backend_items(report, {"llama_server": "cpu", "rpc_server": ""})
        assert [(i.level, i.detail) for i in items] == [("ok", "cpu")]
