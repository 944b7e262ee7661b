"""The cost model of speculative decoding, fitted from this suite's own measurements, and what
it predicts: ``python -m benchmarks.run cost-model`` (after ``engine`` and ``draft-free`` and/or
``model-draft`` have run).

Terms (per request; a *round* is one target forward pass):

- ``t0(prompt)``: one plain target step through the whole stack (Verify(0) + gateway + stream)
  for that prompt, from the baseline request of the same prompt in the same run:
  ``(wall - prefill) / steps``. Per prompt, because a step over a long context (edit prompts)
  costs more than over a short one.
- verify cost of k drafts: ``t0 * (1 + beta * k)``. ``beta`` (relative cost of one more token in
  the verify batch) is fitted, pooled over the run, from the engine-reported ``verify_ms`` of the
  speculative requests; the engine scenario's Verify(k) sweep (``rtt(k) / rtt(0)``, printed
  alongside) is the independent check of its shape.
- ``d``: draft cost per drafted token: n-gram / prediction 0; a draft model: fitted, pooled over
  the run, from the gateway's draft time per drafted token.
- draft-model set-up: the draft session's prefill of the prompt, estimated as the target's
  prefill time of the same prompt scaled by the ratio of the two GGUF file sizes (prefill is
  compute bound, roughly proportional to parameters); a dropped drafter costs the route's
  ``draft_timeout_s`` (5 s); a request that drafted nothing never opened its drafter (no
  set-up). Runs recorded before ``draft_failures`` was captured infer a failure
  from a model-mode request that drafted nothing.
- acceptance: each request's own rounds, drafted and accepted tokens and k = 0 steps.

Predicted time of a request = ``(rounds + plain) * t0 + beta * t0 * drafted + d * drafted +
set-up``; predicted speedup = the baseline's predicted tok/s over this one's, per prompt kind,
compared with the measured ratio (target: within 15%).

The GPU projection (clearly a projection, not a measurement) applies the same formula with
assumed GPU step times and the acceptance measured here; its assumptions are in
:data:`GPU_ASSUMPTIONS` and printed with the result.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path
from statistics import median
from typing import Any

from benchmarks.machine import machine_facts
from benchmarks.report import RESULTS, Report

__all__ = ["GPU_ASSUMPTIONS", "Fit", "fit_run", "fit_verify_shape"]

NAME = "cost-model"

GPU_ASSUMPTIONS: dict[str, Any] = {
    "setting": "target Qwen2.5-Coder-32B Q4 on one 24-48 GB GPU host; draft 0.5B on a second "
    "GPU host on the same LAN; gateway on either",
    "target_step_ms": 30.0,
    "verify_extra_per_draft_token": 0.02,  # memory-bound: a k-token batch costs ~ (1 + 0.02 k)
    "draft_model_ms_per_token": 4.0,
    "ngram_draft_ms": 0.05,
    "network_rtt_ms": 0.5,  # per round, LAN, plus the gateway's own share
    "draft_rtt_ms": 0.5,  # one more round trip per round for a remote draft model
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", type=Path, default=RESULTS / "engine" / "latest.json")
    p.add_argument(
        "--runs",
        default=",".join(str(RESULTS / s / "latest.json") for s in ("draft-free", "model-draft")),
        help="comma-separated result JSONs to predict",
    )


def fit_verify_shape(sweep: dict[str, dict[str, list[float]]]) -> list[tuple[int, float]]:
    """(k, rtt(k) / rtt(0)) points from the engine scenario's Verify sweep, sorted by k."""
    pts = sorted((int(k), median(v["rtt"])) for k, v in sweep.items())
    base = dict(pts).get(0) or pts[0][1]
    return [(k, ms / base) for k, ms in pts]


def _interp(points: Sequence[tuple[int, float]], k: float) -> float:
    if k <= points[0][0]:
        return points[0][1]
    for (k0, y0), (k1, y1) in pairwise(points):
        if k <= k1:
            return y0 + (y1 - y0) * (k - k0) / (k1 - k0)
    (k0, y0), (k1, y1) = points[-2], points[-1]
    return y1 + (y1 - y0) * (k - k1) / (k1 - k0)


DRAFT_TIMEOUT_MS = 5000.0  # RouteSpec.draft_timeout_s default


