"""AMD GPUs from ``amd-smi`` (preferred) or ``rocm-smi`` joined with ``rocminfo``.

``rocm-smi --json`` has renamed its keys across ROCm releases ("VRAM Total Memory (B)" vs
"vram Total Memory (B)", "Card series" vs "Card Series", "GPU ID" vs "Device ID"...), so keys
are looked up case-insensitively from a list of known spellings. ``rocminfo`` adds the gfx
target (``gfx1100``) and marketing name of each ``Device Type: GPU`` agent, joined on the PCI
location (``BDFID``) or, failing that, on order. Devices are keyed ``pci:<bus id>``, which every
one of these tools reports the same way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from tightwad.agent.inventory.runner import CommandRunner
from tightwad.agent.inventory.units import (
    is_missing,
    normalize_pci,
    parse_bytes,
    parse_float,
)
from tightwad.engine.device_facts import Backend, DeviceInfo, InventoryWarning, Vendor

__all__ = [
    "RocmAgent",
    "join_rocminfo",
    "parse_amd_smi",
    "parse_rocm_smi",
    "parse_rocminfo",
    "probe_amd",
]

_ROCM_SMI_ARGV = (
    "rocm-smi",
    "--showid",
    "--showproductname",
    "--showmeminfo",
    "vram",
    "--showuse",
    "--showtemp",
    "--showbus",
    "--showuniqueid",
    "--showdriverversion",
    "--json",
)
_ROCMINFO_ARGV = ("rocminfo",)
_AMD_STATIC_ARGV = ("amd-smi", "static", "--json")
_AMD_METRIC_ARGV = ("amd-smi", "metric", "--json")

_NAME_KEYS = ("device name", "card series", "card model", "marketing name", "card sku")
_TOTAL_KEYS = ("vram total memory (b)",)
_USED_KEYS = ("vram total used memory (b)",)
_USE_KEYS = ("gpu use (%)", "gpu use(%)")
_TEMP_KEYS = ("temperature (sensor edge) (c)", "temperature (sensor junction) (c)")
_BUS_KEYS = ("pci bus", "pci bus id")
_DRIVER_KEYS = ("driver version",)
_HEX_ONLY = re.compile(r"^0x[0-9a-f]+$", re.IGNORECASE)


def _lookup(record: Mapping[str, Any], keys: Iterable[str]) -> Any:
    """First present, known value among ``keys``, matched case-insensitively."""
    lowered = {str(k).strip().lower(): v for k, v in record.items()}
    for key in keys:
        value = lowered.get(key)
        if not is_missing(value):
            return value
    return None


def _name(record: Mapping[str, Any]) -> str:
    lowered = {str(k).strip().lower(): v for k, v in record.items()}
    for key in _NAME_KEYS:
        value = lowered.get(key)
        if isinstance(value, str) and not is_missing(value) and not _HEX_ONLY.match(value):
            return value.strip()
    return "AMD GPU"


def _card_index(key: str, fallback: int) -> int:
    match = re.search(r"(\d+)$", key)
    return int(match.group(1)) if match else fallback


def parse_rocm_smi(text: str) -> list[DeviceInfo]:
    """Cards of ``rocm-smi ... --json`` (``{"card0": {...}, "system": {...}}``)."""
    data = json.loads(_json_part(text))
    if not isinstance(data, dict):
        return []
    system = data.get("system") if isinstance(data.get("system"), dict) else {}
    driver = str(_lookup(system or {}, _DRIVER_KEYS) or "")
    cards = [
        (k, v) for k, v in data.items() if k.lower().startswith("card") and isinstance(v, dict)
    ]
    return [_rocm_card(key, record, pos, driver) for pos, (key, record) in enumerate(cards)]


def _rocm_card(key: str, record: Mapping[str, Any], position: int, driver: str) -> DeviceInfo:
    pci = normalize_pci(str(_lookup(record, _BUS_KEYS) or ""))
    total = parse_bytes(_lookup(record, _TOTAL_KEYS)) or 0
    used = parse_bytes(_lookup(record, _USED_KEYS))
    index = _card_index(key, position)
    return DeviceInfo(
        id=f"pci:{pci}" if pci else _unique_id(record, index),
        index=index,
        name=_name(record),
        vendor=Vendor.AMD,
        backend=Backend.ROCM,
        memory_total_bytes=total,
        memory_free_bytes=max(total - used, 0) if used is not None else total,
        utilization_percent=parse_float(_lookup(record, _USE_KEYS)),
        temperature_c=parse_float(_lookup(record, _TEMP_KEYS)),
        driver_version=str(_lookup(record, _DRIVER_KEYS) or driver),
        pci_bus_id=pci,
    )


def _unique_id(record: Mapping[str, Any], index: int) -> str:
    unique = _lookup(record, ("unique id",))
    return f"amd:{unique}" if unique else f"amd:card{index}"


@dataclass(frozen=True, slots=True)
class RocmAgent:
    """A ``Device Type: GPU`` agent of ``rocminfo``."""

    gfx: str
    marketing_name: str
    pci_bus_id: str
    uuid: str


def parse_rocminfo(text: str) -> list[RocmAgent]:
    """GPU agents of ``rocminfo``, in order; CPU agents are skipped."""
    agents = []
    for block in re.split(r"^\*+\s*\n\s*Agent \d+\s*\n\*+\s*$", text, flags=re.MULTILINE)[1:]:
        fields = _first_fields(block)
        if fields.get("device type", "").upper() != "GPU":
            continue
        agents.append(
            RocmAgent(
                gfx=fields.get("name", ""),
                marketing_name=fields.get("marketing name", ""),
                pci_bus_id=_bdfid_to_pci(fields.get("bdfid", "")),
                uuid=fields.get("uuid", ""),
            )
        )
    return agents


def _first_fields(block: str) -> dict[str, str]:
    """``Key: value`` pairs of an agent block; the first occurrence wins (ISA info repeats)."""
    fields: dict[str, str] = {}
    for line in block.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            fields.setdefault(key.strip().lower(), value.strip())
    return fields


def _bdfid_to_pci(bdfid: str) -> str:
    """rocminfo's ``BDFID: 768`` = bus << 8 | device << 3 | function -> ``0000:03:00.0``."""
    if not bdfid.isdigit():
        return ""
    value = int(bdfid)
    return f"0000:{value >> 8 & 0xFF:02x}:{value >> 3 & 0x1F:02x}.{value & 0x7}"


