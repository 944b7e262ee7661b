"""The host itself: CPU, RAM, OS, and the always-present CPU device (``cpu:<hostname>``).

On Linux RAM comes from ``/proc/meminfo`` (``MemTotal``, ``MemAvailable``) and the CPU model from
``/proc/cpuinfo``; elsewhere (macOS) from ``sysctl``. The CPU device's memory is the host's RAM:
total and available now.
"""

from __future__ import annotations

import os
import platform
import socket
from dataclasses import dataclass

from tightwad.agent.inventory.units import parse_bytes
from tightwad.engine.device_facts import Backend, DeviceInfo, HostFacts, Vendor

__all__ = ["CpuFacts", "cpu_device", "parse_cpuinfo", "parse_meminfo"]


@dataclass(frozen=True, slots=True)
class CpuFacts:
    model: str
    cores: int


def parse_meminfo(text: str) -> tuple[int, int]:
    """``(MemTotal, MemAvailable)`` in bytes; ``MemFree`` when ``MemAvailable`` is absent."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        size = parse_bytes(value.strip(), "kib") if sep else None
        if size is not None:
            fields[key.strip()] = size
    total = fields.get("MemTotal", 0)
    return total, fields.get("MemAvailable", fields.get("MemFree", total))


def parse_cpuinfo(text: str) -> CpuFacts:
    """Model name and logical processor count of ``/proc/cpuinfo`` (x86 and ARM spellings)."""
    model, count = "", 0
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "processor":
            count += 1
        elif key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
    return CpuFacts(model=model, cores=count or (os.cpu_count() or 1))


def host_facts(cpu: CpuFacts, ram_total: int, ram_available: int, agent_version: str) -> HostFacts:
    return HostFacts(
        hostname=socket.gethostname(),
        os=platform.system().lower(),
        arch=platform.machine(),
        cpu_cores=cpu.cores,
        ram_total_bytes=ram_total,
        ram_available_bytes=ram_available,
        cpu_model=cpu.model,
        agent_version=agent_version,
    )


def cpu_device(host: HostFacts) -> DeviceInfo:
    return DeviceInfo(
        id=f"cpu:{host.hostname}",
        index=0,
        name=host.cpu_model or f"{host.arch} CPU",
        vendor=Vendor.CPU,
        backend=Backend.CPU,
        memory_total_bytes=host.ram_total_bytes,
        memory_free_bytes=host.ram_available_bytes,
        ggml_name="CPU",
    )
