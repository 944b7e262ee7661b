"""The dashboard's data shaping, without a browser or a model: the playground's frames by token
origin, a route's row from its status entry (drafting verdict, batch occupancy), the history
fed by the gateway's real metrics (verify rounds -> mean accepted length)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from tightwad.clock import FakeClock
from tightwad.engine.contract import BatchOccupancy
from tightwad.gateway.dashboard.history import History, registry_counts
from tightwad.gateway.dashboard.occupancy import EngineOccupancy
from tightwad.gateway.dashboard.playground import event_frame
from tightwad.gateway.dashboard.site import with_occupancy
from tightwad.gateway.dashboard.views import batch_view, drafting_verdict, route_view
from tightwad.gateway.metrics import GatewayMetrics
from tightwad.gateway.types import Finished, GenerationStats, TextDelta, Usage

STATS = GenerationStats(mode="ngram", rounds=4, drafted=12, accepted=8, plain_steps=2)


def _entry(**details: Any) -> dict[str, Any]:
    """A route entry shaped as ``route_status`` builds it for ``/v1/tightwad/status``."""
    return {
        "name": "r", "target": "smollm", "draft_mode": "ngram", "draft": None, "ready": True,
        "n_ctx": 2048, "can_verify": True, "details": details, "in_flight": 1, "queued": 2,
    }  # fmt: skip


# --- the playground's frames -----------------------------------------------------------------


@pytest.mark.parametrize("origin", ["draft", "target", "plain", "forced"])
def test_a_delta_frame_keeps_its_origin_and_round(origin: str) -> None:
    frame = event_frame(TextDelta(" beta", (5, 6), origin=origin, round=3))  # type: ignore[arg-type]
    assert frame == {"type": "delta", "text": " beta", "origin": origin, "round": 3, "tokens": 2}


def test_an_unknown_origin_is_shown_as_a_plain_step_and_empty_deltas_are_dropped() -> None:
    frame = event_frame(TextDelta("x", (1,), origin="mystery"))  # type: ignore[arg-type]
    assert frame is not None and (frame["origin"], frame["round"]) == ("plain", 0)
    assert event_frame(TextDelta("")) is None
    held_back = event_frame(TextDelta("", (7,), origin="draft", round=1))  # tokens, text later
    assert held_back is not None and held_back["tokens"] == 1


def test_the_finished_frame_carries_usage_and_the_tightwad_stats() -> None:
    frame = event_frame(Finished("length", Usage(10, 14), STATS))
    assert frame is not None and frame["type"] == "finished"
    assert frame["finish_reason"] == "length"
    assert frame["usage"] == {"prompt_tokens": 10, "completion_tokens": 14, "total_tokens": 24}
    assert frame["stats"]["rounds"] == 4 and frame["stats"]["mean_accepted_length"] == 3.0


# --- a route's row ---------------------------------------------------------------------------


def test_drafting_verdicts_say_why() -> None:
    assert drafting_verdict({**_entry(), "ready": False, "error": "boom"}) == {
        "on": False, "why": "route not ready: boom"}  # fmt: skip
    assert not drafting_verdict({**_entry(), "draft_mode": "none"})["on"]
    assert "cannot verify" in drafting_verdict({**_entry(), "can_verify": False})["why"]
    sick = _entry(drafters=[{"healthy": False}])
    assert "every drafter failed" in drafting_verdict(sick)["why"]
    assert "not judged yet" in drafting_verdict(_entry())["why"]
    pays = {"plain_step_ms": 12.5, "extra_ms_per_drafted_token": 0.8, "acceptance": 0.61,
            "rounds_seen": 40, "can_pay": True}  # fmt: skip
    verdict = drafting_verdict(_entry(drafting={"ngram": pays}))
    assert verdict["on"] and "plain step 12.5 ms" in verdict["why"] and "61%" in verdict["why"]
    hopeless = drafting_verdict(_entry(drafting={"ngram": {**pays, "can_pay": False}}))
    assert not hopeless["on"] and hopeless["why"].startswith("drafting cannot pay")


def test_a_route_row_from_its_status_entry() -> None:
    row = route_view(
        _entry(verify_ms_by_width={"8": 30.0, "1": 10.0, "16": 50.0}, copy_drafts=7),
        tok_s=12.345, series={"tok_s": [1.0]}, totals={"rounds": 4}, errors=3,
    )  # fmt: skip
    assert (row["name"], row["target"], row["draft"], row["draft_mode"]) == (
        "r", "smollm", "", "ngram")  # fmt: skip
    assert (row["in_flight"], row["queued"], row["errors"], row["tok_s"]) == (1, 2, 3, 12.35)
    assert list(row["verify_ms_by_width"]) == ["1", "8", "16"]  # by width, not as strings
    assert row["copy_drafts"] == 7 and row["totals"] == {"rounds": 4}
    assert row["drafting"]["on"] is True


def test_batch_occupancy_is_none_when_the_route_does_not_report_it() -> None:
    assert set(batch_view({}).values()) == {None}
    assert set(batch_view({"batch": "n/a", "live_runs": True}).values()) == {None}


def test_batch_occupancy_from_the_engine_and_the_live_runs() -> None:
    occupancy = {"enabled": True, "decodes": 10, "jobs": 25, "tokens": 80, "prefill_tokens": 40,
                 "mean_sessions_per_step": 2.5, "mean_tokens_per_step": 8.0,
                 "recent_sessions_per_step": 3.333, "max_jobs": 4, "max_tokens": 17,
                 "max_sessions": 8}  # fmt: skip
    details = {"live_runs": 3, "peak_live_runs": 4, "batch": occupancy}
    b = batch_view(details)
    assert (b["live_runs"], b["peak_live_runs"], b["batching"]) == (3, 4, True)
    assert (b["sessions_per_step"], b["tokens_per_step"]) == (2.5, 8.0)
    assert b["recent_sessions_per_step"] == 3.33
    assert (b["max_sessions_per_step"], b["max_tokens_per_step"], b["decodes"]) == (4, 17, 10)
    assert route_view(_entry(**details), tok_s=0, series={}, totals={}, errors=0)["batch"] == b
    # Without the means, they are the totals per decode.
    bare = batch_view({"batch": {"decodes": 8, "jobs": 12, "tokens": 50}})
    assert (bare["sessions_per_step"], bare["tokens_per_step"]) == (1.5, 6.25)


def test_an_engine_that_does_not_batch_or_has_not_stepped_shows_no_occupancy() -> None:
    off = batch_view({"live_runs": 1, "batch": {"enabled": False, "decodes": 0}})
    assert (off["batching"], off["live_runs"], off["sessions_per_step"]) == (False, 1, None)
    idle = batch_view({"batch": {"enabled": True, "decodes": 0, "mean_sessions_per_step": 0.0}})
    assert idle["batching"] is True and idle["sessions_per_step"] is None


# --- the history over the gateway's metrics ------------------------------------------------------


def test_verify_rounds_from_the_metrics_give_the_mean_accepted_length() -> None:
    metrics = GatewayMetrics()
    clock = FakeClock()
    history = History(interval_s=2.0, window_s=20.0, clock=clock)
    metrics.observe_finished("r", Finished("stop", Usage(5, 14), STATS))
    metrics.observe_finished("other", Finished("stop", Usage(5, 3), GenerationStats(rounds=9)))
    counts = registry_counts(metrics.registry, ["r"])
    assert set(counts) == {"r"}
    assert (counts["r"].rounds, counts["r"].drafted, counts["r"].accepted) == (4, 12, 8)
    history.sample(counts)
    history.sample(registry_counts(metrics.registry, ["r"]))  # twice: counted once
    totals = history.totals["r"].as_json()
    assert (totals["rounds"], totals["drafted"], totals["accepted"]) == (4, 12, 8)
    assert totals["mean_accepted_length"] == 3.0 and totals["acceptance_rate"] == 8 / 12
    # A playground reply adds its own rounds and accepted tokens to the same totals.
    history.observe("r", TextDelta("a b", (1, 2), origin="draft", round=1))
    history.observe("r", Finished("stop", Usage(1, 2), GenerationStats(rounds=1, drafted=4,
                                                                       accepted=0)))  # fmt: skip
    totals = history.totals["r"].as_json()
    assert (totals["rounds"], totals["accepted"]) == (5, 8)
    assert totals["mean_accepted_length"] == round(1 + 8 / 5, 3)
    assert totals["tokens"] == 14 + 2


def test_the_series_is_dense_and_per_bucket() -> None:
    clock = FakeClock(start=100.0)
    history = History(interval_s=2.0, window_s=10.0, clock=clock)
    history.observe("r", TextDelta("abcd", (1, 2, 3, 4), origin="plain"))
    clock.advance(4.0)
    s = history.series("r")
    assert s["tok_s"] == [0.0, 0.0, 2.0, 0.0, 0.0]  # 4 tokens in a 2 s bucket, two ago
    assert len(s["acceptance"]) == 5 and set(s["acceptance"]) == {None}
    assert history.tokens_per_second("r", seconds=6.0) == pytest.approx(4 / 6)
    clock.advance(20.0)
    assert set(history.series("r")["tok_s"]) == {0.0}


# --- the engines' batch occupancy --------------------------------------------------------------


class _Target:
    """Stands in for an EngineClient's Info (its engine is exercised in the browser tests)."""

    def __init__(self, address: str, answer: Any) -> None:
        self.address, self.model, self.answer, self.calls = address, "m", answer, 0

    async def info(self) -> Any:
        self.calls += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        if self.answer == "slow":
            await asyncio.sleep(5)
        return SimpleNamespace(batch=BatchOccupancy(enabled=True, decodes=4, jobs=6))