def join_rocminfo(devices: list[DeviceInfo], agents: list[RocmAgent]) -> list[DeviceInfo]:
    """Add gfx targets (and better names) from rocminfo, by PCI location or else by order."""
    by_pci = {a.pci_bus_id: a for a in agents if a.pci_bus_id}
    joined = []
    for position, device in enumerate(devices):
        agent = by_pci.get(device.pci_bus_id)
        if agent is None and not by_pci and position < len(agents):
            agent = agents[position]
        joined.append(device if agent is None else _with_agent(device, agent))
    return joined


def _with_agent(device: DeviceInfo, agent: RocmAgent) -> DeviceInfo:
    return replace(
        device,
        name=agent.marketing_name or device.name,
        compute_version=agent.gfx or device.compute_version,
    )


def parse_amd_smi(static_text: str, metric_text: str | None) -> list[DeviceInfo]:
    """GPUs of ``amd-smi static --json`` joined with ``amd-smi metric --json`` on ``gpu``.

    Both commands print a list of per-GPU records, or (amd-smi 26+) ``{"gpu_data": [...]}``;
    values are bare or ``{"value": ..., "unit": ...}``.
    """
    metrics = {_gpu_index(m, i): m for i, m in enumerate(_records(metric_text))}
    return [
        _amd_smi_device(record, metrics.get(_gpu_index(record, pos), {}), pos)
        for pos, record in enumerate(_records(static_text))
    ]


def _json_part(text: str) -> str:
    """The JSON document, without the ``WARNING: ...`` lines some versions print first."""
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    return text[min(starts) :] if starts else text


