"""Typed readers for the values of a cluster file, and the table-driven section reader.

A section is described by a table ``{yaml_key: Field(parser, default)}``. :func:`read_section`
checks that the value is a mapping, refuses unknown keys (suggesting the closest known one),
fills defaults, reports missing required keys, and runs each parser at its key path. A parser
is ``(doc, path, value) -> typed value`` and raises the document's ConfigError on bad input.
An explicit ``null`` counts as absent.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

from tightwad.config._document import Document, join
from tightwad.config._schema import HttpUrl, IPNetwork

T = TypeVar("T")
Parser = Callable[[Document, str, object], T]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Final = _Required()


@dataclass(frozen=True, slots=True)
class Field:
    """One key of a section: how to parse it, and its default (or REQUIRED)."""

    parse: Parser[Any]
    default: object = None


def table(cls: type, parsers: Mapping[str, Parser[Any]]) -> dict[str, Field]:
    """The table of section dataclass ``cls``: a parser per YAML key (a field of ``cls`` of
    the same name, in the order given) and the field's own default, REQUIRED when it has none.
    The dataclass is the one place a default is written; the table adds how to read it."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    out: dict[str, Field] = {}
    for key, parse in parsers.items():
        f = known[key]
        if f.default is not dataclasses.MISSING:
            default: object = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = REQUIRED
        out[key] = Field(parse, default)
    return out


# --- describing what we got ----------------------------------------------------------------


def describe(value: object) -> str:
    """A short human name for a YAML value, used in 'expected X, got Y' reasons."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def suggest(word: str, choices: list[str] | tuple[str, ...]) -> str:
    """``"; did you mean 'x'?"`` when a choice is close to ``word``, else ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


# --- sections ------------------------------------------------------------------------------


def mapping(doc: Document, path: str, value: object) -> dict[str, object]:
    """The value as a mapping with string keys."""
    if not isinstance(value, dict):
        raise doc.error(path, f"expected a mapping, got {describe(value)}")
    for key in value:
        if not isinstance(key, str):
            raise doc.error(join(path, str(key)), f"keys must be strings, got {describe(key)}")
    return value


def read_section(
    doc: Document, path: str, value: object, table: Mapping[str, Field]
) -> dict[str, Any]:
    """Read a mapping per ``table``: keyword arguments for the section's dataclass."""
    raw = mapping(doc, path, value)
    for key in raw:
        if key not in table:
            known = tuple(table)
            hint = suggest(key, known) or f"; known keys: {', '.join(known)}"
            raise doc.error(join(path, key), f"unknown key {key!r}{hint}")
    out: dict[str, Any] = {}
    for key, spec in table.items():
        sub = join(path, key)
        item = raw.get(key)
        if item is not None:
            out[key] = spec.parse(doc, sub, item)
        elif spec.default is REQUIRED:
            raise doc.error(sub, "is required", line_of=path)
        else:
            out[key] = spec.default
    return out


def section(table: Mapping[str, Field], build: Callable[..., T]) -> Parser[T]:
    """A parser building ``build(**fields)`` from a nested mapping."""

    def parse(doc: Document, path: str, value: object) -> T:
        return build(**read_section(doc, path, value, table))

    return parse


def list_of(item: Parser[T]) -> Parser[tuple[T, ...]]:
    def parse(doc: Document, path: str, value: object) -> tuple[T, ...]:
        if not isinstance(value, list):
            raise doc.error(path, f"expected a list, got {describe(value)}")
        return tuple(item(doc, join(path, i), v) for i, v in enumerate(value))

    return parse


# --- scalars -------------------------------------------------------------------------------


def string(doc: Document, path: str, value: object) -> str:
    if not isinstance(value, str):
        hint = " (quote it)" if isinstance(value, int | float | bool) else ""
        raise doc.error(path, f"expected a string, got {describe(value)}{hint}")
    if not value.strip():
        raise doc.error(path, "must not be empty")
    return value


def host(doc: Document, path: str, value: object) -> str:
    """A hostname or IP address (no scheme, no port, no spaces)."""
    text = string(doc, path, value)
    if "://" in text or "/" in text or any(c.isspace() for c in text):
        raise doc.error(path, f"expected a host name or IP address, got {text!r}")
    return text


