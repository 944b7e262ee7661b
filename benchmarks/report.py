"""Results of one scenario run: the summary per (system, prompt kind), and its three outputs
under ``benchmarks/results/<scenario>/``: raw JSON, a markdown table and a PNG plot (each also
copied to ``latest.*``).

Summary figures per (system, kind), over that kind's requests: decode tok/s (mean), ratio to the
scenario's baseline system for the same kind, acceptance rate (accepted / drafted), mean accepted
length (1 + accepted / rounds), acceptance by draft position (fraction of drafted rounds that
accepted position i), TTFT, draft and verify ms per round (drafted rounds and plain steps both
count as rounds), and rounds at k = 0 (plain steps).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any

from benchmarks.measure import RequestResult

__all__ = ["Report", "summarize", "write_report"]

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Report:
    """Everything one run produced, ready to write."""

    scenario: str
    machine: dict[str, Any]
    config: dict[str, Any]
    # One baseline system for all, or per system (e.g. per added latency); None: no ratios.
    baseline: str | Mapping[str, str] | None = None
    requests: list[RequestResult] = field(default_factory=list)
    tables: list[tuple[str, list[str], list[list[Any]]]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)

    def target(self, name: str, value: float | None, goal: str, met: bool | None) -> None:
        self.targets.append({"target": name, "measured": value, "goal": goal, "met": met})


def _mean(xs: Sequence[float]) -> float:
    return fmean(xs) if xs else 0.0


def summarize(
    results: Sequence[RequestResult], baseline: str | Mapping[str, str] | None
) -> list[dict[str, Any]]:
    """One row per (system, kind) plus an ``all`` row per system, in first-seen order.
    ``baseline``: the system ratios are taken against, or a map system -> its baseline."""
    ok = [r for r in results if not r.error and r.completion_tokens]
    systems = list(dict.fromkeys(r.system for r in results))
    kinds = list(dict.fromkeys(r.kind for r in results))
    rows: list[dict[str, Any]] = []
    for system in systems:
        for kind in [*kinds, "all"]:
            group = [r for r in ok if r.system == system and (kind == "all" or r.kind == kind)]
            if not group:
                continue
            base = None
            ref_system = baseline.get(system) if isinstance(baseline, Mapping) else baseline
            if ref_system:
                # The baseline over the same prompts (a system may run only some kinds).
                prompts = {r.prompt for r in group}
                ref = [r.decode_tps for r in ok if r.system == ref_system and r.prompt in prompts]
                base = _mean(ref) or None
            rows.append(_row(system, kind, group, base))
    return rows


def _row(system: str, kind: str, group: list[RequestResult], base: float | None) -> dict[str, Any]:
    tps = _mean([r.decode_tps for r in group])
    drafted = sum(r.drafted for r in group)
    accepted = sum(r.accepted for r in group)
    rounds = sum(r.rounds for r in group)
    plain = sum(r.plain_steps for r in group)
    all_rounds = rounds + plain
    width = max((len(r.accepted_by_position) for r in group), default=0)
    by_pos = [
        sum(r.accepted_by_position[i] for r in group if i < len(r.accepted_by_position))
        for i in range(width)
    ]
    return {
        "system": system,
        "kind": kind,
        "requests": len(group),
        "tokens": sum(r.completion_tokens for r in group),
        "decode_tps": tps,
        "e2e_tps": _mean([r.e2e_tps for r in group]),
        "ratio": (tps / base) if base else None,
        "acceptance_rate": (accepted / drafted) if drafted else None,
        "mean_accepted_length": (1.0 + accepted / rounds) if rounds else None,
        "acceptance_by_position": [c / rounds for c in by_pos] if rounds else [],
        "ttft_ms": _mean([r.ttft_s * 1000.0 for r in group]),
        "draft_ms_per_round": (sum(r.draft_ms for r in group) / all_rounds) if all_rounds else None,
        "verify_ms_per_round": (sum(r.verify_ms for r in group) / all_rounds)
        if all_rounds
        else None,
        "rounds": rounds,
        "plain_steps": plain,
        "drafted": drafted,
        "accepted": accepted,
    }


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    if isinstance(v, list):
        return " ".join(f"{x:.2f}" for x in v[:8]) or "-"
    return str(v)


SUMMARY_COLUMNS = (
    ("system", "system"),
    ("kind", "kind"),
    ("requests", "n"),
    ("decode_tps", "tok/s"),
    ("ratio", "x base"),
    ("acceptance_rate", "accept"),
    ("mean_accepted_length", "mean acc. len"),
    ("acceptance_by_position", "accept by pos (1..8)"),
    ("ttft_ms", "TTFT ms"),
    ("draft_ms_per_round", "draft ms/round"),
    ("verify_ms_per_round", "verify ms/round"),
    ("plain_steps", "k=0 rounds"),
)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out.extend("| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows)
    return "\n".join(out)


def summary_markdown(rows: Sequence[dict[str, Any]]) -> str:
    headers = [h for _, h in SUMMARY_COLUMNS]
    body = [[row.get(k) for k, _ in SUMMARY_COLUMNS] for row in rows]
    return markdown_table(headers, body)


def render_markdown(report: Report, rows: Sequence[dict[str, Any]]) -> str:
    m = report.machine
    lines = [
        f"# Benchmark `{report.scenario}` — {m.get('date', '')}",
        "",
        f"Machine: {m.get('cpu_model')}, {m.get('cores')} cores, {m.get('ram_gib')} GiB RAM, "
        f"{m.get('os')}; Python {m.get('python')}, llama-cpp-python {m.get('llama_cpp_python')}, "
        f"tightwad {m.get('tightwad')} @ {str(m.get('git_commit'))[:10]}"
        f"{' (dirty tree)' if m.get('git_dirty') else ''}; "
        f"load average at start {m.get('load_average_at_start')}.",
        "",
        "Config: " + ", ".join(f"{k}={v}" for k, v in report.config.items()),
        "",
    ]
    if rows:
        base = report.baseline
        if isinstance(base, Mapping):
            base = ", ".join(sorted(set(base.values())))
        lines += [
            f"## Per system and prompt kind (baseline: `{base}`)",
            "",
            summary_markdown(rows),
            "",
        ]
    for title, headers, body in report.tables:
        lines += [f"## {title}", "", markdown_table(headers, body), ""]
    if report.targets:
        lines += ["## Targets", ""]
        body = [
            [
                t["target"],
                t["measured"],
                t["goal"],
                "met" if t["met"] else ("missed" if t["met"] is False else "n/a"),
            ]
            for t in report.targets
        ]
        lines += [markdown_table(["target", "measured", "goal", "result"], body), ""]
    if report.notes:
        lines += ["## Notes", "", *[f"- {n}" for n in report.notes], ""]
    return "\n".join(lines)


def _plot(report: Report, rows: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_kind = [r for r in rows if r["kind"] != "all"]
    systems = list(dict.fromkeys(r["system"] for r in per_kind))
    kinds = list(dict.fromkeys(r["kind"] for r in per_kind))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    ax = axes[0]
    if per_kind:
        width = 0.8 / max(1, len(systems))
        for i, system in enumerate(systems):
            vals = [
                next(
                    (r["decode_tps"] for r in per_kind if r["system"] == system and r["kind"] == k),
                    0.0,
                )
                for k in kinds
            ]
            xs = [j + i * width for j in range(len(kinds))]
            ax.bar(xs, vals, width=width, label=system)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(kinds))], kinds)
        ax.set_ylabel("decode tok/s")
        ax.legend(fontsize=8)
    elif report.extra.get("plot_bars"):
        labels, vals = zip(*report.extra["plot_bars"], strict=True)
        ax.bar(range(len(vals)), vals)
        ax.set_xticks(range(len(vals)), labels, rotation=20, fontsize=8)
        ax.set_ylabel(report.extra.get("plot_ylabel", "value"))
    ax.set_title(f"{report.scenario}: {report.machine.get('date', '')[:10]}")
    ax2 = axes[1]
    drawn = False
    series_first = bool(report.extra.get("plot_series_first"))  # over acceptance by position
    for r in [] if series_first else rows:
        if r["kind"] == "all" and r["acceptance_by_position"]:
            pos = r["acceptance_by_position"][:16]
            ax2.plot(range(1, len(pos) + 1), pos, marker="o", label=r["system"])
            drawn = True
    if drawn:
        ax2.set_xlabel("draft position")
        ax2.set_ylabel("fraction of drafted rounds accepting it")
        ax2.set_ylim(0, 1.05)
        ax2.legend(fontsize=8)
        ax2.set_title("acceptance by draft position (all kinds)")
    elif report.extra.get("plot_series"):
        for label, xs, ys in report.extra["plot_series"]:
            ax2.plot(xs, ys, marker="o", label=label)
        ax2.set_xlabel(report.extra.get("plot_series_x", "x"))
        ax2.set_ylabel(report.extra.get("plot_series_y", "y"))
        ax2.legend(fontsize=8)
    else:
        ax2.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: Report, out_dir: Path | None = None) -> dict[str, Path]:
    """Write ``<stamp>.json``, ``<stamp>.md``, ``<stamp>.png`` (and ``latest.*``)."""
    out = (out_dir or RESULTS) / report.scenario
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    rows = summarize(report.requests, report.baseline)
    data = {
        "scenario": report.scenario,
        "machine": report.machine,
        "config": report.config,
        "baseline": report.baseline,
        "summary": rows,
        "tables": [{"title": t, "headers": h, "rows": b} for t, h, b in report.tables],
        "targets": report.targets,
        "notes": report.notes,
        "extra": {k: v for k, v in report.extra.items() if not k.startswith("plot_")},
        "requests": [r.as_json() for r in report.requests],
    }
    paths = {
        "json": out / f"{stamp}.json",
        "md": out / f"{stamp}.md",
        "png": out / f"{stamp}.png",
    }
    paths["json"].write_text(json.dumps(data, indent=2, default=str) + "\n")
    paths["md"].write_text(render_markdown(report, rows))
    _plot(report, rows, paths["png"])
    for ext, p in paths.items():
        shutil.copyfile(p, out / f"latest.{ext}")
    return paths