@dataclass(frozen=True, slots=True)
class Fit:
    """The fitted parameters of one run."""

    t0_ms: dict[str, float]  # per prompt
    prefill_ms: dict[str, float]  # target prefill per prompt (baseline request)
    beta: float
    draft_ms_per_token: float
    draft_size_ratio: float = 0.0

    def setup_ms(self, r: dict[str, Any]) -> float:
        if r["mode"] != "model":
            return 0.0
        failures = r.get("draft_failures")
        if failures is None:
            failures = 1 if r["drafted"] == 0 else 0
        if failures:
            return failures * DRAFT_TIMEOUT_MS
        if r["drafted"] == 0 and "draft_failures" in r:
            # The drafter opens only when a round first wants a draft: a request that never
            # drafted never paid for its prefill (runs since 2026-11-26 19:00).
            return 0.0
        return self.prefill_ms[r["prompt"]] * self.draft_size_ratio

    def predict_ms(self, r: dict[str, Any], *, draft_cost: bool = True) -> float:
        """Predicted generation time (ms) of one request from its acceptance figures."""
        t0 = self.t0_ms[r["prompt"]]
        steps = r["rounds"] + r["plain_steps"]
        t = steps * t0 + self.beta * t0 * r["drafted"]
        if draft_cost and r["mode"] == "model":
            t += self.draft_ms_per_token * r["drafted"] + self.setup_ms(r)
        return t


def _gen_ms(r: dict[str, Any]) -> float:
    return float(r["wall_s"]) * 1000.0 - float(r["prefill_ms"] or 0.0)


def fit_run(run: dict[str, Any]) -> Fit:
    reqs = [r for r in run["requests"] if not r["error"] and r["completion_tokens"]]
    base = [r for r in reqs if r["system"] == run["baseline"] and r["plain_steps"]]
    t0 = {r["prompt"]: _gen_ms(r) / r["plain_steps"] for r in base}
    prefill = {r["prompt"]: float(r["prefill_ms"] or 0.0) for r in base}
    spec = [r for r in reqs if r["drafted"] and r["rounds"] and r["prompt"] in t0]
    # verify_ms - steps * t0  ~  beta * t0 * drafted   (least squares through the origin)
    num = den = 0.0
    for r in spec:
        x = t0[r["prompt"]] * r["drafted"]
        steps = r["rounds"] + r["plain_steps"]
        num += (r["verify_ms"] - steps * t0[r["prompt"]]) * x
        den += x * x
    beta = num / den if den else 0.0
    model = [r for r in spec if r["mode"] == "model"]
    d = sum(r["draft_ms"] for r in model) / sum(r["drafted"] for r in model) if model else 0.0
    ratio = 0.0
    cfg = run.get("config", {})
    if "draft" in cfg and "target" in cfg:
        from tightwad.fetch_models import ensure_model

        ratio = (
            ensure_model(cfg["draft"]).stat().st_size / ensure_model(cfg["target"]).stat().st_size
        )
    return Fit(t0, prefill, beta, d, ratio)


def _predict_run(
    run: dict[str, Any],
) -> tuple[list[list[Any]], Fit]:
    fit = fit_run(run)
    reqs = [r for r in run["requests"] if not r["error"] and r["completion_tokens"]]
    base = run["baseline"]
    # The gateway systems report rounds; llama-server rows cannot be predicted this way.
    tw = [r for r in reqs if r["rounds"] + r["plain_steps"] > 0 and r["prompt"] in fit.t0_ms]
    base_reqs = [r for r in tw if r["system"] == base]
    rows: list[list[Any]] = []

    def tps(rs: list[dict[str, Any]], times: list[float]) -> float:
        return sum(r["completion_tokens"] for r in rs) / sum(times)

    for system in dict.fromkeys(r["system"] for r in tw):
        if system == base:
            continue
        for kind in [*dict.fromkeys(r["kind"] for r in tw), "all"]:
            group = [r for r in tw if r["system"] == system and kind in ("all", r["kind"])]
            prompts = {r["prompt"] for r in group}
            ref = [r for r in base_reqs if r["prompt"] in prompts]
            if not group or not ref:
                continue
            measured = tps(group, [_gen_ms(r) for r in group]) / tps(ref, [_gen_ms(r) for r in ref])
            predicted = tps(group, [fit.predict_ms(r) for r in group]) / tps(
                ref, [fit.predict_ms(r) for r in ref]
            )
            err = predicted / measured - 1.0
            rows.append(
                [run["scenario"], system, kind, measured, predicted, err * 100.0, abs(err) <= 0.15]
            )
    return rows, fit


def _best_k(alpha: float, model: bool) -> tuple[int, float]:
    """Best k and its speedup on the assumed GPU when every round drafts k tokens each accepted
    with probability ``alpha`` independently: E[tokens per round] = (1 - a^(k+1)) / (1 - a)."""
    g = GPU_ASSUMPTIONS
    t0 = g["target_step_ms"] + g["network_rtt_ms"]
    best = (0, 1.0)
    for k in range(1, 33):
        emitted = float(k + 1) if alpha >= 1.0 else (1 - alpha ** (k + 1)) / (1 - alpha)
        cost = (
            g["target_step_ms"] * (1 + g["verify_extra_per_draft_token"] * k)
            + g["network_rtt_ms"]
            + (
                k * g["draft_model_ms_per_token"] + g["draft_rtt_ms"]
                if model
                else g["ngram_draft_ms"]
            )
        )
        speedup = emitted * t0 / cost
        if speedup > best[1]:
            best = (k, speedup)
    return best


