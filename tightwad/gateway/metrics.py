"""Prometheus metrics of the gateway, and the report ``/v1/tightwad/status`` shows.

Owns :class:`GatewayMetrics` (metrics plus running totals) and :func:`route_status`. Per route,
finished generations count their verify rounds and the tokens drafted and accepted in them
(``tightwad_verify_rounds_total``, ``tightwad_drafted_tokens_total``,
``tightwad_accepted_tokens_total``): mean accepted length = 1 + accepted / rounds. Each app
gets its own :class:`CollectorRegistry`, so several apps (tests) never collide. Route labels
only ever take configured route names (or ``""`` when the request named no known route), so a
client cannot grow label cardinality.
"""

from __future__ import annotations

import time
from collections import Counter as TallyCounter
from collections.abc import Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from tightwad.gateway.types import Backend, Finished
from tightwad.logs import get_logger

__all__ = ["CONTENT_TYPE", "GatewayMetrics", "route_status"]

log = get_logger(__name__)
_TOTALS = (
    "requests", "errors", "prompt_tokens", "completion_tokens", "rounds", "drafted", "accepted",
    "draft_failures", "queue_rejections",
)  # fmt: skip

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class GatewayMetrics:
    """Counters, histograms and gauges of one gateway app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.requests = Counter(
            "tightwad_requests", "HTTP requests answered", ["route", "endpoint", "status"],
            registry=reg,
        )  # fmt: skip
        self.prompt_tokens = Counter(
            "tightwad_prompt_tokens", "Prompt tokens processed", ["route"], registry=reg
        )
        self.generated_tokens = Counter(
            "tightwad_generated_tokens", "Completion tokens generated", ["route"], registry=reg
        )
        self.rounds = Counter(
            "tightwad_verify_rounds", "Verify rounds (a draft checked by the target)", ["route"],
            registry=reg,
        )  # fmt: skip
        self.drafted = Counter(
            "tightwad_drafted_tokens", "Draft tokens proposed", ["route"], registry=reg
        )
        self.accepted = Counter(
            "tightwad_accepted_tokens", "Draft tokens accepted by the target", ["route"],
            registry=reg,
        )  # fmt: skip
        self.draft_failures = Counter(
            "tightwad_draft_failures", "Drafter failures (request fell back)", ["route"],
            registry=reg,
        )  # fmt: skip
        self.queue_rejections = Counter(
            "tightwad_queue_rejections", "Requests refused with 429: queue full", ["route"],
            registry=reg,
        )  # fmt: skip
        self.ttft = Histogram(
            "tightwad_time_to_first_token_seconds", "Time from request to first token",
            ["route"], buckets=_LATENCY_BUCKETS, registry=reg,
        )  # fmt: skip
        self.duration = Histogram(
            "tightwad_request_duration_seconds", "Time from request to last byte",
            ["route", "endpoint"], buckets=_DURATION_BUCKETS, registry=reg,
        )  # fmt: skip
        self.in_flight = Gauge(
            "tightwad_in_flight_requests", "Generations running now", ["route"], registry=reg
        )
        self.totals: TallyCounter[str] = TallyCounter()

    def observe_request(self, route: str, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(route, endpoint, str(status)).inc()
        self.duration.labels(route, endpoint).observe(seconds)
        self.totals["requests"] += 1
        if status >= 400:
            self.totals["errors"] += 1

    def observe_first_token(self, route: str, seconds: float) -> None:
        self.ttft.labels(route).observe(seconds)

    def observe_finished(self, route: str, finished: Finished) -> None:
        usage, stats = finished.usage, finished.stats
        self.prompt_tokens.labels(route).inc(usage.prompt_tokens)
        self.generated_tokens.labels(route).inc(usage.completion_tokens)
        self.rounds.labels(route).inc(stats.rounds)
        self.drafted.labels(route).inc(stats.drafted)
        self.accepted.labels(route).inc(stats.accepted)
        self.draft_failures.labels(route).inc(stats.draft_failures)
        self.totals["prompt_tokens"] += usage.prompt_tokens
        self.totals["completion_tokens"] += usage.completion_tokens
        self.totals["rounds"] += stats.rounds
        self.totals["drafted"] += stats.drafted
        self.totals["accepted"] += stats.accepted
        self.totals["draft_failures"] += stats.draft_failures

    def observe_rejection(self, route: str) -> None:
        self.queue_rejections.labels(route).inc()
        self.totals["queue_rejections"] += 1

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def status_report(self, routes: Sequence[dict[str, Any]], started: float) -> dict[str, Any]:
        """The ``/v1/tightwad/status`` body: per-route entries (:func:`route_status`), totals."""
        totals: dict[str, Any] = {key: self.totals[key] for key in _TOTALS}
        drafted = totals["drafted"]
        totals["acceptance_rate"] = totals["accepted"] / drafted if drafted else 0.0
        totals["in_flight"] = sum(route["in_flight"] for route in routes)
        totals["queued"] = sum(route["queued"] for route in routes)
        return {
            "object": "tightwad.status",
            "started": int(started),
            "uptime_s": round(time.time() - started, 3),
            "routes": list(routes),
            "totals": totals,
        }


def route_status(name: str, backend: Backend, running: int, waiting: int) -> dict[str, Any]:
    """One route's status entry: its :class:`RouteInfo` plus in-flight and queued counts."""
    counts = {"in_flight": running, "queued": waiting}
    try:
        info = backend.info()
    except Exception as exc:
        log.warning("route_info_failed", route=name, error=repr(exc))
        return {"name": name, "ready": False, "error": "route info unavailable", **counts}
    return {
        "name": name,
        "target": info.target,
        "draft_mode": info.draft_mode,
        "draft": info.draft,
        "ready": info.ready,
        "n_ctx": info.n_ctx,
        "can_verify": info.can_verify,
        "details": dict(info.details),
        **counts,
    }
