"""The fixed prompt suite: kinds code, edit, reasoning, factual, list, creative.

Every kind has a greedy prompt first and a sampled one second (temperature 0.7, fixed seed), so
the default run (two prompts per kind) covers both. Edit prompts carry long code and an
instruction to change one thing; their ``prediction`` is the original code (OpenAI predicted
outputs): the case where n-gram lookup and predicted outputs draft nearly for free.

The suite is data: changing a prompt changes every figure measured with it, so add prompts at
the end of a kind rather than editing one in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["KINDS", "SUITE", "Prompt", "select"]

KINDS: tuple[str, ...] = ("code", "edit", "reasoning", "factual", "list", "creative")


@dataclass(frozen=True, slots=True)
class Prompt:
    """One request of the suite (one user message)."""

    name: str
    kind: str
    content: str
    temperature: float = 0.0
    seed: int | None = None
    prediction: str | None = None

    @property
    def sampled(self) -> bool:
        return self.temperature > 0.0


_INVENTORY = '''\
from dataclasses import dataclass, field


@dataclass
class Item:
    sku: str
    name: str
    price: float
    quantity: int = 0
    tags: list[str] = field(default_factory=list)


class Inventory:
    """A small in-memory inventory of items keyed by SKU."""

    def __init__(self) -> None:
        self.items: dict[str, Item] = {}

    def add_item(self, item: Item) -> None:
        if item.sku in self.items:
            raise ValueError(f"duplicate sku {item.sku}")
        self.items[item.sku] = item

    def remove_item(self, sku: str) -> Item:
        try:
            return self.items.pop(sku)
        except KeyError:
            raise KeyError(f"unknown sku {sku}") from None

    def restock(self, sku: str, amount: int) -> int:
        if amount <= 0:
            raise ValueError("amount must be positive")
        item = self.items[sku]
        item.quantity += amount
        return item.quantity

    def sell(self, sku: str, amount: int) -> float:
        item = self.items[sku]
        if amount > item.quantity:
            raise ValueError(f"only {item.quantity} of {sku} left")
        item.quantity -= amount
        return amount * item.price

    def total_value(self) -> float:
        return sum(item.price * item.quantity for item in self.items.values())

    def find_by_tag(self, tag: str) -> list[Item]:
        return [item for item in self.items.values() if tag in item.tags]

    def low_stock(self, threshold: int = 5) -> list[Item]:
        return sorted(
            (item for item in self.items.values() if item.quantity < threshold),
            key=lambda item: item.quantity,
        )

    def report(self) -> str:
        lines = []
        for item in sorted(self.items.values(), key=lambda item: item.sku):
            lines.append(f"{item.sku:10} {item.name:20} {item.quantity:5} {item.price:8.2f}")
        lines.append(f"total value: {self.total_value():.2f}")
        return "\\n".join(lines)
'''

_LRU = '''\
import time
from collections import OrderedDict
from typing import Any, Callable


class LRUCache:
    """A least-recently-used cache with an optional time to live per entry."""

    def __init__(self, capacity: int, ttl_seconds: float | None = None) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self.ttl_seconds = ttl_seconds
        self._data: OrderedDict[str, tuple[Any, float]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def _expired(self, stored_at: float) -> bool:
        if self.ttl_seconds is None:
            return False
        return time.monotonic() - stored_at > self.ttl_seconds

    def get(self, key: str, default: Any = None) -> Any:
        entry = self._data.get(key)
        if entry is None:
            self.misses += 1
            return default
        value, stored_at = entry
        if self._expired(stored_at):
            del self._data[key]
            self.misses += 1
            return default
        self._data.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: str, value: Any) -> None:
        if key in self._data:
            self._data.move_to_end(key)
        self._data[key] = (value, time.monotonic())
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)

    def delete(self, key: str) -> bool:
        return self._data.pop(key, None) is not None

    def clear(self) -> None:
        self._data.clear()
        self.hits = 0
        self.misses = 0

    def get_or_compute(self, key: str, compute: Callable[[], Any]) -> Any:
        sentinel = object()
        value = self.get(key, sentinel)
        if value is sentinel:
            value = compute()
            self.put(key, value)
        return value

    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: str) -> bool:
        entry = self._data.get(key)
        return entry is not None and not self._expired(entry[1])
'''


def _edit(code: str, instruction: str) -> str:
    return (
        f"{instruction} Reply with the complete updated file only, in one Python code block, "
        f"with no explanation.\n\n```python\n{code}```"
    )


SUITE: tuple[Prompt, ...] = (
    Prompt(
        "code-1",
        "code",
        "Write a Python function `merge_intervals(intervals)` that merges overlapping "
        "intervals given as a list of (start, end) tuples, with a docstring and type hints.",
    ),
    Prompt(
        "code-2",
        "code",
        "Write a Python class `RateLimiter` implementing a token bucket with methods "
        "`allow()` and `wait_time()`.",
        temperature=0.7,
        seed=11,
    ),
    Prompt(
        "edit-1",
        "edit",
        _edit(_INVENTORY, "Rename the method `find_by_tag` to `items_with_tag`."),
        prediction=_INVENTORY,
    ),
    Prompt(
        "edit-2",
        "edit",
        _edit(_LRU, "Change the default `capacity` check so that a capacity of 0 is allowed."),
        temperature=0.7,
        seed=12,
        prediction=_LRU,
    ),
    Prompt(
        "reasoning-1",
        "reasoning",
        "A train leaves at 9:40 and arrives at 13:05, stopping twice for 12 minutes each. "
        "How long was it moving? Think step by step.",
    ),
    Prompt(
        "reasoning-2",
        "reasoning",
        "If 3 programmers fix 12 bugs in 2 days, how many bugs do 5 programmers fix in 3 days "
        "at the same rate? Explain your reasoning.",
        temperature=0.7,
        seed=13,
    ),
    Prompt(
        "factual-1",
        "factual",
        "Explain what the TCP three-way handshake is and why it is needed.",
    ),
    Prompt(
        "factual-2",
        "factual",
        "What is the difference between a process and a thread in an operating system?",
        temperature=0.7,
        seed=14,
    ),
    Prompt(
        "list-1",
        "list",
        "List ten common HTTP status codes with a one-line description of each.",
    ),
    Prompt(
        "list-2",
        "list",
        "List eight Git commands every developer should know, with one sentence each.",
        temperature=0.7,
        seed=15,
    ),
    Prompt(
        "creative-1",
        "creative",
        "Write a short poem about a compiler that dreams of the sea.",
    ),
    Prompt(
        "creative-2",
        "creative",
        "Write the opening paragraph of a mystery story set in a data center.",
        temperature=0.7,
        seed=16,
    ),
)


def select(kinds: Sequence[str] | None = None, per_kind: int = 2) -> list[Prompt]:
    """The first ``per_kind`` prompts of each kind in ``kinds`` (default: all), suite order."""
    wanted = tuple(kinds) if kinds else KINDS
    unknown = [k for k in wanted if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown prompt kinds {unknown}; known: {', '.join(KINDS)}")
    out: list[Prompt] = []
    for kind in wanted:
        out.extend([p for p in SUITE if p.kind == kind][:per_kind])
    return out
