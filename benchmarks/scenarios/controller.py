"""Scenario ``controller``: what the controller itself costs.

(a) A real ``tightwad-controller`` process (SQLite state in a temporary directory, cluster token
    on) with ``--agents`` simulated agents (:mod:`benchmarks.simagents`, spread over
    ``--client-procs`` processes) registering and heartbeating over the real Register stream,
    each heartbeat carrying its inventory as a real agent's does. Once all are registered, over
    ``--duration`` seconds: the controller's CPU use (utime + stime from ``/proc/PID/stat``,
    in % of one core, sampled every second) and its RSS, and the heartbeat round trip
    (heartbeat written -> ack read, client side) p50/p90/p99.
(b) Placement time: :func:`tightwad.controller.placement.plan_placement` (a pure function) for
    an ``--layers``-layer model over ``--devices`` GPUs on ``--nodes`` hosts with generated
    free memory (seeded), p50/p99 over ``--repeats`` calls.

Targets: none set by issue 7 beyond reporting; the table marks them "report". The simulated
clients share the machine with the controller: on a small box their own CPU inflates the
round trips, so the client processes' CPU is reported next to the controller's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from statistics import median, quantiles
from typing import Any

from tqdm import tqdm

from benchmarks.machine import machine_facts
from benchmarks.report import RESULTS, Report
from benchmarks.stacks import _die_with_parent, _free_port, child_process, stop_process
from tightwad.agent.processes.probes import ProbeError, tcp_connect
from tightwad.controller.ids import NodeId
from tightwad.controller.placement import Candidate, PlacementRequest, plan_placement
from tightwad.engine.device_facts import Backend, DeviceInfo, Vendor
from tightwad.engine.model_facts import ModelFacts

NAME = "controller"
TOKEN = "bench-controller-token"
MiB = 1 << 20
GiB = 1 << 30


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--agents", type=int, default=500, help="simulated agents")
    p.add_argument("--client-procs", type=int, default=2, help="processes holding them")
    p.add_argument("--duration", type=float, default=60.0, help="measured seconds")
    p.add_argument("--interval", type=float, default=2.0, help="heartbeat interval, seconds")
    p.add_argument("--ramp", type=float, default=10.0, help="seconds to register them all")
    p.add_argument("--layers", type=int, default=80, help="placement: model layers")
    p.add_argument("--devices", type=int, default=64, help="placement: GPUs in all")
    p.add_argument("--nodes", type=int, default=16, help="placement: hosts holding them")
    p.add_argument("--repeats", type=int, default=200, help="placement: calls timed")
    p.add_argument("--skip-agents", action="store_true", help="placement only")


# --- pure parts ----------------------------------------------------------------------------


def proc_cpu_ticks(stat: str) -> tuple[int, int]:
    """(utime + stime in clock ticks, rss in pages) from the text of ``/proc/PID/stat``.
    Fields are counted after the ``)`` closing the command name (which may hold spaces)."""
    rest = stat[stat.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state): utime = field 14, stime = 15, rss = 24.
    return int(rest[11]) + int(rest[12]), int(rest[21])


def cpu_percent(samples: Sequence[tuple[float, int]], hz: int) -> list[float]:
    """% of one core between consecutive (monotonic seconds, ticks) samples."""
    out = []
    for (t0, c0), (t1, c1) in pairwise(samples):
        if t1 > t0:
            out.append(100.0 * (c1 - c0) / hz / (t1 - t0))
    return out


def pcts(xs: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99 (and max, count) of ``xs``; zeros when empty."""
    if not xs:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0, "n": 0}
    if len(xs) == 1:
        return {"p50": xs[0], "p90": xs[0], "p99": xs[0], "max": xs[0], "n": 1}
    q = quantiles(xs, n=100, method="inclusive")
    return {"p50": median(xs), "p90": q[89], "p99": q[98], "max": max(xs), "n": len(xs)}


def controller_config(port: int, state: Path, interval: float) -> str:
    return (
        f"cluster:\n  token: {TOKEN}\n"
        f"controller:\n  host: 127.0.0.1\n  port: {port}\n  state_path: {state}\n"
        f"  heartbeat_interval_s: {interval}\n  heartbeat_timeout_s: {max(10.0, 5 * interval)}\n"
    )


