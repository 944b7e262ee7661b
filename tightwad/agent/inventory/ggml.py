"""What llama.cpp (ggml) itself sees, and the cross-check against the vendor tools.

Sources: ``python -m tightwad.engine.ggml_devices`` (one JSON object per device of the
installed binding's ggml, with the PCI bus id where the backend knows one), ``llama-server
--list-devices`` (``Available devices:`` then lines like
``  CUDA0: NVIDIA GeForce RTX 4090 (24080 MiB, 23500 MiB free)``; ``(none)`` for a CPU-only
build) and the banner ``ggml-rpc-server`` prints on start (``Starting RPC server v3.0.0``,
``endpoint``, then ``Devices:`` in the same line format, or ``backend memory`` in old builds).

The cross-check matches ggml's local devices to vendor-tool devices (same vendor family, then
name and memory, order only between equals), sets ``ggml_name``, and warns about every GPU one
side sees and the other does not: a vendor GPU with no ggml device will not be used by this
llama.cpp build (a CPU-only or wrong-backend build), which placement must know. A GPU only
ggml sees (Vulkan, SYCL, or a CUDA/ROCm device whose vendor tool is missing) is reported as a
device of its own, with ggml's memory, keyed ``pci:<bus id>`` where ggml gives one, else
``ggml:<host>:<ggml name>``; only the native backends (CUDA, ROCm, Metal) warn then, since their
vendor tool should have seen it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace

from tightwad.engine.device_facts import Backend, DeviceInfo, InventoryWarning, Vendor

__all__ = [
    "GgmlDevice",
    "RpcServerBanner",
    "cross_check",
    "parse_ggml_devices_json",
    "parse_list_devices",
    "parse_llama_version",
    "parse_rpc_server_banner",
]

SOURCE = "ggml"
_MIB = 1024**2
_DEVICE_LINE = re.compile(r"^\s+(\S+): (.*) \((\d+) MiB, (\d+) MiB free\)\s*$")
_BANNER = re.compile(r"Starting RPC server v(\d+\.\d+\.\d+)")
_ENDPOINT = re.compile(r"^\s*endpoint\s*:\s*(\S+)", re.MULTILINE)
_BACKEND_MEMORY = re.compile(r"^\s*backend memory\s*:\s*(\d+) MB", re.MULTILINE)
_SEMVER = re.compile(r"version:\s*(\d+\.\d+\.\d+[\w.-]*)\s*\(.*?commit\s+([0-9a-f]+)\)")
_VERSION = re.compile(r"^version:\s*(\d+)\s*\(([0-9a-f]+)\)", re.MULTILINE)
_PREFIXES: tuple[tuple[str, Backend], ...] = (
    ("CUDA", Backend.CUDA),
    ("ROCm", Backend.ROCM),
    ("HIP", Backend.ROCM),
    ("Metal", Backend.METAL),
    ("MTL", Backend.METAL),
    ("Vulkan", Backend.VULKAN),
    ("SYCL", Backend.SYCL),
    ("RPC", Backend.RPC),
    ("CPU", Backend.CPU),
)
_VENDORS_OF: dict[Backend, frozenset[Vendor]] = {
    Backend.CUDA: frozenset({Vendor.NVIDIA}),
    Backend.ROCM: frozenset({Vendor.AMD}),
    Backend.METAL: frozenset({Vendor.APPLE, Vendor.AMD, Vendor.INTEL}),
    Backend.SYCL: frozenset({Vendor.INTEL}),
    Backend.VULKAN: frozenset({Vendor.NVIDIA, Vendor.AMD, Vendor.INTEL, Vendor.APPLE}),
}
# When one GPU is reachable through several backends, the native one names it.
_PREFERENCE = (Backend.CUDA, Backend.ROCM, Backend.METAL, Backend.SYCL, Backend.VULKAN)


@dataclass(frozen=True, slots=True)
class GgmlDevice:
    """One device line of ggml: ``name: description (total MiB, free MiB free)``."""

    name: str
    description: str
    memory_total_bytes: int
    memory_free_bytes: int
    device_id: str = ""  # PCI bus id "0000:c1:00.0" where ggml gives one

    @property
    def backend(self) -> Backend:
        return next((b for p, b in _PREFIXES if self.name.startswith(p)), Backend.UNKNOWN)

    @property
    def is_local_gpu(self) -> bool:
        return self.backend in _VENDORS_OF


def _device_lines(text: str) -> list[GgmlDevice]:
    devices = []
    for line in text.splitlines():
        if match := _DEVICE_LINE.match(line):
            name, description, total, free = match.groups()
            devices.append(GgmlDevice(name, description, int(total) * _MIB, int(free) * _MIB))
    return devices


def parse_list_devices(text: str) -> list[GgmlDevice] | None:
    """Devices after ``Available devices:``; ``None`` when the header is missing (no listing)."""
    _, header, rest = text.partition("Available devices:")
    return _device_lines(rest) if header else None


def parse_ggml_devices_json(text: str) -> list[GgmlDevice] | None:
    """The GPUs of ``python -m tightwad.engine.ggml_devices`` (CPU and accelerators left out);
    ``None`` when it printed no device at all (no binding, or it failed)."""
    devices: list[GgmlDevice] = []
    seen_any = False
    for line in text.splitlines():
        if not line.startswith("{"):
            continue  # a backend's own chatter on stdout
        row = json.loads(line)
        seen_any = True
        if row.get("type") not in ("gpu", "igpu"):
            continue
        devices.append(
            GgmlDevice(
                str(row["name"]),
                str(row["description"]),
                int(row["memory_total_bytes"]),
                int(row["memory_free_bytes"]),
                str(row.get("device_id") or "").lower(),
            )
        )
    return devices if seen_any else None


@dataclass(frozen=True, slots=True)
class RpcServerBanner:
    """What ``ggml-rpc-server`` says on start."""

    protocol_version: str
    endpoint: str
    devices: tuple[GgmlDevice, ...]
    backend_memory_bytes: int | None = None


def parse_rpc_server_banner(text: str) -> RpcServerBanner | None:
    """The banner's facts, or ``None`` when ``text`` holds no ``Starting RPC server`` line."""
    version = _BANNER.search(text)
    if version is None:
        return None
    endpoint = _ENDPOINT.search(text)
    memory = _BACKEND_MEMORY.search(text)
    _, _, after_devices = text.partition("Devices:")
    return RpcServerBanner(
        protocol_version=version.group(1),
        endpoint=endpoint.group(1) if endpoint else "",
        devices=tuple(_device_lines(after_devices)),
        backend_memory_bytes=int(memory.group(1)) * _MIB if memory else None,
    )


