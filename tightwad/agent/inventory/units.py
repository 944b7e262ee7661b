"""Small, forgiving readers for the values vendor tools print.

Every function returns ``None`` for a value the tool did not know (``N/A``, ``[Not Supported]``,
empty), so parsers can fall back instead of crashing.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["is_missing", "normalize_pci", "parse_bytes", "parse_float", "parse_int"]

_MISSING = {
    "",
    "n/a",
    "[n/a]",
    "na",
    "[not supported]",
    "not supported",
    "[unknown error]",
    "unknown",
    "none",
    "null",
    "-",
}

_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$")
_NUMBER = re.compile(r"^\s*(-?[0-9]+(?:\.[0-9]+)?)")


def is_missing(value: Any) -> bool:
    if value is None:
        return True
    return isinstance(value, str) and value.strip().lower() in _MISSING


def _unwrap(value: Any) -> tuple[Any, str | None]:
    """amd-smi prints ``{"value": 3, "unit": "%"}``; older tools print bare values."""
    if isinstance(value, dict):
        return value.get("value"), value.get("unit")
    return value, None


def parse_float(value: Any) -> float | None:
    """``"45 C"``, ``"3 %"``, ``39.0``, ``{"value": 39, "unit": "C"}`` -> float."""
    raw, _ = _unwrap(value)
    if is_missing(raw) or isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        return float(raw)
    match = _NUMBER.match(str(raw))
    return float(match.group(1)) if match else None


def parse_int(value: Any) -> int | None:
    number = parse_float(value)
    return None if number is None else int(number)


def parse_bytes(value: Any, default_unit: str = "b") -> int | None:
    """A size with an optional unit (``"24564 MiB"``, ``"8 GB"``, ``{"value", "unit"}``).

    Vendor tools (and ``/proc/meminfo``'s ``kB``) say "MB", "GB" for powers of 1024, so the
    decimal-looking units are read as MiB, GiB, KiB.
    """
    raw, unit = _unwrap(value)
    if is_missing(raw) or isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        number, unit_text = float(raw), (unit or default_unit)
    else:
        match = _SIZE.match(str(raw))
        if not match:
            return None
        number, unit_text = float(match.group(1)), (match.group(2) or unit or default_unit)
    scale = _binary_scale(unit_text)
    return None if scale is None else int(number * scale)


def _binary_scale(unit: str) -> int | None:
    key = unit.strip().lower()
    if key in ("mb", "gb", "kb", "tb"):
        key = key[0] + "ib"
    return _UNITS.get(key)


def normalize_pci(bus_id: str) -> str:
    """``00000000:01:00.0`` / ``0000:01:00.0`` / ``01:00.0`` -> ``0000:01:00.0`` (lowercase)."""
    text = bus_id.strip().lower()
    if is_missing(text):
        return ""
    parts = text.split(":")
    if len(parts) == 2:
        parts = ["0000", *parts]
    if len(parts) != 3:
        return text
    domain = parts[0][-4:].rjust(4, "0")
    return f"{domain}:{parts[1].rjust(2, '0')}:{parts[2]}"
