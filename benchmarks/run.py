"""``python -m benchmarks.run SCENARIO [options]``: run one scenario end to end and write its
JSON, markdown and PNG under ``benchmarks/results/<scenario>/``.

Scenarios: ``draft-free``, ``model-draft``, ``engine``, ``overhead``, ``two-hosts``, ``pool``,
``controller``, and ``cost-model`` (fits the cost model to the latest results of the others and
predicts their speedups).
``tightwadctl bench`` calls :func:`main`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from benchmarks.report import write_report
from tightwad.logs import configure_logging

__all__ = ["SCENARIOS", "main"]

SCENARIOS: dict[str, tuple[str, str]] = {
    "draft-free": (
        "benchmarks.scenarios.draft_free",
        "n-gram / predicted outputs vs target alone vs llama-server's n-gram",
    ),
    "model-draft": (
        "benchmarks.scenarios.model_draft",
        "0.5B -> 1.5B model drafting vs target alone vs llama-server -md",
    ),
    "engine": (
        "benchmarks.scenarios.engine",
        "Verify(k) vs raw decode, session-stream overhead, Generate vs llama-server",
    ),
    "overhead": (
        "benchmarks.scenarios.overhead",
        "gateway latency per round and streamed tok/s over an instant fake engine",
    ),
    "two-hosts": (
        "benchmarks.scenarios.two_hosts",
        "draft and target engines on separate pinned cores: pipelined vs not vs target alone",
    ),
    "pool": (
        "benchmarks.scenarios.pool",
        "speculation over a 2-rpc-server pool in network namespaces at 0/2/5 ms vs plain pool",
    ),
    "controller": (
        "benchmarks.scenarios.controller",
        "controller CPU and heartbeat latency with 500 simulated agents; placement time",
    ),
    "batching": (
        "benchmarks.scenarios.batching",
        "1/2/4/8 concurrent streaming clients (plain and n-gram) vs llama-server -np N",
    ),
    "cost-model": (
        "benchmarks.costmodel",
        "fit the cost model to the latest results; predicted vs measured; GPU projection",
    ),
}


def _module(name: str) -> ModuleType:
    import importlib

    return importlib.import_module(SCENARIOS[name][0])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Run one benchmark scenario; results under benchmarks/results/<scenario>/.",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="results root (default benchmarks/results)"
    )
    p.add_argument("--log-level", default="warning", help="the stack's log level")
    sub = p.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")
    for name in SCENARIOS:
        mod = _module(name)
        sp = sub.add_parser(name, help=SCENARIOS[name][1], description=mod.__doc__)
        mod.add_arguments(sp)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    # The stack's own logs would interleave with the progress bars.
    configure_logging(args.log_level)

    mod = _module(args.scenario)
    try:
        report = asyncio.run(mod.run(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        # Ctrl-C, or SIGTERM where a scenario turns it into cancellation (pool). Every
        # scenario tears down what it started on the way out (its context managers).
        print(f"{args.scenario}: interrupted; everything it started was stopped", file=sys.stderr)
        return 130
    paths = write_report(report, args.out)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    for t in report.targets:
        state = "met" if t["met"] else ("MISSED" if t["met"] is False else "n/a")
        value = t["measured"]
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"  [{state}] {t['target']}: {shown} (goal {t['goal']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
