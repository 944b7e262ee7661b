"""A small rolling history of what each route produced, for the dashboard's charts.

Owns :class:`History`. Two feeds: the playground's generation events, token by token
(:meth:`History.observe`), and the API's requests as the gateway's Prometheus counters count
them when they finish (:meth:`History.sample` of :func:`registry_counts`, by difference since
the previous sample, so sampling twice never counts twice). It keeps, per route, one
:class:`Bucket` per ``interval_s`` of wall time over the last ``window_s``, and running totals
since start. Guarantees: memory is bounded (at most ``window_s / interval_s`` buckets per
route, and only configured route names are keys); :meth:`History.series` is dense (an idle
interval is a zero, not a gap), oldest first; time comes from an injectable clock, so tests
never sleep.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from tightwad.clock import Clock, SystemClock
from tightwad.gateway.types import Finished, GenerationEvent, TextDelta

__all__ = ["Bucket", "Counts", "History", "RouteTotals", "registry_counts"]

# Prometheus counter (as collected, without ``_total``) -> the Counts field it feeds.
_COUNTERS = {
    "tightwad_generated_tokens": "tokens",
    "tightwad_verify_rounds": "rounds",
    "tightwad_drafted_tokens": "drafted",
    "tightwad_accepted_tokens": "accepted",
}


@dataclass(frozen=True, slots=True)
class Counts:
    """Running totals of one route as the gateway's metrics count them."""

    tokens: int = 0
    requests: int = 0
    drafted: int = 0
    accepted: int = 0
    errors: int = 0
    rounds: int = 0

    def minus(self, before: Counts) -> Counts:
        """What happened since ``before`` (a counter that went back was reset: all of it)."""
        pairs = [(now, old) for now, old in zip(_fields(self), _fields(before), strict=True)]
        if any(now < old for now, old in pairs):
            return self
        return Counts(*(now - old for now, old in pairs))


def _fields(c: Counts) -> tuple[int, int, int, int, int, int]:
    return (c.tokens, c.requests, c.drafted, c.accepted, c.errors, c.rounds)


def registry_counts(registry: CollectorRegistry, routes: Collection[str]) -> dict[str, Counts]:
    """Per route of ``routes``: completion tokens, generation requests answered (and how
    many were errors), verify rounds, drafted and accepted tokens, from the gateway's
    metrics."""
    acc: dict[str, dict[str, int]] = {r: {} for r in routes}
    for metric in registry.collect():
        key = _COUNTERS.get(metric.name)
        if key is None and metric.name != "tightwad_requests":
            continue
        for sample in metric.samples:
            route = sample.labels.get("route", "")
            if not sample.name.endswith("_total") or route not in acc:
                continue
            fields = acc[route]
            if key is not None:
                fields[key] = fields.get(key, 0) + int(sample.value)
                continue
            fields["requests"] = fields.get("requests", 0) + int(sample.value)
            if sample.labels.get("status", "").startswith(("4", "5")):
                fields["errors"] = fields.get("errors", 0) + int(sample.value)
    return {route: Counts(**fields) for route, fields in acc.items()}


@dataclass(slots=True)
class Bucket:
    """What one route did during one interval (``index`` = start time // interval)."""

    index: int
    tokens: int = 0
    by_origin: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    errors: int = 0


@dataclass(slots=True)
class RouteTotals:
    """Totals of one route since the gateway started (finished requests only)."""

    requests: int = 0
    tokens: int = 0
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    draft_failures: int = 0
    errors: int = 0
    last_stats: dict[str, object] | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "tokens": self.tokens,
            "rounds": self.rounds,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "draft_failures": self.draft_failures,
            "errors": self.errors,
            "acceptance_rate": self.accepted / self.drafted if self.drafted else None,
            "mean_accepted_length": (
                round(1.0 + self.accepted / self.rounds, 3) if self.rounds else None
            ),
            "last": self.last_stats,
        }


