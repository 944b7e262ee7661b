"""NVIDIA GPUs from ``nvidia-smi``: CSV query first, XML (``-q -x``) to fill gaps, MIG too.

Guarantees: every device is keyed by its UUID (``GPU-...``/``MIG-...``), or ``pci:<bus id>``
when the UUID is unknown; a broken driver ("Failed to initialize NVML", "couldn't communicate
with the NVIDIA driver") becomes a warning and no devices, never an exception. A GPU split into
MIG instances is listed with 0 free bytes (CUDA allocates on its instances, never on it) and
each instance is its own device with ``parent_id`` = the GPU's UUID.
"""

from __future__ import annotations

import csv
import io
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace

from tightwad.agent.inventory.runner import CommandResult, CommandRunner
from tightwad.agent.inventory.units import (
    is_missing,
    normalize_pci,
    parse_bytes,
    parse_float,
    parse_int,
)
from tightwad.engine.device_facts import Backend, DeviceInfo, InventoryWarning, Vendor

__all__ = [
    "CSV_FIELDS",
    "MigListing",
    "apply_mig",
    "driver_failure",
    "merge_nvidia",
    "parse_nvidia_csv",
    "parse_nvidia_list",
    "parse_nvidia_xml",
    "probe_nvidia",
]

SOURCE = "nvidia-smi"
CSV_FIELDS = (
    "index,uuid,name,pci.bus_id,memory.total,memory.free,utilization.gpu,"
    "temperature.gpu,driver_version,compute_cap"
)
_CSV_ARGV = ("nvidia-smi", f"--query-gpu={CSV_FIELDS}", "--format=csv,noheader,nounits")
_XML_ARGV = ("nvidia-smi", "-q", "-x")
_LIST_ARGV = ("nvidia-smi", "-L")
_MIB = 1024**2
_DRIVER_FAILURES = (
    "failed to initialize nvml",
    "couldn't communicate with the nvidia driver",
    "driver/library version mismatch",
    "no devices were found",
    "unable to determine the device handle",
)
_GPU_LINE = re.compile(r"^GPU\s+(\d+):\s*(.*?)\s*\(UUID:\s*([^)]+)\)")
_MIG_LINE = re.compile(r"^\s+MIG\s+(\S+)\s+Device\s+(\d+):\s*\(UUID:\s*([^)]+)\)")


def _text(value: str | None) -> str:
    return "" if is_missing(value) else (value or "").strip()


def _mib(value: str | None) -> int | None:
    return parse_bytes(value, default_unit="mib")


def _device_id(uuid: str, pci: str) -> str:
    return uuid or (f"pci:{pci}" if pci else "")


def parse_nvidia_csv(text: str) -> list[DeviceInfo]:
    """Rows of the ``--query-gpu=CSV_FIELDS --format=csv,noheader,nounits`` output.

    A field the tool could not read (``[N/A]``...) is left empty/zero/``None``; use
    ``needs_xml`` to decide whether the XML report must fill it.
    """
    devices = []
    for row in csv.reader(io.StringIO(text), skipinitialspace=True):
        if len(row) < 9 or not row[0].strip().isdigit():
            continue
        row = [*row, ""] if len(row) == 9 else row
        uuid, pci = _text(row[1]), normalize_pci(row[3])
        total = _mib(row[4])
        devices.append(
            DeviceInfo(
                id=_device_id(uuid, pci),
                index=int(row[0]),
                name=_text(row[2]),
                vendor=Vendor.NVIDIA,
                backend=Backend.CUDA,
                memory_total_bytes=total or 0,
                memory_free_bytes=_mib(row[5]) or 0,
                utilization_percent=parse_float(row[6]),
                temperature_c=parse_float(row[7]),
                driver_version=_text(row[8]),
                compute_version=_text(row[9]),
                pci_bus_id=pci,
            )
        )
    return devices


def needs_xml(csv_text: str) -> bool:
    """True when any CSV field was unknown (``N/A``, ``[Not Supported]``...)."""
    for row in csv.reader(io.StringIO(csv_text), skipinitialspace=True):
        if any(is_missing(cell) for cell in row[:9]):
            return True
    return False


@dataclass(frozen=True, slots=True)
class _XmlMig:
    index: int
    memory_total_bytes: int
    memory_free_bytes: int