def _route(target: _Target | None, details: dict[str, Any] | None = None) -> Any:
    info = SimpleNamespace(details=details or {})
    return SimpleNamespace(spec=SimpleNamespace(target=target), info=lambda: info)


async def test_occupancy_asks_each_engine_once_and_drops_the_failing_ones() -> None:
    shared, broken, slow = _Target("a:1", "ok"), _Target("b:1", OSError("down")), _Target(
        "c:1", "slow")  # fmt: skip
    own = _Target("d:1", "ok")
    routes = {"x": _route(shared), "y": _route(shared), "z": _route(broken),
              "s": _route(slow), "plain": object(), "none": _route(None),
              "own": _route(own, {"batch": {"decodes": 1}})}  # fmt: skip
    occupancy = EngineOccupancy(timeout_s=0.05)
    await occupancy.refresh(routes)
    assert shared.calls == 1 and set(occupancy.latest) == {"x", "y"}
    assert own.calls == 0  # the route reports its engine's occupancy itself
    assert occupancy.latest["x"]["decodes"] == 4 and occupancy.latest["x"]["enabled"] is True
    view = batch_view(with_occupancy(_entry(), occupancy.latest["x"])["details"])
    assert (view["batching"], view["sessions_per_step"]) == (True, 1.5)


def test_a_routes_own_batch_numbers_win_over_the_engines() -> None:
    own = _entry(batch={"enabled": False})
    assert with_occupancy(own, {"enabled": True, "decodes": 3}) is own
    assert with_occupancy(_entry(), None)["details"] == {}
    merged = with_occupancy(_entry(live_runs=2), {"decodes": 3})
    assert merged["details"] == {"live_runs": 2, "batch": {"decodes": 3}}
