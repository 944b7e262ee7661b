"""Scenario ``pool``: speculation over a pooled target. The target model is split (by layers)
over two real ``ggml-rpc-server``s, each in its own network namespace ("host") joined to this
one by a veth link; the coordinator is an agent Engine process here
(:mod:`tightwad.agent.engine_host`, what an agent runs pooled engines in, with
``--devices RPC[w1],RPC[w2]``), so it can verify drafts. Per added one-way latency
(``--latencies``, default 0,2,5 ms, each direction: round trip + 2x), through the gateway:

- ``pool-plain@Xms`` (baseline of that latency): draft none, one forward pass per token;
- ``pool-ngram@Xms``: n-gram lookup (draft-free);
- ``pool-prediction@Xms``: predicted outputs, edit prompts only;
- ``pool-model@Xms`` (``--model-draft``): a draft model in its own engine process here.

Latency: ``tc netem`` on both veth ends when the kernel has ``sch_netem``; otherwise (or with
``--delay proxy``) a userspace delay proxy (:mod:`benchmarks.delayproxy`) inside each
namespace, in front of its rpc-server. The method is recorded in the JSON and the tables.

Needs root and ``ip`` (refuses with the reason otherwise). Namespaces, proxies, rpc-servers and
engines are removed on exit, error or Ctrl-C (see :mod:`benchmarks.netns`).

Target (issue 7): >= 1.5x the plain pool on edit prompts at 5 ms; all kinds and latencies
reported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from benchmarks.machine import machine_facts
from benchmarks.netns import Link, Namespaces, preflight
from benchmarks.prompts import select
from benchmarks.report import RESULTS, Report, summarize
from benchmarks.scenarios.common import (
    System,
    add_common_arguments,
    greedy_identity_table,
    kinds_arg,
    run_matrix,
)
from benchmarks.stacks import (
    Route,
    _die_with_parent,
    child_process,
    engine_host_process,
    gateway_for,
    llama_bin_dir,
    stop_process,
)
from tightwad.agent.processes.probes import ProbeError, rpc_hello
from tightwad.fetch_models import ensure_model

NAME = "pool"
RPC_PORT = 50052
PROXY_PORT = 50053
_SUFFIX = "@{}ms"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p)
    p.set_defaults(threads=1)
    p.add_argument("--model", default="qwen2.5-coder-1.5b", help="pooled target")
    p.add_argument("--latencies", default="0,2,5", help="added one-way delays, ms (comma list)")
    p.add_argument(
        "--delay",
        choices=("auto", "netem", "proxy"),
        default="auto",
        help="how latency is added (auto: netem when the kernel has it, else the proxy)",
    )
    p.add_argument("--max-draft", type=int, default=64, help="gateway max draft tokens")
    p.add_argument(
        "--model-draft", default="", help="also a model-drafted route (e.g. qwen2.5-coder-0.5b)"
    )  # fmt: skip
    p.add_argument("--no-prediction", action="store_true", help="skip predicted outputs")
    p.add_argument("--rpc-threads", type=int, default=1, help="threads of each rpc-server")
    p.add_argument("--ctx-size", type=int, default=2048)


def latencies_arg(text: str) -> list[float]:
    out = [float(x) for x in text.split(",") if x.strip()]
    if not out or any(x < 0 for x in out):
        raise SystemExit(f"pool: --latencies needs non-negative numbers, got {text!r}")
    return out


def system_name(kind: str, delay_ms: float) -> str:
    return f"pool-{kind}" + _SUFFIX.format(f"{delay_ms:g}")


def choose_delay_method(requested: str, netem_ok: bool, netem_error: str) -> str:
    """``netem`` or ``proxy``; refuses ``netem`` when the kernel lacks it."""
    if requested == "proxy":
        return "proxy"
    if netem_ok:
        return "netem"
    if requested == "netem":
        raise SystemExit(f"pool: --delay netem but tc netem does not work here: {netem_error}")
    return "proxy"


def rpc_plan(link: Link, method: str) -> dict[str, Any]:
    """Where a worker's rpc-server listens and the address the coordinator dials: the
    rpc-server itself (netem) or the delay proxy in front of it (proxy), both on the
    namespace's veth address."""
    rpc = (link.ns_ip, RPC_PORT)
    dial = rpc if method == "netem" else (link.ns_ip, PROXY_PORT)
    return {"rpc": rpc, "dial": dial, "device": f"RPC[{dial[0]}:{dial[1]}]"}