def parse_nvidia_xml(text: str) -> list[DeviceInfo]:
    """GPUs of the ``nvidia-smi -q -x`` report (MIG instances are read by ``apply_mig``)."""
    root = ET.fromstring(text)
    driver = _text(root.findtext("driver_version"))
    return [_xml_gpu(gpu, index, driver) for index, gpu in enumerate(root.iter("gpu"))]


def _xml_gpu(gpu: ET.Element, index: int, driver: str) -> DeviceInfo:
    uuid = _text(gpu.findtext("uuid"))
    pci = normalize_pci(gpu.findtext("pci/pci_bus_id") or gpu.get("id") or "")
    minor = parse_int(gpu.findtext("minor_number"))
    return DeviceInfo(
        id=_device_id(uuid, pci),
        index=index if minor is None else minor,
        name=_text(gpu.findtext("product_name")),
        vendor=Vendor.NVIDIA,
        backend=Backend.CUDA,
        memory_total_bytes=_mib(gpu.findtext("fb_memory_usage/total")) or 0,
        memory_free_bytes=_mib(gpu.findtext("fb_memory_usage/free")) or 0,
        utilization_percent=parse_float(gpu.findtext("utilization/gpu_util")),
        temperature_c=parse_float(gpu.findtext("temperature/gpu_temp")),
        driver_version=driver,
        compute_version=_text(gpu.findtext("compute_cap")),
        pci_bus_id=pci,
    )


def _xml_migs(text: str) -> dict[str, list[_XmlMig]]:
    """MIG instances per parent GPU UUID, with their memory, from the XML report."""
    found: dict[str, list[_XmlMig]] = {}
    for gpu in ET.fromstring(text).iter("gpu"):
        migs = [
            _XmlMig(
                index=parse_int(mig.findtext("index")) or 0,
                memory_total_bytes=_mib(mig.findtext("fb_memory_usage/total")) or 0,
                memory_free_bytes=_mib(mig.findtext("fb_memory_usage/free")) or 0,
            )
            for mig in gpu.iter("mig_device")
        ]
        if migs:
            found[_text(gpu.findtext("uuid"))] = migs
    return found


def merge_nvidia(primary: list[DeviceInfo], fallback: list[DeviceInfo]) -> list[DeviceInfo]:
    """Fill the unknown fields of ``primary`` (CSV) from ``fallback`` (XML), matched by PCI id."""
    if not primary:
        return fallback
    by_pci = {d.pci_bus_id: d for d in fallback if d.pci_bus_id}
    by_order = dict(enumerate(fallback))
    merged = []
    for position, device in enumerate(primary):
        other = by_pci.get(device.pci_bus_id) or by_order.get(position)
        merged.append(device if other is None else _fill(device, other))
    return merged


def _fill(device: DeviceInfo, other: DeviceInfo) -> DeviceInfo:
    uuid = "" if device.id.startswith("pci:") else device.id
    fallback_uuid = "" if other.id.startswith("pci:") else other.id
    pci = device.pci_bus_id or other.pci_bus_id
    return replace(
        device,
        id=_device_id(uuid or fallback_uuid, pci),
        name=device.name or other.name,
        memory_total_bytes=device.memory_total_bytes or other.memory_total_bytes,
        memory_free_bytes=device.memory_free_bytes or other.memory_free_bytes,
        utilization_percent=_first(device.utilization_percent, other.utilization_percent),
        temperature_c=_first(device.temperature_c, other.temperature_c),
        driver_version=device.driver_version or other.driver_version,
        compute_version=device.compute_version or other.compute_version,
        pci_bus_id=pci,
    )


def _first(a: float | None, b: float | None) -> float | None:
    return a if a is not None else b


@dataclass(frozen=True, slots=True)
class MigListing:
    """One ``MIG <profile> Device <n>: (UUID: ...)`` line of ``nvidia-smi -L``."""

    parent_uuid: str
    profile: str
    index: int
    uuid: str


def parse_nvidia_list(text: str) -> list[MigListing]:
    """MIG instances of ``nvidia-smi -L``, each attached to the GPU line above it."""
    listings: list[MigListing] = []
    parent = ""
    for line in text.splitlines():
        if gpu := _GPU_LINE.match(line):
            parent = gpu.group(3).strip()
        elif (mig := _MIG_LINE.match(line)) and parent:
            listings.append(
                MigListing(parent, mig.group(1), int(mig.group(2)), mig.group(3).strip())
            )
    return listings


