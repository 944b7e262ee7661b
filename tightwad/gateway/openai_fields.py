"""Typed readers of the fields of an OpenAI request body, shared by the request parsers.

Each reader returns ``None`` when the field is absent or JSON ``null`` (``null`` means "not
given"), and refuses anything else of the wrong type or outside its bounds with an
:class:`~tightwad.errors.InvalidRequestError` naming the field as ``param``, in OpenAI's
wording ("Invalid type for 'x': expected ..., but got ...", "Invalid value for 'x': ...").
An integral float (``3.0``) is an integer, as JSON Schema counts it.

The bounds the engines' wire format sets (``int32`` sampling fields and token ids, ``float32``
penalties) are here so that a value past them is a 400 naming it, never a failed encoding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from tightwad.errors import InvalidRequestError

__all__ = [
    "FLOAT32_MAX",
    "INT32_MAX",
    "INT64_MAX",
    "INT64_MIN",
    "boolean",
    "integer",
    "json_type",
    "number",
    "string",
    "token_id",
    "type_error",
]

INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FLOAT32_MAX = 3.4028234663852886e38


def type_error(param: str, expected: str, value: object) -> InvalidRequestError:
    return InvalidRequestError(
        f"Invalid type for '{param}': expected {expected}, but got {json_type(value)}.",
        param=param,
    )


def json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def boolean(body: Mapping[str, Any], key: str, default: bool, *, param: str = "") -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise type_error(param or key, "a boolean", value)
    return value


def string(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise type_error(key, "a string", value)
    return value


def integer(body: Mapping[str, Any], key: str, lo: int | None, hi: int | None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise type_error(key, "an integer", value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise InvalidRequestError(
            f"Invalid value for '{key}': {value} is outside [{lo}, {hi}].", param=key
        )
    return value


def number(
    body: Mapping[str, Any], key: str, lo: float, hi: float, *, lo_open: bool = False
) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise type_error(key, "a number", value)
    amount = float(value)
    below = amount <= lo if lo_open else amount < lo
    if not math.isfinite(amount) or below or amount > hi:
        bracket = "(" if lo_open else "["
        raise InvalidRequestError(
            f"Invalid value for '{key}': {value} is outside {bracket}{lo:g}, {hi:g}].", param=key
        )
    return amount


def token_id(value: object) -> int | None:
    """``value`` as a token id (an integer, or an integral float, in ``[0, 2^31 - 1]``), else
    ``None``."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= INT32_MAX:
        return None
    return value
