"""``${VAR}`` expansion inside the string values of a cluster file.

Grammar (a small, predictable subset of the shell's):

- ``${NAME}``: the value of ``NAME``; an unset variable is an error, never an empty string.
- ``${NAME:-fallback}``: ``fallback`` when ``NAME`` is unset or empty (the fallback is literal
  text; it is not expanded again).
- ``$$``: a literal ``$``.
- any other ``$`` is kept as it is, so ``pa$word`` needs no escaping.

``NAME`` is ``[A-Za-z_][A-Za-z0-9_]*``. Errors raise ``ValueError`` with a human reason; the
YAML layer adds the key path and line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["expand", "has_reference"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def has_reference(text: str) -> bool:
    """True when ``text`` contains anything :func:`expand` would change."""
    return "$" in text


def expand(text: str, env: Mapping[str, str]) -> str:
    """Return ``text`` with every ``${...}`` replaced from ``env`` and ``$$`` unescaped."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "$" or i + 1 >= len(text):
            out.append(ch)
            i += 1
        elif text[i + 1] == "$":
            out.append("$")
            i += 2
        elif text[i + 1] == "{":
            end = text.find("}", i + 2)
            if end < 0:
                raise ValueError(f"unterminated '${{' in {text!r}")
            out.append(_lookup(text[i + 2 : end], env))
            i = end + 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _lookup(expr: str, env: Mapping[str, str]) -> str:
    name, sep, fallback = expr.partition(":-")
    if not _NAME.match(name):
        raise ValueError(f"'${{{expr}}}' is not a variable reference (use $$ for a literal $)")
    value = env.get(name)
    if sep:
        return value if value else fallback
    if value is None:
        raise ValueError(
            f"environment variable {name} is not set (write ${{{name}:-default}} for a default)"
        )
    return value