def _projection(runs: list[dict[str, Any]]) -> list[list[Any]]:
    g = GPU_ASSUMPTIONS
    t0 = g["target_step_ms"] + g["network_rtt_ms"]
    rows = []
    for run in runs:
        reqs = [r for r in run["requests"] if not r["error"] and r["rounds"]]
        for system in dict.fromkeys(r["system"] for r in reqs):
            for kind in [*dict.fromkeys(r["kind"] for r in reqs), "all"]:
                group = [r for r in reqs if r["system"] == system and kind in ("all", r["kind"])]
                if not group:
                    continue
                rounds = sum(r["rounds"] for r in group)
                plain = sum(r["plain_steps"] for r in group)
                drafted = sum(r["drafted"] for r in group)
                accepted = sum(r["accepted"] for r in group)
                k = drafted / rounds
                model = any(r["mode"] == "model" for r in group)
                per_round = (
                    g["target_step_ms"] * (1 + g["verify_extra_per_draft_token"] * k)
                    + g["network_rtt_ms"]
                    + (
                        k * g["draft_model_ms_per_token"] + g["draft_rtt_ms"]
                        if model
                        else g["ngram_draft_ms"]
                    )
                )
                tokens = rounds + accepted + plain
                time_ms = rounds * per_round + plain * t0
                speedup = (tokens * t0) / time_ms
                alpha = accepted / drafted if drafted else 0.0
                best_k, best = _best_k(alpha, model)
                rows.append([system, kind, alpha, 1 + accepted / rounds, k, speedup, best_k, best])
    return rows


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


async def run(args: argparse.Namespace) -> Report:
    engine = _load(Path(args.engine))
    shape = fit_verify_shape(engine["extra"]["verify_sweep"])
    runs = [_load(Path(p)) for p in args.runs.split(",") if Path(p).is_file()]  # noqa: ASYNC240
    report = Report(
        scenario=NAME,
        machine=machine_facts(),
        config={
            "engine": str(args.engine),
            "runs": [r["machine"]["date"] + " " + r["scenario"] for r in runs],
        },
    )
    rows: list[list[Any]] = []
    fits: dict[str, Fit] = {}
    for run_data in runs:
        r, fit = _predict_run(run_data)
        rows += r
        fits[run_data["scenario"]] = fit
    report.tables.append(
        (
            "Fitted parameters",
            [
                "run",
                "t0 ms per prompt (plain step, whole stack)",
                "beta (verify cost per extra draft token / t0)",
                "draft ms / drafted token",
            ],
            [
                [
                    s,
                    " ".join(f"{p}={v:.0f}" for p, v in f.t0_ms.items()),
                    f.beta,
                    f.draft_ms_per_token,
                ]
                for s, f in fits.items()
            ],
        )
    )
    report.tables.append(
        (
            "Engine scenario's Verify(k) sweep, rtt(k) / rtt(0) (short prompt): shape check",
            ["k", "rtt(k)/rtt(0)", "1 + beta*k with each run's beta"],
            [[k, y, " ".join(f"{1 + f.beta * k:.2f}" for f in fits.values())] for k, y in shape],
        )
    )
    report.tables.append(
        (
            "Predicted vs measured speedup over the target alone (same run)",
            ["run", "system", "kind", "measured", "predicted", "error %", "within 15%"],
            rows,
        )
    )
    within = [r for r in rows if r[2] != "all"]
    if within:
        ok = sum(1 for r in within if r[6])
        report.target(
            "predictions within 15% of measured (per system and kind)",
            float(ok) / len(within),
            "all (1.0)",
            ok == len(within),
        )
    proj = _projection(runs)
    report.tables.append(
        (
            "PROJECTION (not measured): GPU cluster, acceptance as measured here",
            [
                "system",
                "kind",
                "acceptance",
                "mean acc. len",
                "mean k here",
                "projected, k and k=0 rounds as here",
                "best k (drafting every round)",
                "projected at best k",
            ],
            proj,
        )
    )
    report.notes.append("Projection assumptions: " + json.dumps(GPU_ASSUMPTIONS))
    report.notes.append(
        "Two projections: (a) keeps this run's rounds, k and k = 0 steps (conservative: on a GPU "
        "the controller would not have stopped drafting); (b) drafts every round at the best k "
        "assuming each draft token is accepted independently with the acceptance measured here "
        "(optimistic for n-gram, whose acceptance comes in runs; i.i.d. is the standard "
        "Leviathan et al. 2023 model)."
    )
    report.extra.update(
        {
            "fits": {k: asdict(f) for k, f in fits.items()},
            "predictions": rows,
            "projection": proj,
            "plot_bars": [(f"{r[1]}/{r[2]}"[:18], r[4]) for r in rows if r[2] == "all"],
            "plot_ylabel": "predicted speedup (all kinds)",
            "plot_series": [("measured vs predicted", [r[3] for r in rows], [r[4] for r in rows])],
            "plot_series_x": "measured speedup",
            "plot_series_y": "predicted speedup",
        }
    )
    return report