def apply_mig(
    gpus: list[DeviceInfo], listings: list[MigListing], xml_text: str | None
) -> list[DeviceInfo]:
    """Add MIG instances after their parent; a parent's free memory becomes 0."""
    memory = _xml_migs(xml_text) if xml_text else {}
    result: list[DeviceInfo] = []
    for gpu in gpus:
        children = [m for m in listings if m.parent_uuid == gpu.id]
        if not children:
            result.append(gpu)
            continue
        result.append(replace(gpu, memory_free_bytes=0))
        sizes = {m.index: m for m in memory.get(gpu.id, [])}
        result.extend(_mig_device(gpu, m, sizes.get(m.index)) for m in children)
    return result


def _mig_device(gpu: DeviceInfo, mig: MigListing, size: _XmlMig | None) -> DeviceInfo:
    return DeviceInfo(
        id=mig.uuid,
        index=mig.index,
        name=f"{gpu.name} MIG {mig.profile}",
        vendor=Vendor.NVIDIA,
        backend=Backend.CUDA,
        memory_total_bytes=size.memory_total_bytes if size else _profile_bytes(mig.profile),
        memory_free_bytes=size.memory_free_bytes if size else _profile_bytes(mig.profile),
        driver_version=gpu.driver_version,
        compute_version=gpu.compute_version,
        pci_bus_id=gpu.pci_bus_id,
        parent_id=gpu.id,
    )


def _profile_bytes(profile: str) -> int:
    """``1g.5gb`` -> 5 GiB, the nominal size when the XML report gave no numbers."""
    match = re.search(r"\.(\d+)gb", profile)
    return int(match.group(1)) * 1024**3 if match else 0


def driver_failure(result: CommandResult) -> str | None:
    """The driver/NVML error ``nvidia-smi`` printed, if that is why it failed."""
    lowered = result.output.lower()
    if any(marker in lowered for marker in _DRIVER_FAILURES):
        return _first_line(result.output)
    return None


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


async def probe_nvidia(
    runner: CommandRunner, timeout_s: float
) -> tuple[list[DeviceInfo], list[InventoryWarning]]:
    """Run ``nvidia-smi`` (CSV, then XML and ``-L`` where needed) and parse what it says."""
    query = await runner.run(_CSV_ARGV, timeout_s=timeout_s)
    if not query.found:
        return [], []
    if failure := driver_failure(query):
        return [], [InventoryWarning(SOURCE, f"NVIDIA GPUs unusable: {failure}")]
    listing = await runner.run(_LIST_ARGV, timeout_s=timeout_s)
    migs = parse_nvidia_list(listing.stdout) if listing.ok else []
    devices = parse_nvidia_csv(query.stdout) if query.ok else []
    warnings: list[InventoryWarning] = []
    xml_text: str | None = None
    if not query.ok or needs_xml(query.stdout) or migs:
        xml_text, warning = await _xml_report(runner, timeout_s, query)
        warnings += [warning] if warning else []
    if xml_text is not None:
        devices = merge_nvidia(devices, parse_nvidia_xml(xml_text))
    return apply_mig(devices, migs, xml_text), warnings + _unknown_memory(devices)


async def _xml_report(
    runner: CommandRunner, timeout_s: float, query: CommandResult
) -> tuple[str | None, InventoryWarning | None]:
    """The XML report, or a warning when neither it nor the CSV query worked."""
    report = await runner.run(_XML_ARGV, timeout_s=timeout_s)
    if report.ok:
        try:
            ET.fromstring(report.stdout)
        except ET.ParseError as exc:
            return None, _failed(query, f"unreadable XML report ({exc})")
        return report.stdout, None
    if query.ok:
        return None, None
    return None, _failed(query, _first_line(report.output) or "no output")


def _failed(query: CommandResult, why: str) -> InventoryWarning:
    if query.ok:
        return InventoryWarning(SOURCE, f"nvidia-smi -q -x: {why}; unknown fields stay unknown")
    detail = "timed out" if query.timed_out else _first_line(query.output) or "failed"
    return InventoryWarning(SOURCE, f"nvidia-smi query failed ({detail}); fallback: {why}")


def _unknown_memory(devices: list[DeviceInfo]) -> list[InventoryWarning]:
    return [
        InventoryWarning(SOURCE, f"{d.name or d.id}: memory size unknown")
        for d in devices
        if d.memory_total_bytes == 0
    ]
