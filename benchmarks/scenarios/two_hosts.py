"""Scenario ``two-hosts``: model drafting with the draft and the target engine on different
"hosts": each its own agent Engine process (:mod:`tightwad.agent.engine_host`, what an agent
runs pooled engines in) pinned with ``taskset`` to its own core, one thread each; the gateway
(and the client) in this process, not pinned. Gateway routes over the same two engines:

- ``target-alone`` (baseline): draft none, the target on its core;
- ``tightwad-model``: the drafter proposes, the target verifies, one after the other;
- ``tightwad-model-pipeline``: while the target verifies round n, the drafter (on the other
  core) already drafts round n+1 (``RouteSpec.pipeline``).

Pair: Qwen2.5-Coder 0.5B -> 1.5B (``--pair qwen``) or SmolLM2-135M drafting for itself
(``--pair smollm``, a fast smoke pair: acceptance ~1, only the mechanics are measured).

Targets (issue 7): the pipelined route beats the non-pipelined one (tok/s over all kinds);
both reported against the target alone.
"""

from __future__ import annotations

import argparse
import os

from benchmarks.machine import machine_facts
from benchmarks.prompts import select
from benchmarks.report import RESULTS, Report, summarize
from benchmarks.scenarios.common import (
    System,
    add_common_arguments,
    greedy_identity_table,
    kinds_arg,
    run_matrix,
)
from benchmarks.stacks import Route, engine_host_process, gateway_for
from tightwad.fetch_models import ensure_model

NAME = "two-hosts"
BASELINE = "target-alone"
PAIRS = {
    "qwen": ("qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b"),
    "smollm": ("smollm2-135m", "smollm2-135m"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p)
    p.set_defaults(threads=1)
    p.add_argument("--pair", choices=sorted(PAIRS), default="qwen", help="target/draft pair")
    p.add_argument("--max-draft", type=int, default=16, help="gateway max draft tokens")
    p.add_argument("--target-core", type=int, default=1, help="CPU the target engine runs on")
    p.add_argument("--draft-core", type=int, default=0, help="CPU the draft engine runs on")
    p.add_argument("--ctx-size", type=int, default=4096)


def pin_prefix(core: int | None) -> list[str]:
    """``taskset -c CORE`` (nothing when ``core`` is None)."""
    return [] if core is None else ["taskset", "-c", str(core)]


def check_cores(target_core: int, draft_core: int, available: set[int]) -> None:
    if target_core == draft_core:
        raise SystemExit(f"two-hosts: target and draft need different cores (both {target_core})")
    missing = {target_core, draft_core} - available
    if missing:
        raise SystemExit(
            f"two-hosts: core(s) {sorted(missing)} not available to this process "
            f"(allowed: {sorted(available)})"
        )


async def run(args: argparse.Namespace) -> Report:
    check_cores(args.target_core, args.draft_core, os.sched_getaffinity(0))
    target_name, draft_name = PAIRS[args.pair]
    target, draft = ensure_model(target_name), ensure_model(draft_name)
    prompts = select(kinds_arg(args.kinds), args.per_kind)
    report = Report(
        scenario=NAME,
        machine=machine_facts(),
        config={
            "target": target_name,
            "draft": draft_name,
            "threads_per_engine": args.threads,
            "target_core": args.target_core,
            "draft_core": args.draft_core,
            "max_tokens": args.max_tokens,
            "prompts": len(prompts),
            "repeat": args.repeat,
            "max_draft": args.max_draft,
        },
        baseline=BASELINE,
    )
    logs = (args.out or RESULTS) / NAME / "logs"
    routes = [
        Route("none", "none"),
        Route("model", "model", True, False, args.max_draft),
        Route("model-pipeline", "model", True, True, args.max_draft),
    ]
    common = {"threads": args.threads, "ctx_size": args.ctx_size, "max_sessions": 2}
    async with (
        engine_host_process(
            target,
            model_id="target",
            prefix=pin_prefix(args.target_core),
            log_path=logs / "target-engine.log",
            **common,
        ) as target_address,
        engine_host_process(
            draft,
            model_id="draft",
            prefix=pin_prefix(args.draft_core),
            log_path=logs / "draft-engine.log",
            **common,
        ) as draft_address,
        gateway_for(target_address, routes, draft_address=draft_address) as url,
    ):
        systems = [
            System(BASELINE, f"{url}/v1", "none"),
            System("tightwad-model", f"{url}/v1", "model"),
            System("tightwad-model-pipeline", f"{url}/v1", "model-pipeline"),
        ]
        report.requests = await run_matrix(
            systems, prompts, max_tokens=args.max_tokens, repeat=args.repeat
        )
    report.tables.append(greedy_identity_table(report.requests, BASELINE))
    add_targets(report, summarize(report.requests, BASELINE))
    report.notes.append(
        f"Target engine pinned to core {args.target_core}, draft engine to core "
        f"{args.draft_core} (taskset), {args.threads} thread(s) each, separate processes talking "
        "gRPC over loopback; the gateway and the client run in the benchmark process, unpinned. "
        "tok/s = completion tokens / (wall - server prompt time); ratios vs target alone."
    )
    return report


def add_targets(report: Report, rows: list[dict]) -> None:
    by = {(r["system"], r["kind"]): r for r in rows}
    plain, piped = by.get(("tightwad-model", "all")), by.get(("tightwad-model-pipeline", "all"))
    if plain and piped and plain["decode_tps"]:
        ratio = piped["decode_tps"] / plain["decode_tps"]
        report.target("pipelined vs non-pipelined (all kinds, tok/s)", ratio, "> 1.0x", ratio > 1)
    for row in (plain, piped):
        if row is not None:
            report.target(
                f"{row['system']} vs target alone (all kinds)", row["ratio"], "report", None
            )