def baselines(kinds: Sequence[str], latencies: Sequence[float]) -> dict[str, str]:
    return {system_name(k, d): system_name("plain", d) for d in latencies for k in kinds}


def add_targets(report: Report, rows: list[dict[str, Any]], latencies: Sequence[float]) -> None:
    by = {(r["system"], r["kind"]): r for r in rows}
    for d in latencies:
        for kind in ("ngram", "prediction", "model"):
            row = by.get((system_name(kind, d), "edit"))
            if row is None:
                continue
            goal = d == 5.0
            ratio = row["ratio"]
            report.target(
                f"{system_name(kind, d)} on edit vs plain pool",
                ratio,
                ">= 1.5x" if goal else "report",
                (ratio is not None and ratio >= 1.5) if goal else None,
            )


async def _wait_rpc(host: str, port: int, timeout_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            await rpc_hello(host, port, 1.0)
            return
        except ProbeError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def _workers(
    ns: Namespaces, method: str, rpc_threads: int, logs: Path
) -> AsyncIterator[list[dict[str, Any]]]:
    """One rpc-server per namespace (bound to its veth address), probed with HELLO."""
    binary = llama_bin_dir() / "ggml-rpc-server"
    plans = [rpc_plan(link, method) for link in ns]
    async with contextlib.AsyncExitStack() as stack:
        for i, (link, plan) in enumerate(zip(ns, plans, strict=True)):
            host, port = plan["rpc"]
            argv = [*ns.exec_prefix(link), str(binary), "-H", host, "-p", str(port)]
            argv += ["-t", str(rpc_threads)]
            # rpc-server prints its banner late (buffered): ready = answers HELLO.
            log_file = stack.enter_context((logs / f"rpc-server-w{i + 1}.log").open("ab"))
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
            stack.push_async_callback(stop_process, proc)
            await _wait_rpc(host, port)
        yield plans


@contextlib.asynccontextmanager
async def _latency(
    ns: Namespaces, method: str, plans: list[dict[str, Any]], delay_ms: float, logs: Path
) -> AsyncIterator[None]:
    """``delay_ms`` each way on every worker link while inside."""
    if method == "netem":
        await asyncio.to_thread(ns.set_netem, delay_ms)
        yield
        return
    async with contextlib.AsyncExitStack() as stack:
        for i, (link, plan) in enumerate(zip(ns, plans, strict=True)):
            lh, lp = plan["dial"]
            th, tp = plan["rpc"]
            argv = [
                *ns.exec_prefix(link), sys.executable, "-m", "benchmarks.delayproxy",
                "--listen", f"{lh}:{lp}", "--to", f"{th}:{tp}", "--delay-ms", f"{delay_ms:g}",
            ]  # fmt: skip
            await stack.enter_async_context(
                child_process(argv, ready="READY", log_path=logs / f"delayproxy-w{i + 1}.log")
            )
        yield


async def run(args: argparse.Namespace) -> Report:
    problems = preflight()
    if problems:
        raise SystemExit("pool: cannot build network namespaces here: " + "; ".join(problems))
    latencies = latencies_arg(args.latencies)
    model = ensure_model(args.model)
    draft = ensure_model(args.model_draft) if args.model_draft else None
    prompts = select(kinds_arg(args.kinds), args.per_kind)
    logs = (args.out or RESULTS) / NAME / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    kinds = ["plain", "ngram"]
    if not args.no_prediction:
        kinds.append("prediction")
    if draft is not None:
        kinds.append("model")
    report = Report(
        scenario=NAME,
        machine=machine_facts(),
        config={
            "model": args.model,
            "workers": 2,
            "latencies_ms_one_way": latencies,
            "threads": args.threads,
            "rpc_threads": args.rpc_threads,
            "max_tokens": args.max_tokens,
            "prompts": len(prompts),
            "repeat": args.repeat,
            "max_draft": args.max_draft,
            "model_draft": args.model_draft or None,
        },
        baseline=baselines(kinds, latencies),
    )
    # SIGTERM ends the run like Ctrl-C does, so every context below tears down.
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    loop.add_signal_handler(signal.SIGTERM, main_task.cancel)
    banners: list[str] = []
    report.extra["engine_host_banners"] = banners  # layers per device, per latency
    try:
        with Namespaces(2) as ns:
            netem_ok, netem_error = await asyncio.to_thread(ns.probe_netem)
            method = choose_delay_method(args.delay, netem_ok, netem_error)
            report.config["delay_method"] = method
            report.extra["delay_method"] = {
                "method": method,
                "netem_available": netem_ok,
                "netem_error": netem_error,
                "links": [link.__repr__() for link in ns],
            }
            async with _workers(ns, method, args.rpc_threads, logs) as plans:
                for d in latencies:
                    report.requests += await _one_latency(
                        args, ns, method, plans, d, model, draft, prompts, kinds, logs, banners
                    )
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
    rows = summarize(report.requests, report.baseline)
    for d in latencies:
        sub = [r for r in report.requests if r.system.endswith(_SUFFIX.format(f"{d:g}"))]
        title, headers, body = greedy_identity_table(sub, system_name("plain", d))
        report.tables.append((f"{title} (added {d:g} ms)", headers, body))
    report.tables.append(_latency_table(rows, kinds, latencies, method))
    add_targets(report, rows, latencies)
    report.notes.append(
        f"Latency added with {method} ({'tc netem on both veth ends' if method == 'netem' else 'a userspace asyncio delay proxy in each worker namespace, in front of its rpc-server'}); "  # noqa: E501
        "the delay is one-way per direction, so each RPC round trip gains twice it. "
        "Ratios are against the plain pool at the same latency, prompt by prompt."
    )
    return report


async def _one_latency(
    args: argparse.Namespace,
    ns: Namespaces,
    method: str,
    plans: list[dict[str, Any]],
    delay_ms: float,
    model: Path,
    draft: Path | None,
    prompts: list[Any],
    kinds: list[str],
    logs: Path,
    banners: list[str],
) -> list[Any]:
    routes = [Route("plain", "none"), Route("ngram", "ngram", max_draft_tokens=args.max_draft)]
    if "prediction" in kinds:
        routes.append(Route("prediction", "prediction", max_draft_tokens=args.max_draft))
    if draft is not None:
        routes.append(Route("model", "model", True, False, args.max_draft))
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(_latency(ns, method, plans, delay_ms, logs))
        target = await stack.enter_async_context(
            engine_host_process(
                model,
                model_id="target",
                threads=args.threads,
                ctx_size=args.ctx_size,
                devices=[p["device"] for p in plans],
                tensor_split=[1.0] * len(plans),
                gpu_layers=999,
                log_path=logs / "engine-host.log",
                banner=banners,
            )
        )
        draft_address = None
        if draft is not None:
            draft_address = await stack.enter_async_context(
                engine_host_process(
                    draft,
                    model_id="draft",
                    threads=args.threads,
                    ctx_size=args.ctx_size,
                    log_path=logs / "draft-engine.log",
                )
            )
        url = await stack.enter_async_context(
            gateway_for(target, routes, draft_address=draft_address)
        )
        systems = [System(system_name("plain", delay_ms), f"{url}/v1", "plain")]
        systems.append(System(system_name("ngram", delay_ms), f"{url}/v1", "ngram"))
        if "prediction" in kinds:
            systems.append(
                System(
                    system_name("prediction", delay_ms), f"{url}/v1", "prediction", True, ("edit",)
                )
            )
        if draft is not None:
            systems.append(System(system_name("model", delay_ms), f"{url}/v1", "model"))
        print(f"pool: added latency {delay_ms:g} ms each way ({method})", flush=True)
        return await run_matrix(systems, prompts, max_tokens=args.max_tokens, repeat=args.repeat)


def _latency_table(
    rows: list[dict[str, Any]], kinds: list[str], latencies: Sequence[float], method: str
) -> tuple[str, list[str], list[list[Any]]]:
    """tok/s (x plain pool) per system kind and prompt kind, one column per latency."""
    by = {(r["system"], r["kind"]): r for r in rows}
    prompt_kinds = list(dict.fromkeys(r["kind"] for r in rows))
    body = []
    for sk in kinds:
        for pk in prompt_kinds:
            cells = []
            for d in latencies:
                r = by.get((system_name(sk, d), pk))
                cells.append(
                    "-" if r is None else f"{r['decode_tps']:.2f} ({(r['ratio'] or 0):.2f}x)"
                )
            if any(c != "-" for c in cells):
                body.append([f"pool-{sk}", pk, *cells])
    headers = ["system", "kind", *[f"+{d:g} ms ({method}) tok/s (x plain)" for d in latencies]]
    return "tok/s by added latency (x the plain pool at that latency)", headers, body
