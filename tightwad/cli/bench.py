"""``tightwadctl bench``: hand over to the repository's benchmarks package (``benchmarks.run``)
when it is importable, else say where it lives."""

from __future__ import annotations

import importlib
import importlib.util

__all__ = ["BENCH_MODULE", "run_bench"]

BENCH_MODULE = "benchmarks.run"


def run_bench(argv: list[str]) -> int:
    """Run the benchmarks' entry point with ``argv``; exit status 1 when it is not importable."""
    try:
        found = importlib.util.find_spec(BENCH_MODULE) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        print(
            "tightwadctl bench: the benchmarks are not importable here. See benchmarks/ — "
            "`tightwadctl bench` drives a live gateway: run it from a checkout of the "
            "repository (with benchmarks/ on the path) while the gateway serves.",
            flush=True,
        )
        return 1
    result = importlib.import_module(BENCH_MODULE).main(argv)
    return result if isinstance(result, int) else 0
