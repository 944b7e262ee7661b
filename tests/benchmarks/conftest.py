"""The benchmark harness lives in the top-level ``benchmarks`` package, outside ``tightwad``:
make the repository root importable for these tests (pytest's entry point does not add it)."""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