def _records(text: str | None) -> list[dict[str, Any]]:
    if not text:
        return []
    data = json.loads(_json_part(text))
    if isinstance(data, dict):
        data = data.get("gpu_data", [data])
    return [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []


def _gpu_index(record: Mapping[str, Any], fallback: int) -> int:
    value = record.get("gpu")
    return value if isinstance(value, int) else fallback


def _section(record: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = record.get(name)
    return value if isinstance(value, dict) else {}


def _amd_smi_device(static: dict[str, Any], metric: dict[str, Any], pos: int) -> DeviceInfo:
    asic, bus, vram = _section(static, "asic"), _section(static, "bus"), _section(static, "vram")
    usage, mem = _section(metric, "usage"), _section(metric, "mem_usage")
    pci = normalize_pci(str(bus.get("bdf") or static.get("bdf") or asic.get("pci_bdf") or ""))
    total = parse_bytes(mem.get("total_vram"), "mib") or _vram_size(vram) or 0
    free = parse_bytes(mem.get("free_vram"), "mib")
    used = parse_bytes(mem.get("used_vram"), "mib")
    if free is None:
        free = max(total - used, 0) if used is not None else total
    index = _gpu_index(static, pos)
    name = asic.get("market_name")
    return DeviceInfo(
        id=f"pci:{pci}" if pci else f"amd:gpu{index}",
        index=index,
        name=str(name) if not is_missing(name) else "AMD GPU",
        vendor=Vendor.AMD,
        backend=Backend.ROCM,
        memory_total_bytes=total,
        memory_free_bytes=free,
        utilization_percent=parse_float(usage.get("gfx_activity")),
        temperature_c=_temperature(_section(metric, "temperature")),
        driver_version=str(_section(static, "driver").get("version") or ""),
        compute_version=str(asic.get("target_graphics_version") or ""),
        pci_bus_id=pci,
    )


def _vram_size(vram: Mapping[str, Any]) -> int | None:
    if "size" in vram:
        return parse_bytes(vram["size"], "mib")
    return parse_bytes(vram.get("vram_size_mb") or vram.get("vram_size"), "mib")


def _temperature(section: Mapping[str, Any]) -> float | None:
    for key in ("edge", "hotspot", "junction"):
        value = parse_float(section.get(key))
        if value is not None:
            return value
    return None


async def probe_amd(
    runner: CommandRunner, timeout_s: float
) -> tuple[list[DeviceInfo], list[InventoryWarning]]:
    """amd-smi where present and working, else rocm-smi + rocminfo."""
    static = await runner.run(_AMD_STATIC_ARGV, timeout_s=timeout_s)
    warnings: list[InventoryWarning] = []
    if static.ok:
        metric = await runner.run(_AMD_METRIC_ARGV, timeout_s=timeout_s)
        try:
            return parse_amd_smi(static.stdout, metric.stdout if metric.ok else None), []
        except (ValueError, TypeError) as exc:
            warnings.append(InventoryWarning("amd-smi", f"unreadable JSON output: {exc}"))
    elif static.found:
        warnings.append(InventoryWarning("amd-smi", _failure("amd-smi static", static.output)))
    devices, more = await _probe_rocm_smi(runner, timeout_s)
    return devices, warnings + more


async def _probe_rocm_smi(
    runner: CommandRunner, timeout_s: float
) -> tuple[list[DeviceInfo], list[InventoryWarning]]:
    result = await runner.run(_ROCM_SMI_ARGV, timeout_s=timeout_s)
    if not result.found:
        return [], []
    try:
        devices = parse_rocm_smi(result.stdout) if result.stdout.strip() else []
    except ValueError as exc:
        return [], [InventoryWarning("rocm-smi", f"unreadable JSON output: {exc}")]
    if not devices:
        why = _failure("rocm-smi", result.output) if not result.ok else "rocm-smi found no GPU"
        return [], [InventoryWarning("rocm-smi", why)]
    info = await runner.run(_ROCMINFO_ARGV, timeout_s=timeout_s)
    return join_rocminfo(devices, parse_rocminfo(info.stdout) if info.ok else []), []


def _failure(what: str, output: str) -> str:
    line = next((ln.strip() for ln in output.splitlines() if ln.strip()), "no output")
    return f"{what} failed: {line}"
