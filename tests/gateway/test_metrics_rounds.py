"""Per-route verify rounds in the gateway's metrics: finished generations count their rounds
next to their drafted and accepted tokens, per route label, and in the status totals."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tightwad.gateway.metrics import GatewayMetrics
from tightwad.gateway.types import Finished, GenerationStats, Usage


def _samples(metrics: GatewayMetrics) -> dict[tuple[str, str], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            if s.name.endswith("_total") and "route" in s.labels:
                out[(s.name, s.labels["route"])] = s.value
    return out


def test_rounds_drafted_and_accepted_are_counted_per_route() -> None:
    m = GatewayMetrics()
    m.observe_finished("a", Finished("stop", Usage(3, 9), GenerationStats(rounds=3, drafted=9,
                                     accepted=5)))  # fmt: skip
    m.observe_finished("a", Finished("stop", Usage(3, 4), GenerationStats(rounds=1, drafted=2,
                                     accepted=2)))  # fmt: skip
    m.observe_finished("b", Finished("stop", Usage(3, 4), GenerationStats(plain_steps=4)))
    got = _samples(m)
    assert got[("tightwad_verify_rounds_total", "a")] == 4
    assert got[("tightwad_drafted_tokens_total", "a")] == 11
    assert got[("tightwad_accepted_tokens_total", "a")] == 7
    assert got[("tightwad_verify_rounds_total", "b")] == 0
    report = m.status_report([], started=0.0)
    assert report["totals"]["rounds"] == 4
    assert report["totals"]["acceptance_rate"] == 7 / 11
