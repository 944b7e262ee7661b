"""Domain values of a host's inventory: its devices, host facts and warnings.

These are plain frozen dataclasses; the protobuf messages (``Device``, ``HostInfo``,
``Inventory``) are built from them only in ``tightwad.engine.facts_wire``.

Conventions, enforced by the parsers that build these values:

- ``DeviceInfo.id`` is stable across reboots and re-enumeration: a GPU UUID (``GPU-...``),
  a MIG instance UUID (``MIG-...``), ``pci:<domain:bus:dev.fn>``, ``metal:<host>:<n>`` for a
  built-in Apple GPU, or ``cpu:<host>``. Never an index alone.
- Unknown utilisation or temperature is ``None`` (the wire says -1).
- Memory is in bytes. ``memory_free_bytes`` is what can be allocated now; a GPU split into
  MIG instances reports 0 free because its memory belongs to its instances.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "Backend",
    "DeviceInfo",
    "HostFacts",
    "InventoryReport",
    "InventoryWarning",
    "Vendor",
]


class Vendor(enum.StrEnum):
    NVIDIA = "nvidia"
    AMD = "amd"
    APPLE = "apple"
    INTEL = "intel"
    CPU = "cpu"
    UNKNOWN = "unknown"


class Backend(enum.StrEnum):
    """The ggml backend a device is driven through."""

    CUDA = "cuda"
    ROCM = "rocm"
    METAL = "metal"
    VULKAN = "vulkan"
    CPU = "cpu"
    RPC = "rpc"
    SYCL = "sycl"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """One compute device of a host, as the vendor tool (and ggml) sees it."""

    id: str
    index: int
    name: str
    vendor: Vendor
    backend: Backend
    memory_total_bytes: int
    memory_free_bytes: int
    utilization_percent: float | None = None
    temperature_c: float | None = None
    driver_version: str = ""
    compute_version: str = ""
    pci_bus_id: str = ""
    parent_id: str = ""
    ggml_name: str = ""

    @property
    def is_gpu(self) -> bool:
        return self.vendor is not Vendor.CPU


@dataclass(frozen=True, slots=True)
class HostFacts:
    """Facts about the host itself (not its accelerators)."""

    hostname: str
    os: str
    arch: str
    cpu_cores: int
    ram_total_bytes: int
    ram_available_bytes: int
    cpu_model: str = ""
    agent_version: str = ""
    llama_cpp_version: str = ""
    rpc_protocol_version: str = ""


@dataclass(frozen=True, slots=True)
class InventoryWarning:
    """A problem or disagreement found while taking inventory; never fatal."""

    source: str
    message: str


@dataclass(frozen=True, slots=True)
class InventoryReport:
    """Everything one inventory pass found: host facts, devices (CPU included), warnings."""

    host: HostFacts
    devices: tuple[DeviceInfo, ...]
    warnings: tuple[InventoryWarning, ...] = field(default=())

    def device(self, device_id: str) -> DeviceInfo | None:
        """The device with this stable id, or ``None``."""
        return next((d for d in self.devices if d.id == device_id), None)