class History:
    """Per-route buckets of ``interval_s`` seconds over the last ``window_s`` seconds."""

    def __init__(
        self, *, interval_s: float = 2.0, window_s: float = 300.0, clock: Clock | None = None
    ) -> None:
        self.interval_s = interval_s
        self.size = max(1, math.ceil(window_s / interval_s))
        self.clock = clock or SystemClock()
        self._buckets: dict[str, deque[Bucket]] = {}
        self.totals: dict[str, RouteTotals] = {}
        self._seen: dict[str, Counts] = {}

    def _index(self) -> int:
        return math.floor(self.clock.time() / self.interval_s)

    def _bucket(self, route: str) -> Bucket:
        index = self._index()
        buckets = self._buckets.setdefault(route, deque(maxlen=self.size))
        if not buckets or buckets[-1].index != index:
            buckets.append(Bucket(index))
        return buckets[-1]

    def observe(self, route: str, event: GenerationEvent) -> None:
        """Count one event of a generation on ``route`` (a configured route name)."""
        bucket = self._bucket(route)
        totals = self.totals.setdefault(route, RouteTotals())
        if isinstance(event, Finished):
            stats = event.stats
            bucket.requests += 1
            bucket.rounds += stats.rounds
            bucket.drafted += stats.drafted
            bucket.accepted += stats.accepted
            totals.requests += 1
            totals.rounds += stats.rounds
            totals.drafted += stats.drafted
            totals.accepted += stats.accepted
            totals.draft_failures += stats.draft_failures
            totals.last_stats = stats.as_json()
            return
        if not isinstance(event, TextDelta):
            return
        n = len(event.token_ids) or (1 if event.text else 0)
        origin = str(getattr(event, "origin", "plain"))
        bucket.tokens += n
        bucket.by_origin[origin] = bucket.by_origin.get(origin, 0) + n
        totals.tokens += n

    def sample(self, counts: Mapping[str, Counts]) -> None:
        """Add what the metrics counted since the previous sample (a route's first sample
        counts everything so far: the sampler starts with the gateway)."""
        for route, now in counts.items():
            d = now.minus(self._seen.get(route, Counts()))
            self._seen[route] = now
            if d == Counts():
                continue
            bucket = self._bucket(route)
            totals = self.totals.setdefault(route, RouteTotals())
            bucket.tokens += d.tokens
            bucket.by_origin["api"] = bucket.by_origin.get("api", 0) + d.tokens
            bucket.requests += d.requests
            bucket.rounds += d.rounds
            bucket.drafted += d.drafted
            bucket.accepted += d.accepted
            bucket.errors += d.errors
            totals.tokens += d.tokens
            totals.requests += d.requests
            totals.rounds += d.rounds
            totals.drafted += d.drafted
            totals.accepted += d.accepted
            totals.errors += d.errors

    def forget(self, keep: Collection[str]) -> None:
        """Drop the history of routes no longer served."""
        for name in (set(self._buckets) | set(self.totals)) - set(keep):
            self._buckets.pop(name, None)
            self.totals.pop(name, None)
            self._seen.pop(name, None)

    def tokens_per_second(self, route: str, seconds: float = 6.0) -> float:
        """Tokens per second over the last ``seconds`` (whole buckets, the current included)."""
        n = max(1, round(seconds / self.interval_s))
        last = self._index()
        tokens = sum(b.tokens for b in self._buckets.get(route, ()) if b.index > last - n)
        return tokens / (n * self.interval_s)

    def series(self, route: str) -> dict[str, Any]:
        """The dense series of the window, oldest first: tok/s and acceptance per bucket."""
        last = self._index()
        first = last - self.size + 1
        by_index = {b.index: b for b in self._buckets.get(route, ()) if b.index >= first}
        tok_s: list[float] = []
        acceptance: list[float | None] = []
        requests: list[int] = []
        errors: list[int] = []
        for index in range(first, last + 1):
            b = by_index.get(index)
            if b is None:
                tok_s.append(0.0)
                acceptance.append(None)
                requests.append(0)
                errors.append(0)
                continue
            tok_s.append(round(b.tokens / self.interval_s, 2))
            acceptance.append(round(b.accepted / b.drafted, 4) if b.drafted else None)
            requests.append(b.requests)
            errors.append(b.errors)
        return {
            "interval_s": self.interval_s,
            "end": (last + 1) * self.interval_s,
            "tok_s": tok_s,
            "acceptance": acceptance,
            "requests": requests,
            "errors": errors,
        }
