"""Scenario ``batching`` (issue 15's ``concurrency``): N concurrent streaming clients through
the real gateway (embedded engine on an agent, continuous batching on: EngineConfig.batch_steps,
its default; ``--no-batching`` for the engine without it) vs
``llama-server -np N`` (its continuous batching), same model, threads and prompts, one run.

Workloads, per N:
- ``mixed``: N clients each streaming a different greedy prompt of the suite (no edit prompts);
  Tightwad's plain route (``tightwad``) vs ``llama-server``.
- ``edit``: N clients streaming edit prompts (code to rewrite: the answer repeats the prompt);
  Tightwad's n-gram route (``tightwad-ngram``) vs llama-server's plain batching
  (``llama-server-edit``).

Each round starts N clients at once; aggregate tok/s = completion tokens of the round / the
round's wall time (prefill included: a round is what a client population sees); TTFT p50/p99
over every request of every round at that N. Rounds alternate the system order. One
llama-server per N (``-np N``), all started first, idle but the one in use; the gateway
stack has as many slots: max(N) engine sessions and a route concurrency of max(N) (so at
every N all clients run at once on both systems, none queues).

``python -m benchmarks.run batching [--clients 1,2,4,8] [--rounds 2] [--max-tokens 96]``
(or ``python -m benchmarks.scenarios.batching``).

Targets (issue 15): aggregate >= 1.0x llama-server at every N and >= 0.97x at N = 1; n-gram on
edit prompts >= 1.3x llama-server's plain batching at N = 4; TTFT p99 at N = 8 no worse than
llama-server's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Sequence
from statistics import quantiles
from typing import Any

import openai

from benchmarks.machine import machine_facts
from benchmarks.measure import RequestResult, stream_chat
from benchmarks.prompts import Prompt, select
from benchmarks.report import RESULTS, Report
from benchmarks.stacks import Route, gateway_stack, llama_server
from tightwad.fetch_models import ensure_model

NAME = "batching"
# system -> (workload, endpoint key, model name on that endpoint)
SYSTEMS: dict[str, tuple[str, str, str]] = {
    "tightwad": ("mixed", "gateway", "none"),
    "llama-server": ("mixed", "llama-server", "m"),
    "tightwad-ngram": ("edit", "gateway", "ngram"),
    "llama-server-edit": ("edit", "llama-server", "m"),
}
PAIRS = (("tightwad", "llama-server"), ("tightwad-ngram", "llama-server-edit"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="qwen2.5-coder-1.5b", help="tightwad.fetch_models name")
    p.add_argument("--clients", default="1,2,4,8", help="comma-separated client counts")
    p.add_argument("--rounds", type=int, default=2, help="rounds per N and system")
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--no-batching",
        action="store_true",
        help="the engine without continuous batching (EngineConfig.batch_steps off)",
    )
    p.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"comma-separated subset of {', '.join(SYSTEMS)}",
    )


def pct(xs: Sequence[float], q: int) -> float:
    """The q-th percentile (q in 1..99); 0 for no values."""
    if len(xs) < 2:
        return xs[0] if xs else 0.0
    return quantiles(xs, n=100, method="inclusive")[q - 1]


def _prompts(workload: str, n: int, round_: int) -> list[Prompt]:
    if workload == "edit":
        pool = select(("edit",), 100)
    else:
        pool = [p for p in select(None, 2) if not p.sampled and p.kind != "edit"]
    return [pool[(round_ * n + i) % len(pool)] for i in range(n)]


async def _round(
    client: openai.AsyncOpenAI, system: str, model: str, prompts: Sequence[Prompt], max_tokens: int
) -> tuple[float, list[RequestResult]]:
    t0 = time.perf_counter()
    results = await asyncio.gather(
        *(stream_chat(client, system, p, model=model, max_tokens=max_tokens) for p in prompts)
    )
    return time.perf_counter() - t0, list(results)


# agg[system][n]: (tokens, wall_s) of each round; ttft[system][n]: seconds of each request
Agg = dict[str, dict[int, list[tuple[int, float]]]]
Ttft = dict[str, dict[int, list[float]]]


async def _rounds_at(
    n: int,
    args: argparse.Namespace,
    systems: Sequence[str],
    clients: dict[str, openai.AsyncOpenAI],
    report: Report,
    agg: Agg,
    ttft: Ttft,
) -> None:
    for r in range(args.rounds):
        order = list(systems) if r % 2 == 0 else list(systems)[::-1]
        for s in order:
            workload, endpoint, model = SYSTEMS[s]
            prompts = _prompts(workload, n, r)
            wall, results = await _round(clients[endpoint], s, model, prompts, args.max_tokens)
            for res in results:
                res.prompt = f"{res.prompt}@N={n}"
            report.requests += results
            tokens = sum(x.completion_tokens for x in results)
            agg[s][n].append((tokens, wall))
            ttft[s][n] += [x.ttft_s for x in results if not x.error and x.completion_tokens]
            errors = [x.error for x in results if x.error]
            print(
                f"N={n} round {r} {s}: {tokens / wall:.1f} tok/s aggregate"
                + (f" ERRORS {errors}" if errors else ""),
                file=sys.stderr,
            )


async def run(args: argparse.Namespace) -> Report:
    model = ensure_model(args.model)
    counts = [int(c) for c in args.clients.split(",") if c.strip()]
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown or not counts or min(counts) < 1:
        raise SystemExit(f"bad --systems {unknown} or --clients {args.clients!r}")
    report = Report(
        scenario=NAME,
        machine=machine_facts(),
        config={
            "model": args.model,
            "threads": args.threads,
            "max_tokens": args.max_tokens,
            "clients": counts,
            "rounds": args.rounds,
            "systems": systems,
            "batch_steps": not args.no_batching,
        },
        baseline={"tightwad": "llama-server", "tightwad-ngram": "llama-server-edit"},
    )
    log_dir = (getattr(args, "out", None) or RESULTS) / NAME / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    agg: Agg = {s: {n: [] for n in counts} for s in systems}
    ttft: Ttft = {s: {n: [] for n in counts} for s in systems}
    warm = Prompt("warm-up", "warm-up", "Say hello.")
    async with contextlib.AsyncExitStack() as stack:
        # Every llama-server (one per N) starts before the gateway stack: forking a process
        # whose gRPC threads are running can abort the child before it execs.
        servers: dict[int, str] = {}
        for n in counts:
            servers[n] = await stack.enter_async_context(
                llama_server(
                    model,
                    threads=args.threads,
                    ctx_size=2048 * n,
                    extra=["-np", str(n)],
                    log_path=log_dir / f"llama-server-np{n}.log",
                )
            )
        gw = await stack.enter_async_context(
            gateway_stack(
                model,
                [Route("none", "none"), Route("ngram", "ngram")],
                threads=args.threads,
                ctx_size=2048,
                # As many slots as llama-server -np N at the largest N: every client runs
                # at once (sessions and the route's concurrency), none waits in a queue.
                max_sessions=max(counts),
                max_concurrency=max(counts),
                batch_steps=not args.no_batching,
            )
        )
        gateway = openai.AsyncOpenAI(
            base_url=f"{gw.url}/v1", api_key="bench", max_retries=0, timeout=600.0
        )
        stack.push_async_callback(gateway.close)
        for route in ("none", "ngram"):
            await stream_chat(gateway, "warm-up", warm, model=route, max_tokens=8)
        for n in counts:
            server = openai.AsyncOpenAI(
                base_url=f"{servers[n]}/v1", api_key="bench", max_retries=0, timeout=600.0
            )
            try:
                await stream_chat(server, "warm-up", warm, model="m", max_tokens=8)
                clients = {"gateway": gateway, "llama-server": server}
                await _rounds_at(n, args, systems, clients, report, agg, ttft)
            finally:
                await server.close()
    _summarize(report, agg, ttft, counts, systems)
    return report


def _tps(rounds: list[tuple[int, float]]) -> float:
    tokens = sum(t for t, _w in rounds)
    wall = sum(w for _t, w in rounds)
    return tokens / wall if wall else 0.0


def _summarize(report: Report, agg: Agg, ttft: Ttft, counts: list[int], systems: list[str]) -> None:
    rows: list[list[Any]] = []
    for s in systems:
        for n in counts:
            t = ttft[s][n]
            rows.append(
                [
                    s,
                    n,
                    f"{_tps(agg[s][n]):.2f}",
                    f"{pct(t, 50) * 1000:.0f}",
                    f"{pct(t, 99) * 1000:.0f}",
                ]
            )
    report.tables.append(
        (
            "Aggregate tok/s and TTFT by concurrent clients (same run)",
            ["system", "clients", "aggregate tok/s", "TTFT p50 ms", "TTFT p99 ms"],
            rows,
        )
    )
    ratios: list[list[Any]] = []
    for ours, theirs in PAIRS:
        if ours not in systems or theirs not in systems:
            continue
        for n in counts:
            tw, ls = _tps(agg[ours][n]), _tps(agg[theirs][n])
            ratio = tw / ls if ls else None
            ratios.append([ours, theirs, n, f"{ratio:.2f}x" if ratio else "n/a"])
            if ours == "tightwad":
                goal = 0.97 if n == 1 else 1.0
            elif n == 4:
                goal = 1.3
            else:
                continue
            report.target(
                f"{ours} aggregate tok/s vs {theirs} (-np {n}) at N={n}",
                ratio,
                f">= {goal}x",
                None if ratio is None else ratio >= goal,
            )
    report.tables.append(
        ("Aggregate tok/s ratios", ["ours", "baseline", "clients", "ratio"], ratios)
    )
    top = max(counts)
    if "tightwad" in systems and "llama-server" in systems and top >= 8:
        ours_p99, theirs_p99 = pct(ttft["tightwad"][top], 99), pct(ttft["llama-server"][top], 99)
        report.target(
            f"TTFT p99 at N={top} vs llama-server (ms)",
            round(ours_p99 * 1000, 1),
            f"<= {theirs_p99 * 1000:.0f} ms",
            bool(ttft["tightwad"][top]) and ours_p99 <= theirs_p99,
        )
    series = [(s, counts, [round(_tps(agg[s][n]), 2) for n in counts]) for s in systems]
    report.extra["aggregate_tps"] = {s: dict(zip(counts, v, strict=True)) for s, _c, v in series}
    report.extra["ttft_ms"] = {
        s: {
            n: {"p50": pct(ttft[s][n], 50) * 1000, "p99": pct(ttft[s][n], 99) * 1000}
            for n in counts
        }
        for s in systems
    }
    report.extra["plot_series"] = series
    report.extra["plot_series_first"] = True
    report.extra["plot_series_x"] = "concurrent clients"
    report.extra["plot_series_y"] = "aggregate tok/s"
    report.notes.append(
        "aggregate tok/s = completion tokens of a round of N concurrent streamed requests / the "
        "round's wall time (prefill included), client side, real openai client; TTFT = time to "
        "the first content delta of each request. tightwad: the real gateway over an agent's "
        "embedded engine (continuous batching on unless config.batch_steps is false), route "
        "`none` on mixed greedy prompts and route `ngram` on edit prompts; llama-server: "
        "one per N with -np N (continuous batching), flash attention, same threads, "
        "plain decoding on both workloads."
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Same as ``python -m benchmarks.run batching ...``."""
    from benchmarks.run import main as run_main

    return run_main(["batching", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