def boolean(doc: Document, path: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise doc.error(path, f"expected true or false, got {describe(value)}")
    return value


def integer(lo: int | None = None, hi: int | None = None) -> Parser[int]:
    """An int (not a bool) within ``lo..hi`` where given."""

    def parse(doc: Document, path: str, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise doc.error(path, f"expected an integer, got {describe(value)}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise doc.error(path, f"must be {_range_text(lo, hi)}, got {value}")
        return value

    return parse


def _range_text(lo: int | float | None, hi: int | float | None) -> str:
    if lo is not None and hi is not None:
        return f"between {lo} and {hi}"
    return f">= {lo}" if lo is not None else f"<= {hi}"


def port(doc: Document, path: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise doc.error(path, f"expected a port number, got {describe(value)}")
    if not 1 <= value <= 65535:
        raise doc.error(path, f"port must be between 1 and 65535, got {value}")
    return value


def number(lo: float | None = None, *, positive: bool = False) -> Parser[float]:
    """A float or int; ``positive`` excludes 0, ``lo`` is an inclusive minimum."""

    def parse(doc: Document, path: str, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise doc.error(path, f"expected a number, got {describe(value)}")
        if positive and value <= 0:
            raise doc.error(path, f"must be > 0, got {value}")
        if lo is not None and value < lo:
            reason = "must not be negative" if lo == 0 else f"must be >= {lo}"
            raise doc.error(path, f"{reason}, got {value}")
        return float(value)

    return parse


def choice(options: Mapping[str, str]) -> Parser[Any]:
    """One of ``options`` (spelling -> canonical value; aliases map to their canonical)."""

    def parse(doc: Document, path: str, value: object) -> str:
        text = string(doc, path, value)
        if text in options:
            return options[text]
        canonical = ", ".join(dict.fromkeys(options.values()))
        hint = suggest(text, tuple(options))
        raise doc.error(path, f"must be one of {canonical}; got {text!r}{hint}")

    return parse


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*\Z", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def size(doc: Document, path: str, value: object) -> int:
    """Bytes: an integer, or text like ``8MiB``/``8MB``/``512k`` (K/M/G/T: SI with B, else 2^10)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise doc.error(path, f"size must not be negative, got {value}")
        return value
    match = _SIZE.match(value) if isinstance(value, str) else None
    if match is None:
        reason = (
            "a size must not be negative"
            if str(value).strip().startswith("-")
            else (f"expected a size such as 1048576 or '8MiB', got {describe(value)}")
        )
        raise doc.error(path, reason)
    amount, unit = float(match.group(1)), (match.group(2) or "").lower()
    si = unit.endswith("b") and not unit.endswith("ib") and len(unit) == 2
    factor = 1000 ** "bkmgt".index(unit[0]) if si else _UNITS[unit[:1]]
    return int(amount * factor)


def http_url(doc: Document, path: str, value: object) -> HttpUrl:
    """An absolute http(s) URL with a host; port defaults to 80/443."""
    text = string(doc, path, value).strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https"):
        got = f"{parts.scheme!r}" if parts.scheme else "none"
        raise doc.error(path, f"URL scheme must be http or https, got {got} in {text!r}")
    try:
        port_number = parts.port
    except ValueError:
        raise doc.error(path, f"URL port must be between 1 and 65535 in {text!r}") from None
    if not parts.hostname:
        raise doc.error(path, f"URL has no host: {text!r}")
    if parts.scheme == "https":
        return HttpUrl(text.rstrip("/"), "https", parts.hostname, port_number or 443)
    return HttpUrl(text.rstrip("/"), "http", parts.hostname, port_number or 80)


def local_path(doc: Document, path: str, value: object) -> Path:
    """A path on the host reading the file; ``~`` is expanded."""
    return Path(string(doc, path, value)).expanduser()


def network(doc: Document, path: str, value: object) -> IPNetwork:
    text = string(doc, path, value)
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise doc.error(path, f"expected a network such as 10.0.0.0/24, got {text!r}") from None


def env_map(doc: Document, path: str, value: object) -> Mapping[str, str]:
    """Environment variables: string keys, string or number values."""
    raw = mapping(doc, path, value)
    out: dict[str, str] = {}
    for key, item in raw.items():
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise doc.error(join(path, key), f"expected a string, got {describe(item)}")
        out[key] = str(item)
    return MappingProxyType(out)


str_list = list_of(string)
path_list = list_of(local_path)
network_list = list_of(network)