def parse_llama_version(text: str) -> str:
    """``version: 6500 (1a2b3c4)`` of ``llama-server --version`` -> ``b6500-1a2b3c4``; newer
    builds print ``version: 0.5.0-dev (build 1, commit 0c1e570)`` -> ``0.5.0-dev-0c1e570``."""
    match = _VERSION.search(text)
    if match:
        return f"b{match.group(1)}-{match.group(2)}"
    match = _SEMVER.search(text)
    return f"{match.group(1)}-{match.group(2)}" if match else ""


def cross_check(
    devices: list[DeviceInfo], ggml: list[GgmlDevice], *, host: str = ""
) -> tuple[list[DeviceInfo], list[InventoryWarning]]:
    """Set ``ggml_name`` on the vendor devices ggml also sees, add the GPUs only ggml sees,
    warn where the two disagree. ``host`` names ggml-only devices without a PCI id (default:
    the host of the ``cpu:<host>`` device)."""
    result = list(devices)
    warnings: list[InventoryWarning] = []
    host = host or next((d.id[4:] for d in devices if d.id.startswith("cpu:")), "local")
    added: list[DeviceInfo] = []
    for backend in _PREFERENCE:
        taken: set[str] = set()
        for gdev in (g for g in ggml if g.backend is backend):
            pos = _by_pci(result, gdev)
            if pos is None:
                pos = _best_match(result, gdev, exclude=taken)
            if pos is None:
                if backend in _NATIVE:
                    warnings.append(_unmatched_ggml(gdev))
                if not any(d.ggml_name == gdev.name for d in added):
                    added.append(_ggml_only(gdev, host))
                continue
            taken.add(result[pos].id)
            warnings.extend(_memory_disagreement(result[pos], gdev))
            result[pos] = _named(result[pos], gdev)
    warnings.extend(_unseen_by_ggml(result, ggml))
    return result + added, warnings


_NATIVE = frozenset({Backend.CUDA, Backend.ROCM, Backend.METAL})
_VENDOR_WORDS: tuple[tuple[str, Vendor], ...] = (
    ("nvidia", Vendor.NVIDIA),
    ("geforce", Vendor.NVIDIA),
    ("quadro", Vendor.NVIDIA),
    ("tesla", Vendor.NVIDIA),
    ("amd", Vendor.AMD),
    ("radeon", Vendor.AMD),
    ("intel", Vendor.INTEL),
    ("apple", Vendor.APPLE),
)


def _by_pci(devices: list[DeviceInfo], gdev: GgmlDevice) -> int | None:
    if not gdev.device_id:
        return None
    return next((i for i in _usable_gpus(devices) if devices[i].pci_bus_id == gdev.device_id), None)


