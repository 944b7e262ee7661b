"""Smoke test of the benchmark harness: every output of a tiny run exists and is sane.

One thread per engine: on a shared 2-core machine that is the setting that stays fast under
other load (two spinning llama.cpp threads collapse when the cores are oversubscribed).

No timing assertions: this checks that ``benchmarks.run.main`` drives a real stack end to end
(SmolLM2-135M, a few tokens) and writes JSON, markdown and PNG with the fields the README and
the cost model read.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.run import main

pytestmark = pytest.mark.engine

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _outputs(root: Path, scenario: str) -> dict:
    d = root / scenario
    for ext in ("json", "md", "png"):
        assert (d / f"latest.{ext}").stat().st_size > 0, f"{scenario}: no latest.{ext}"
    assert (d / "latest.png").read_bytes()[:8] == PNG_MAGIC
    data = json.loads((d / "latest.json").read_text())
    for key in (
        "cpu_model",
        "cores",
        "ram_gib",
        "os",
        "python",
        "llama_cpp_python",
        "tightwad",
        "date",
        "git_commit",
    ):
        assert key in data["machine"], key
    return data


def test_draft_free_and_cost_model_outputs(tmp_path: Path, smollm_path: Path) -> None:
    common = ["--out", str(tmp_path)]
    assert (
        main(
            [
                *common,
                "draft-free",
                "--model",
                "smollm2-135m",
                "--kinds",
                "edit",
                "--per-kind",
                "1",
                # Long enough for a copy: n-gram routes draft nothing until a 12-token match
                # (short drafts cannot pay on a CPU), and the cost model projects drafted runs.
                "--max-tokens",
                "48",
                "--threads",
                "1",
                "--no-llama-server",
            ]
        )
        == 0
    )
    data = _outputs(tmp_path, "draft-free")
    assert data["baseline"] == "target-alone"
    reqs = data["requests"]
    assert {r["system"] for r in reqs} == {"target-alone", "tightwad-ngram", "tightwad-prediction"}
    assert all(not r["error"] and r["completion_tokens"] > 0 for r in reqs), reqs
    assert all(r["decode_tps"] > 0 and r["ttft_s"] > 0 for r in reqs)
    base = [r for r in reqs if r["system"] == "target-alone"]
    assert all(r["plain_steps"] == r["completion_tokens"] for r in base)  # k = 0 throughout
    rows = {(r["system"], r["kind"]): r for r in data["summary"]}
    assert rows[("target-alone", "all")]["ratio"] == pytest.approx(1.0)
    assert rows[("tightwad-prediction", "edit")]["ratio"] > 0
    md = (tmp_path / "draft-free" / "latest.md").read_text()
    assert "| system | kind |" in md and "tightwad-ngram" in md

    assert (
        main(
            [
                *common,
                "engine",
                "--model",
                "smollm2-135m",
                "--ks",
                "0,8",
                "--reps",
                "2",
                "--gen-tokens",
                "4",
                "--gen-runs",
                "1",
                "--threads",
                "1",
                "--no-llama-server",
            ]
        )
        == 0
    )
    eng = _outputs(tmp_path, "engine")
    sweep = eng["extra"]["verify_sweep"]
    assert set(sweep) == {"0", "8"} and all(len(v["rtt"]) == 2 for v in sweep.values())
    assert eng["extra"]["generate_tps"]["engine"][0] > 0

    assert (
        main(
            [
                *common,
                "cost-model",
                "--engine",
                str(tmp_path / "engine" / "latest.json"),
                "--runs",
                str(tmp_path / "draft-free" / "latest.json"),
            ]
        )
        == 0
    )
    cm = _outputs(tmp_path, "cost-model")
    preds = cm["extra"]["predictions"]
    assert preds and all(p[4] > 0 for p in preds)  # predicted speedups
    assert cm["extra"]["projection"]


def test_overhead_outputs(tmp_path: Path) -> None:
    assert (
        main(
            [
                "--out",
                str(tmp_path),
                "overhead",
                "--commands",
                "50",
                "--tokens",
                "300",
                "--streams",
                "1",
            ]
        )
        == 0
    )
    data = _outputs(tmp_path, "overhead")
    assert data["extra"]["gateway_round_ms"]["p50"] > 0
    assert data["extra"]["stream_tps"][0] > 0 and data["extra"]["stream_tps_ngram"][0] > 0
    assert {t["target"] for t in data["targets"]} >= {"streamed tokens/s, one stream, draft none"}
