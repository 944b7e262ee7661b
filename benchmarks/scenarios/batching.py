"""Scenario ``batching``: N concurrent streaming clients through the real gateway (embedded
engine on an agent, continuous batching on) vs ``llama-server -np 4`` (its continuous batching),
same model, threads and prompts, one run; aggregate tok/s per N as a ratio to llama-server's.

Each round starts N clients at once, each streaming a different greedy prompt of the suite;
aggregate tok/s = completion tokens of the round / the round's wall time (prefill included:
a round is what a client population sees). Rounds alternate the system order.

``python -m benchmarks.scenarios.batching [--clients 1,2,4] [--rounds 2] [--max-tokens 64]``
(``benchmarks.run`` registers it as ``batching`` once listed in its SCENARIOS).

Target (issue 15): aggregate >= 1.0x llama-server at every N, >= 0.97x at N = 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from typing import Any

import openai

from benchmarks.machine import machine_facts
from benchmarks.measure import RequestResult, stream_chat
from benchmarks.prompts import Prompt, select
from benchmarks.report import RESULTS, Report, write_report
from benchmarks.stacks import Route, gateway_stack, llama_server
from tightwad.fetch_models import ensure_model

NAME = "batching"
SYSTEMS = ("tightwad", "llama-server")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="qwen2.5-coder-0.5b", help="tightwad.fetch_models name")
    p.add_argument("--clients", default="1,2,4", help="comma-separated client counts")
    p.add_argument("--rounds", type=int, default=2, help="rounds per N and system")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--slots", type=int, default=4, help="llama-server -np / engine sessions")


def _prompts(n: int, round_: int) -> list[Prompt]:
    greedy = [p for p in select(None, 2) if not p.sampled]
    return [greedy[(round_ * n + i) % len(greedy)] for i in range(n)]


async def _round(
    client: openai.AsyncOpenAI, system: str, model: str, prompts: Sequence[Prompt], max_tokens: int
) -> tuple[float, list[RequestResult]]:
    t0 = time.perf_counter()
    results = await asyncio.gather(
        *(stream_chat(client, system, p, model=model, max_tokens=max_tokens) for p in prompts)
    )
    return time.perf_counter() - t0, list(results)


async def run(args: argparse.Namespace) -> Report:
    model = ensure_model(args.model)
    counts = [int(c) for c in args.clients.split(",") if c.strip()]
    report = Report(
        scenario=NAME,
        machine=machine_facts(),
        config={
            "model": args.model,
            "threads": args.threads,
            "max_tokens": args.max_tokens,
            "clients": counts,
            "rounds": args.rounds,
            "slots": args.slots,
        },
        baseline="llama-server",
    )
    log_dir = RESULTS / NAME / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    # agg[system][n]: (tokens, wall_s) of each round
    agg: dict[str, dict[int, list[tuple[int, float]]]] = {
        s: {n: [] for n in counts} for s in SYSTEMS
    }
    async with (
        gateway_stack(
            model,
            [Route("none", "none")],
            threads=args.threads,
            ctx_size=2048,
            max_sessions=max(args.slots, max(counts)),
        ) as gw,
        llama_server(
            model,
            threads=args.threads,
            ctx_size=2048 * args.slots,
            extra=["-np", str(args.slots)],
            log_path=log_dir / "llama-server.log",
        ) as ls,
    ):
        endpoints = {
            "tightwad": (f"{gw.url}/v1", "none"),
            "llama-server": (f"{ls}/v1", "m"),
        }
        clients = {
            s: openai.AsyncOpenAI(base_url=u, api_key="bench", max_retries=0, timeout=600.0)
            for s, (u, _m) in endpoints.items()
        }
        try:
            warm = Prompt("warm-up", "warm-up", "Say hello.")
            for s, (_u, m) in endpoints.items():
                await stream_chat(clients[s], s, warm, model=m, max_tokens=8)
            for n in counts:
                for r in range(args.rounds):
                    order = SYSTEMS if r % 2 == 0 else SYSTEMS[::-1]
                    prompts = _prompts(n, r)
                    for s in order:
                        wall, results = await _round(
                            clients[s], s, endpoints[s][1], prompts, args.max_tokens
                        )
                        for res in results:
                            res.prompt = f"{res.prompt}@N={n}"
                        report.requests += results
                        tokens = sum(x.completion_tokens for x in results)
                        agg[s][n].append((tokens, wall))
                        errors = [x.error for x in results if x.error]
                        print(
                            f"N={n} round {r} {s}: {tokens / wall:.1f} tok/s aggregate"
                            + (f" ERRORS {errors}" if errors else ""),
                            file=sys.stderr,
                        )
        finally:
            for c in clients.values():
                await c.close()
    _summarize(report, agg, counts)
    return report


def _tps(rounds: list[tuple[int, float]]) -> float:
    tokens = sum(t for t, _w in rounds)
    wall = sum(w for _t, w in rounds)
    return tokens / wall if wall else 0.0


def _summarize(
    report: Report, agg: dict[str, dict[int, list[tuple[int, float]]]], counts: list[int]
) -> None:
    rows: list[list[Any]] = []
    series = []
    for s in SYSTEMS:
        series.append((s, counts, [round(_tps(agg[s][n]), 2) for n in counts]))
    for n in counts:
        tw, ls = _tps(agg["tightwad"][n]), _tps(agg["llama-server"][n])
        ratio = tw / ls if ls else None
        rows.append([n, f"{tw:.2f}", f"{ls:.2f}", f"{ratio:.2f}x" if ratio else "n/a"])
        goal = 0.97 if n == 1 else 1.0
        report.target(
            f"aggregate tok/s vs llama-server -np at N={n}",
            ratio,
            f">= {goal}x",
            None if ratio is None else ratio >= goal,
        )
    report.tables.append(
        (
            "Aggregate tok/s by concurrent clients (same run)",
            ["clients", "tightwad tok/s", "llama-server tok/s", "ratio"],
            rows,
        )
    )
    report.extra["aggregate_tps"] = {s: dict(zip(counts, v, strict=True)) for s, _c, v in series}
    report.extra["plot_series"] = series
    report.extra["plot_series_x"] = "concurrent clients"
    report.extra["plot_series_y"] = "aggregate tok/s"
    report.notes.append(
        "aggregate tok/s = completion tokens of a round of N concurrent streamed requests / the "
        "round's wall time (prefill included), client side, real openai client; tightwad: the "
        "real gateway over an agent's embedded engine (route draft none, step batching on); "
        "llama-server: -np slots with continuous batching, flash attention, same threads."
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scenarios.batching")
    add_arguments(p)
    args = p.parse_args(argv)
    from tightwad.logs import configure_logging

    configure_logging("warning")
    report = asyncio.run(run(args))
    for kind, path in write_report(report).items():
        print(f"{kind}: {path}")
    for t in report.targets:
        state = "met" if t["met"] else ("MISSED" if t["met"] is False else "n/a")
        value = t["measured"]
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"  [{state}] {t['target']}: {shown} (goal {t['goal']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