def _ggml_only(gdev: GgmlDevice, host: str) -> DeviceInfo:
    """A GPU no vendor tool reported: ggml's name, description and memory."""
    text = gdev.description.lower()
    vendor = next((v for word, v in _VENDOR_WORDS if word in text), Vendor.UNKNOWN)
    digits = re.search(r"(\d+)$", gdev.name)
    return DeviceInfo(
        id=f"pci:{gdev.device_id}" if gdev.device_id else f"ggml:{host}:{gdev.name}",
        index=int(digits.group(1)) if digits else 0,
        name=gdev.description,
        vendor=vendor,
        backend=gdev.backend,
        memory_total_bytes=gdev.memory_total_bytes,
        memory_free_bytes=gdev.memory_free_bytes,
        pci_bus_id=gdev.device_id,
        ggml_name=gdev.name,
    )


def _usable_gpus(devices: list[DeviceInfo]) -> list[int]:
    """Positions of GPUs a ggml device can be: not CPUs, not MIG-split parents."""
    parents = {d.parent_id for d in devices if d.parent_id}
    return [i for i, d in enumerate(devices) if d.is_gpu and d.id not in parents]


def _best_match(devices: list[DeviceInfo], gdev: GgmlDevice, exclude: set[str]) -> int | None:
    vendors = _VENDORS_OF[gdev.backend]
    candidates = [
        i
        for i in _usable_gpus(devices)
        if devices[i].vendor in vendors and devices[i].id not in exclude
    ]
    plausible = [i for i in candidates if _plausible(devices[i], gdev)]
    if not plausible:
        return None
    return min(plausible, key=lambda i: (_distance(devices[i], gdev), i))


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower())) - {
        "nvidia",
        "amd",
        "apple",
        "geforce",
        "radeon",
        "graphics",
        "gpu",
    }


def _plausible(device: DeviceInfo, gdev: GgmlDevice) -> bool:
    """Same GPU by name (shared model words) or by memory size (within 10%)."""
    shared = _words(device.name) & _words(gdev.description)
    return bool(shared) or _close(device.memory_total_bytes, gdev.memory_total_bytes, 0.10)


def _close(a: int, b: int, tolerance: float) -> bool:
    return a > 0 and b > 0 and abs(a - b) <= tolerance * max(a, b)


def _distance(device: DeviceInfo, gdev: GgmlDevice) -> tuple[int, float, float]:
    """Name mismatch first, then relative total and free memory difference."""
    name_miss = 0 if _words(device.name) & _words(gdev.description) else 1
    total = abs(device.memory_total_bytes - gdev.memory_total_bytes) / max(
        device.memory_total_bytes, gdev.memory_total_bytes, 1
    )
    free = abs(device.memory_free_bytes - gdev.memory_free_bytes) / max(
        device.memory_total_bytes, 1
    )
    return name_miss, round(total, 2), free


def _named(device: DeviceInfo, gdev: GgmlDevice) -> DeviceInfo:
    if device.ggml_name:
        return device
    named = replace(device, ggml_name=gdev.name, backend=gdev.backend)
    if device.vendor is Vendor.APPLE and gdev.backend is Backend.METAL:
        # Metal's own recommendedMaxWorkingSetSize beats our 2/3-or-3/4 estimate.
        return replace(
            named,
            memory_total_bytes=gdev.memory_total_bytes,
            memory_free_bytes=gdev.memory_free_bytes,
        )
    return named


def _memory_disagreement(device: DeviceInfo, gdev: GgmlDevice) -> list[InventoryWarning]:
    if device.vendor is Vendor.APPLE or _close(
        device.memory_total_bytes, gdev.memory_total_bytes, 0.10
    ):
        return []
    return [
        InventoryWarning(
            SOURCE,
            f"{gdev.name} ({gdev.description}) reports {gdev.memory_total_bytes // _MIB} MiB "
            f"but the vendor tool says {device.memory_total_bytes // _MIB} MiB for {device.id}",
        )
    ]


def _unmatched_ggml(gdev: GgmlDevice) -> InventoryWarning:
    return InventoryWarning(
        SOURCE,
        f"llama.cpp sees {gdev.name} ({gdev.description}, {gdev.memory_total_bytes // _MIB} MiB) "
        "but no vendor tool reported a matching GPU",
    )


def _unseen_by_ggml(devices: list[DeviceInfo], ggml: list[GgmlDevice]) -> list[InventoryWarning]:
    backends = sorted({g.backend.value for g in ggml if g.is_local_gpu}) or ["none"]
    return [
        InventoryWarning(
            SOURCE,
            f"{devices[i].name} ({devices[i].id}) is seen by the vendor tool but not by "
            f"llama.cpp (its GPU backends: {', '.join(backends)}); it will not be used",
        )
        for i in _usable_gpus(devices)
        if not devices[i].ggml_name
    ]