def placement_facts(
    layers: int, devices: int, nodes: int, seed: int = 7
) -> tuple[ModelFacts, list[Candidate]]:
    """A 70B-class model (``layers`` x 700 MiB, Q8-ish) and ``devices`` GPUs over ``nodes``
    hosts with 2-6 GiB free each (seeded), one rpc-server port per device."""
    rng = random.Random(seed)
    facts = ModelFacts(
        path="/models/bench-70b.gguf",
        size_bytes=layers * 700 * MiB + 2 * GiB,
        architecture="llama",
        name="bench-70b",
        n_layers=layers,
        context_length=8192,
        embedding_length=8192,
        n_head=64,
        n_head_kv=8,
        layer_bytes=tuple(700 * MiB for _ in range(layers)),
        embedding_bytes=1 * GiB,
        output_bytes=1 * GiB,
        kv_bytes_per_token=layers * 2 * 8 * 128 * 2,
        quantization="Q8_0",
        n_vocab=128256,
        vocab_fingerprint="b" * 64,
    )
    cands = []
    backends = (Backend.CUDA, Backend.ROCM, Backend.VULKAN)
    vendors = {Backend.CUDA: Vendor.NVIDIA, Backend.ROCM: Vendor.AMD, Backend.VULKAN: Vendor.AMD}
    for d in range(devices):
        node = d % nodes
        backend = backends[node % len(backends)]
        free = rng.randint(2 * 1024, 6 * 1024) * MiB
        dev = DeviceInfo(
            id=f"gpu-{d:03d}",
            index=d // nodes,
            name=f"{backend.value} {d}",
            vendor=vendors[backend],
            backend=backend,
            memory_total_bytes=free + 1 * GiB,
            memory_free_bytes=free,
        )
        cands.append(Candidate(NodeId(f"node-{node:02d}"), dev, f"10.0.{node}.1", 50052 + d))
    return facts, cands


def time_placement(layers: int, devices: int, nodes: int, repeats: int) -> dict[str, Any]:
    facts, cands = placement_facts(layers, devices, nodes)
    request = PlacementRequest(model="bench-70b", ctx_size=8192)
    plan = plan_placement(request, facts, cands)  # warm (and the plan shown)
    ms = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        plan_placement(request, facts, cands)
        ms.append((time.perf_counter() - t0) * 1000.0)
    return {
        "ms": ms,
        "fits": plan.fits,
        "reason": plan.reason,
        "devices_used": len(plan.assignments),
        "hosts_used": len(plan.node_ids),
        "n_gpu_layers": plan.n_gpu_layers,
    }


# --- the run -------------------------------------------------------------------------------


async def _wait_listening(port: int, proc_alive: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await tcp_connect("127.0.0.1", port, 1.0)
            return
        except ProbeError:
            if not proc_alive():
                raise RuntimeError("the controller exited at start-up (see its log)") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"controller not listening after {timeout_s}s") from None
            await asyncio.sleep(0.2)


def _read_stat(pid: int) -> tuple[int, int]:
    return proc_cpu_ticks(Path(f"/proc/{pid}/stat").read_text())


