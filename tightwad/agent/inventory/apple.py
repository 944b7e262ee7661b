"""Apple GPUs from ``system_profiler SPDisplaysDataType -json`` and ``sysctl -n hw.memsize``.

Apple Silicon has unified memory: the GPU can use only part of RAM. Metal reports it as the
device's ``recommendedMaxWorkingSetSize`` (what llama.cpp's Metal backend budgets against),
which macOS sets to about 2/3 of RAM on machines with at most 36 GiB and about 3/4 above.
Without Metal at hand we apply that rule (``metal_working_set``); when ``llama-server
--list-devices`` is available the ggml cross-check replaces it with Metal's own number.
Discrete GPUs of Intel Macs report their VRAM (``spdisplays_vram``).
"""

from __future__ import annotations

import json
from typing import Any

from tightwad.agent.inventory.runner import CommandRunner
from tightwad.agent.inventory.units import parse_bytes
from tightwad.engine.device_facts import Backend, DeviceInfo, InventoryWarning, Vendor

__all__ = ["metal_working_set", "parse_memsize", "parse_system_profiler", "probe_apple"]

_PROFILER_ARGV = ("system_profiler", "SPDisplaysDataType", "-json")
_MEMSIZE_ARGV = ("sysctl", "-n", "hw.memsize")
_GIB = 1024**3
_SMALL_MACHINE = 36 * _GIB
_VENDORS = {
    "apple": Vendor.APPLE,
    "amd": Vendor.AMD,
    "ati": Vendor.AMD,
    "intel": Vendor.INTEL,
    "nvidia": Vendor.NVIDIA,
}


def metal_working_set(ram_bytes: int) -> int:
    """The GPU share of unified memory: 2/3 of RAM up to 36 GiB, 3/4 above."""
    if ram_bytes <= _SMALL_MACHINE:
        return ram_bytes * 2 // 3
    return ram_bytes * 3 // 4


def parse_memsize(text: str) -> int | None:
    value = text.strip()
    return int(value) if value.isdigit() else None


def parse_system_profiler(text: str, ram_bytes: int, hostname: str) -> list[DeviceInfo]:
    """GPUs of ``system_profiler SPDisplaysDataType -json``."""
    data = json.loads(text)
    entries = data.get("SPDisplaysDataType", []) if isinstance(data, dict) else []
    gpus = [e for e in entries if isinstance(e, dict)]
    return [_gpu(entry, index, ram_bytes, hostname) for index, entry in enumerate(gpus)]


def _vendor(entry: dict[str, Any]) -> Vendor:
    raw = str(entry.get("spdisplays_vendor") or entry.get("sppci_vendor") or "").lower()
    model = str(entry.get("sppci_model") or entry.get("_name") or "").lower()
    for key, vendor in _VENDORS.items():
        if key in raw or model.startswith(key):
            return vendor
    return Vendor.UNKNOWN


def _gpu(entry: dict[str, Any], index: int, ram_bytes: int, hostname: str) -> DeviceInfo:
    vram = parse_bytes(entry.get("spdisplays_vram") or entry.get("_spdisplays_vram"), "mib")
    memory = vram if vram else metal_working_set(ram_bytes)
    return DeviceInfo(
        id=f"metal:{hostname}:{index}",
        index=index,
        name=str(entry.get("sppci_model") or entry.get("_name") or "Apple GPU"),
        vendor=_vendor(entry),
        backend=Backend.METAL,
        memory_total_bytes=memory,
        memory_free_bytes=memory,
        compute_version=_metal_family(entry),
    )


def _metal_family(entry: dict[str, Any]) -> str:
    """``spdisplays_metal3`` -> ``metal3``; older macOS has ``spdisplays_metal*`` keys too."""
    raw = str(entry.get("spdisplays_mtlgpufamilysupport") or entry.get("spdisplays_metal") or "")
    return raw.removeprefix("spdisplays_")


async def probe_apple(
    runner: CommandRunner, timeout_s: float, hostname: str, ram_fallback: int
) -> tuple[list[DeviceInfo], list[InventoryWarning]]:
    profiler = await runner.run(_PROFILER_ARGV, timeout_s=timeout_s)
    if not profiler.found:
        return [], []
    if not profiler.ok:
        return [], [InventoryWarning("system_profiler", "SPDisplaysDataType query failed")]
    memsize = await runner.run(_MEMSIZE_ARGV, timeout_s=timeout_s)
    ram = (parse_memsize(memsize.stdout) if memsize.ok else None) or ram_fallback
    try:
        return parse_system_profiler(profiler.stdout, ram, hostname), []
    except ValueError as exc:
        return [], [InventoryWarning("system_profiler", f"unreadable JSON output: {exc}")]
