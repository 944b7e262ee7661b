"""Tightwad's benchmark suite: whole scenarios, end to end, each against its baseline measured
in the same run. ``python -m benchmarks.run SCENARIO`` (see :mod:`benchmarks.run`)."""