async def _agents_phase(args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    hz = os.sysconf("SC_CLK_TCK")
    page = os.sysconf("SC_PAGE_SIZE")
    with tempfile.TemporaryDirectory(prefix="tw-bench-ctl-") as tmp:
        tmpd = Path(tmp)
        port = _free_port()
        cfg = tmpd / "cluster.yaml"
        text = controller_config(port, tmpd / "state.sqlite", args.interval)
        await asyncio.to_thread(cfg.write_text, text)
        argv = [
            sys.executable, "-m", "tightwad.controller.main", "-c", str(cfg),
            "--listen", f"127.0.0.1:{port}", "--log-level", "warning",
        ]  # fmt: skip
        # The controller prints nothing when ready: start it plainly and poll its port.
        await asyncio.to_thread(logs.mkdir, parents=True, exist_ok=True)
        log_file = await asyncio.to_thread((logs / "controller.log").open, "ab")
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=log_file, stderr=log_file, preexec_fn=_die_with_parent
        )
        try:
            await _wait_listening(port, lambda: proc.returncode is None)
            per = [args.agents // args.client_procs] * args.client_procs
            for i in range(args.agents % args.client_procs):
                per[i] += 1
            outs = [tmpd / f"clients-{i}.json" for i in range(len(per))]
            async with contextlib.AsyncExitStack() as stack:
                entered: list[asyncio.Task[tuple[asyncio.subprocess.Process, str]]] = []
                first = 0
                async with asyncio.TaskGroup() as tg:
                    for i, n in enumerate(per):
                        cargv = [
                            sys.executable, "-m", "benchmarks.simagents",
                            "--controller", f"127.0.0.1:{port}", "--token", TOKEN,
                            "--agents", str(n), "--first", str(first),
                            "--ramp-s", str(args.ramp), "--out", str(outs[i]),
                        ]  # fmt: skip
                        first += n
                        cm = child_process(
                            cargv,
                            ready="REGISTERED",
                            log_path=logs / f"clients-{i}.log",
                            ready_timeout_s=args.ramp + 300,
                        )
                        entered.append(tg.create_task(stack.enter_async_context(cm)))
                client_pids = [t.result()[0].pid for t in entered]
                registered_at = time.time()
                c_samples = [(time.monotonic(), _read_stat(proc.pid))]
                cl0 = sum(_read_stat(p)[0] for p in client_pids)
                t_start = time.monotonic()
                with tqdm(total=int(args.duration), unit="s", desc="heartbeats") as bar:
                    while time.monotonic() - t_start < args.duration:
                        await asyncio.sleep(1.0)
                        c_samples.append((time.monotonic(), _read_stat(proc.pid)))
                        bar.update(1)
                cl1 = sum(_read_stat(p)[0] for p in client_pids)
                window_end = time.time()
        finally:
            await stop_process(proc)
            log_file.close()
        samples: list[float] = []
        errors: list[str] = []
        for out in outs:
            if out.exists():
                data = json.loads(out.read_text())
                samples += [
                    ms for wall, ms in data["samples"] if registered_at <= wall <= window_end
                ]
                errors += data["errors"]
    ticks = [(t, c) for t, (c, _rss) in c_samples]
    cpu = cpu_percent(ticks, hz)
    span = ticks[-1][0] - ticks[0][0]
    mean_cpu = 100.0 * (ticks[-1][1] - ticks[0][1]) / hz / span if span > 0 else 0.0
    return {
        "controller_cpu_percent_mean": mean_cpu,
        "controller_cpu_percent_per_s": cpu,
        "controller_rss_mib": c_samples[-1][1][1] * page / MiB,
        "clients_cpu_percent_mean": 100.0 * (cl1 - cl0) / hz / span if span > 0 else 0.0,
        "heartbeat_rtt_ms": pcts(samples),
        "heartbeats": len(samples),
        "expected_heartbeats": int(args.agents * span / args.interval),
        "client_errors": errors,
    }


async def run(args: argparse.Namespace) -> Report:
    report = Report(
        scenario=NAME,
        machine=machine_facts(),
        config={
            "agents": 0 if args.skip_agents else args.agents,
            "client_procs": args.client_procs,
            "duration_s": args.duration,
            "heartbeat_interval_s": args.interval,
            "placement": f"{args.layers} layers over {args.devices} GPUs on {args.nodes} hosts",
            "placement_repeats": args.repeats,
        },
    )
    logs = (args.out or RESULTS) / NAME / "logs"
    bars: list[tuple[str, float]] = []
    if not args.skip_agents:
        a = await _agents_phase(args, logs)
        report.extra["agents"] = a
        rtt = a["heartbeat_rtt_ms"]
        report.tables.append(
            (
                f"{args.agents} simulated agents, heartbeat every {args.interval:g} s, "
                f"{args.duration:g} s measured",
                ["what", "value"],
                [
                    ["controller CPU, mean % of one core", a["controller_cpu_percent_mean"]],
                    [
                        "controller CPU, max 1-s % of one core",
                        max(a["controller_cpu_percent_per_s"], default=0.0),
                    ],
                    ["controller RSS, MiB", a["controller_rss_mib"]],
                    ["simulated agents' processes CPU, mean %", a["clients_cpu_percent_mean"]],
                    [
                        "heartbeats acknowledged / expected",
                        f"{a['heartbeats']}/{a['expected_heartbeats']}",
                    ],
                    ["heartbeat round trip p50 ms", rtt["p50"]],
                    ["heartbeat round trip p90 ms", rtt["p90"]],
                    ["heartbeat round trip p99 ms", rtt["p99"]],
                    ["heartbeat round trip max ms", rtt["max"]],
                    ["client errors", len(a["client_errors"])],
                ],
            )
        )
        cpu = a["controller_cpu_percent_mean"]
        report.target("controller CPU, % of one core", cpu, "report", None)
        report.target("heartbeat round trip p99, ms", rtt["p99"], "report", None)
        bars += [("heartbeat p50", rtt["p50"]), ("heartbeat p99", rtt["p99"])]
        per_s = a["controller_cpu_percent_per_s"]
        report.extra["plot_series"] = [("controller CPU %", list(range(1, len(per_s) + 1)), per_s)]
        report.extra["plot_series_x"] = "second of the measured window"
        report.extra["plot_series_y"] = "% of one core"
    pl = await asyncio.to_thread(
        time_placement, args.layers, args.devices, args.nodes, args.repeats
    )
    report.extra["placement"] = pl
    pp = pcts(pl["ms"])
    report.tables.append(
        (
            f"Placement: {args.layers} layers over {args.devices} GPUs on {args.nodes} hosts "
            f"({args.repeats} calls)",
            ["p50 ms", "p90 ms", "p99 ms", "max ms", "fits", "devices used", "hosts used"],
            [
                [
                    pp["p50"],
                    pp["p90"],
                    pp["p99"],
                    pp["max"],
                    pl["fits"],
                    pl["devices_used"],
                    pl["hosts_used"],
                ]
            ],
        )
    )
    report.target("placement p99, ms", pp["p99"], "report", None)
    bars += [("placement p50", pp["p50"]), ("placement p99", pp["p99"])]
    report.extra["plot_bars"] = bars
    report.extra["plot_ylabel"] = "ms"
    report.notes.append(
        "Heartbeat round trip is measured in the simulated agents' processes (their event loops "
        "count); controller CPU from /proc/PID/stat of the controller process alone."
    )
    return report
