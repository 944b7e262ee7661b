"""Scenario ``draft-free``: n-gram and predicted-output drafting through the gateway vs the
target alone (the baseline), vs llama.cpp's own in-process n-gram speculation
(``llama-server --spec-type ngram-simple``) and plain ``llama-server``: same model
(Qwen2.5-Coder-1.5B by default), same threads, same prompts, one run.

Targets (issue 7): >= 2.0x the target alone on edit prompts, and >= llama-server's n-gram.
"""

from __future__ import annotations

import argparse
from typing import Any

from benchmarks.machine import machine_facts
from benchmarks.prompts import select
from benchmarks.report import Report, summarize
from benchmarks.scenarios.common import (
    System,
    add_common_arguments,
    greedy_identity_table,
    kinds_arg,
    run_matrix,
)
from benchmarks.stacks import Route, gateway_stack, llama_server
from tightwad.fetch_models import ensure_model

NAME = "draft-free"
BASELINE = "target-alone"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p)
    p.add_argument(
        "--model", default="qwen2.5-coder-1.5b", help="model name of tightwad.fetch_models"
    )
    p.add_argument("--max-draft", type=int, default=64, help="gateway max draft tokens")
    p.add_argument(
        "--llama-spec",
        default="--spec-type ngram-simple",
        help="llama-server's speculation flags for its n-gram system",
    )
    p.add_argument("--no-llama-server", action="store_true", help="skip the llama-server systems")


async def run(args: argparse.Namespace) -> Report:
    model = ensure_model(args.model)
    prompts = select(kinds_arg(args.kinds), args.per_kind)
    report = Report(
        scenario=NAME,
        machine=machine_facts(),
        config={
            "model": args.model,
            "threads": args.threads,
            "max_tokens": args.max_tokens,
            "prompts": len(prompts),
            "repeat": args.repeat,
            "max_draft": args.max_draft,
            "llama_spec": args.llama_spec,
        },
        baseline=BASELINE,
    )
    routes = [
        Route("none", "none"),
        Route("ngram", "ngram", max_draft_tokens=args.max_draft),
        Route("prediction", "prediction", max_draft_tokens=args.max_draft),
    ]
    async with gateway_stack(model, routes, threads=args.threads) as gw:
        systems = [
            System(BASELINE, f"{gw.url}/v1", "none"),
            System("tightwad-ngram", f"{gw.url}/v1", "ngram"),
            System("tightwad-prediction", f"{gw.url}/v1", "prediction", True, ("edit",)),
        ]
        if args.no_llama_server:
            report.requests = await run_matrix(
                systems, prompts, max_tokens=args.max_tokens, repeat=args.repeat
            )
        else:
            log_dir = _log_dir()
            async with (
                llama_server(
                    model,
                    threads=args.threads,
                    extra=args.llama_spec.split(),
                    log_path=log_dir / "llama-server-ngram.log",
                ) as ls_ngram,
                llama_server(
                    model, threads=args.threads, log_path=log_dir / "llama-server.log"
                ) as ls_plain,
            ):
                systems += [
                    System("llama-server-ngram", f"{ls_ngram}/v1", "m"),
                    System("llama-server", f"{ls_plain}/v1", "m"),
                ]
                report.requests = await run_matrix(
                    systems, prompts, max_tokens=args.max_tokens, repeat=args.repeat
                )
    report.tables.append(greedy_identity_table(report.requests, BASELINE))
    _targets(report)
    report.notes.append(
        "tok/s = completion tokens / (wall time - the server's own prompt time), client side, "
        "streamed through the real openai client; ratios use the baseline of the same run."
    )
    report.notes.append(
        "prediction runs only on edit prompts (the others carry no predicted output)."
    )
    return report


def _log_dir() -> Any:
    from benchmarks.report import RESULTS

    d = RESULTS / NAME / "logs"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _targets(report: Report) -> None:
    rows = {(r["system"], r["kind"]): r for r in summarize(report.requests, BASELINE)}
    base = rows.get((BASELINE, "edit"))
    ls = rows.get(("llama-server-ngram", "edit"))
    for system in ("tightwad-ngram", "tightwad-prediction"):
        row = rows.get((system, "edit"))
        if row is None or base is None:
            continue
        ratio = row["ratio"]
        report.target(
            f"{system} on edit vs target alone", ratio, ">= 2.0x", ratio is not None and ratio >= 2
        )
        if ls is not None:
            report.target(
                f"{system} on edit vs llama-server-ngram (tok/s)",
                row["decode_tps"] / ls["decode_tps"] if ls["decode_tps"] else None,
                ">= 1.0x",
                row["decode_tps"] >= ls["decode_tps"],
            )
