"""Scenario ``engine``: the embedded engine against raw llama.cpp and against llama-server, on
the same model (Qwen2.5-Coder-1.5B by default) and threads.

- Verify(k) over gRPC on loopback (client round trip through
  :class:`~tightwad.gateway.engine_client.EngineClient`) vs a raw ``LlamaModel.decode`` of the
  same k + 1 tokens (all rows with logits) on a second copy of the model, k in a sweep; measured
  interleaved, rep by rep, so background load hits both alike. Target: Verify(8) <= 1.15x raw 9.
- The fixed per-command cost of the session stream: Verify round trip minus the engine's own
  ``verify_ms``, and the round trip of Verify on a trivially fast engine
  (:mod:`benchmarks.fake_engine`). Target < 1 ms.
- Generate tok/s through the engine's session stream vs ``llama-server``'s ``/completion``
  (streamed, ``ignore_eos``), same prompt tokens; decode rate from first to last token.
  Target >= 0.95x.

The k sweep is also what :mod:`benchmarks.costmodel` fits verify time as a function of k from.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from statistics import median
from typing import Any

import aiohttp
from tqdm import tqdm

from benchmarks.machine import machine_facts
from benchmarks.report import RESULTS, Report
from benchmarks.scenarios.overhead import session_round_trips
from benchmarks.stacks import fake_engine_process, llama_server
from tightwad.agent.server import AgentServer, AgentSettings
from tightwad.engine.binding import LlamaLoadParams, LlamaModel
from tightwad.engine.engine_config import EngineConfig
from tightwad.engine.llama_engine import _cpu_executor
from tightwad.fetch_models import ensure_model
from tightwad.gateway.engine_client import EngineClient
from tightwad.spec.sampling import SamplingConfig
from tightwad.v1 import engine_pb2, engine_pb2_grpc

NAME = "engine"
PROMPT = "Write a Python function that parses an ISO 8601 date string and returns a datetime."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="qwen2.5-coder-1.5b")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ks", default="0,1,2,4,8,16", help="draft lengths of the Verify sweep")
    p.add_argument("--reps", type=int, default=8, help="repetitions per k")
    p.add_argument("--gen-tokens", type=int, default=96, help="tokens per Generate run")
    p.add_argument("--gen-runs", type=int, default=3, help="Generate runs per system")
    p.add_argument("--no-llama-server", action="store_true")


async def run(args: argparse.Namespace) -> Report:
    path = ensure_model(args.model)
    ks = [int(k) for k in args.ks.split(",")]
    if 8 not in ks:
        ks.append(8)
    report = Report(
        scenario=NAME,
        machine=machine_facts(),
        config={
            "model": args.model,
            "threads": args.threads,
            "ks": ks,
            "reps": args.reps,
            "gen_tokens": args.gen_tokens,
            "gen_runs": args.gen_runs,
        },
    )
    cfg = EngineConfig(
        model_id="target", path=path, ctx_size=4096, max_sessions=2, threads=args.threads
    )
    agent = AgentServer(AgentSettings(listen="127.0.0.1:0", engines=(cfg,), node_service=False))
    await agent.start()
    try:
        client = EngineClient(agent.address, "target")
        prompt = await client.render_chat([("user", PROMPT, "")])
        sweep = await _verify_sweep(client, path, prompt, ks, args)
        gen_engine: list[float] = []
        gen_ls: list[float] = []
        if args.no_llama_server:
            for _ in tqdm(range(args.gen_runs), desc="Generate (engine)"):
                gen_engine.append(await _engine_generate(agent.address, prompt, args.gen_tokens))
        else:
            logs = RESULTS / NAME / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            async with llama_server(
                path, threads=args.threads, log_path=logs / "llama-server.log"
            ) as url:
                await _llama_generate(url, prompt, 8)
                # Alternate run by run, so that background load hits both alike.
                for _ in tqdm(range(args.gen_runs), desc="Generate (engine, llama-server)"):
                    gen_engine.append(
                        await _engine_generate(agent.address, prompt, args.gen_tokens)
                    )
                    gen_ls.append(await _llama_generate(url, prompt, args.gen_tokens))
        await client.close()
    finally:
        await agent.stop(grace=0.5)
    async with fake_engine_process() as fake:
        await session_round_trips(fake, 50, 0)
        fake_rtt = await session_round_trips(fake, 1000, 0)
    _write(report, sweep, gen_engine, gen_ls, fake_rtt)
    return report


async def _verify_sweep(
    client: EngineClient, path: Any, prompt: list[int], ks: list[int], args: argparse.Namespace
) -> dict[int, dict[str, list[float]]]:
    """Per k: client round trip and engine verify_ms of Verify(k), and raw decode of k+1."""
    # The raw model computes on the engines' shared CPU thread: a second calling thread would
    # start a second OpenMP team and slow both (see tightwad.engine.llama_engine).
    loop = asyncio.get_running_loop()
    cpu = _cpu_executor()
    params = LlamaLoadParams(
        path=path, n_ctx=4096, n_threads=args.threads, flash_attn=True, n_seq_max=1
    )
    raw = await loop.run_in_executor(cpu, LlamaModel, params)

    def raw_round(toks: list[int], base: int) -> float:
        t0 = time.perf_counter()
        raw.decode(0, toks, base - 1, list(range(len(toks))))
        ms = (time.perf_counter() - t0) * 1000.0
        raw.seq_rm(0, base - 1)
        return ms

    out: dict[int, dict[str, list[float]]] = {k: {"rtt": [], "engine": [], "raw": []} for k in ks}
    try:
        # As in an engine session: all of the prompt but its last (pending) token in the cache.
        await loop.run_in_executor(cpu, raw.decode, 0, prompt[:-1], 0, [len(prompt) - 2])
        base = len(prompt)
        # Draft tokens that the target will mostly reject: the cost of a round does not depend
        # on what is accepted, only on k.
        filler = [prompt[i % len(prompt)] for i in range(max(ks) + 1)]
        sess = client.session(timeout_s=600)
        await sess.open(prompt, SamplingConfig())
        for _ in range(3):  # warm
            await sess.verify(filler[:8])
        jobs = [k for _ in range(args.reps) for k in ks]
        for k in tqdm(jobs, desc="Verify(k) vs raw decode"):
            t0 = time.perf_counter()
            v = await sess.verify(filler[:k])
            out[k]["rtt"].append((time.perf_counter() - t0) * 1000.0)
            out[k]["engine"].append(v.verify_ms)
            toks = [prompt[-1], *filler[:k]]
            out[k]["raw"].append(await loop.run_in_executor(cpu, raw_round, toks, base))
        await sess.close()
    finally:
        await loop.run_in_executor(cpu, raw.close)
    return out


async def _engine_generate(address: str, prompt: list[int], n: int) -> float:
    """Decode tok/s of one Generate{n} on the engine's session stream (first to last token)."""
    client = EngineClient(address, "target")
    stub = engine_pb2_grpc.EngineServiceStub(client._channel)
    call = stub.Session(timeout=600)
    await call.write(
        engine_pb2.SessionRequest(
            seq=1,
            open=engine_pb2.OpenCommand(
                model="target",
                tokens=engine_pb2.TokenList(token_ids=prompt),
                sampling=engine_pb2.SamplingParams(temperature=0.0),
            ),
        )
    )
    await call.read()
    await call.write(
        engine_pb2.SessionRequest(seq=2, generate=engine_pb2.GenerateCommand(n=n, ignore_eos=True))
    )
    stamps: list[float] = []
    while True:
        resp = await call.read()
        kind = resp.WhichOneof("event")
        if kind == "token":
            stamps.append(time.perf_counter())
        elif kind == "generate_done":
            break
    await call.write(engine_pb2.SessionRequest(seq=3, close=engine_pb2.CloseCommand()))
    await call.read()
    await call.done_writing()
    await client.close()
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


async def _llama_generate(url: str, prompt: list[int], n: int) -> float:
    """Decode tok/s of one streamed ``/completion`` of n tokens (first to last token)."""
    body = {
        "prompt": prompt,
        "n_predict": n,
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": True,
        "cache_prompt": True,
    }
    stamps: list[float] = []
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http,
        http.post(f"{url}/completion", json=body) as resp,
    ):
        resp.raise_for_status()
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data: "):
                continue
            data = json.loads(line[6:])
            if data.get("content") or data.get("tokens"):
                stamps.append(time.perf_counter())
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0


def _write(
    report: Report,
    sweep: dict[int, dict[str, list[float]]],
    gen_engine: list[float],
    gen_ls: list[float],
    fake_rtt: list[float],
) -> None:
    rows = []
    for k, m in sorted(sweep.items()):
        rtt, eng, raw = median(m["rtt"]), median(m["engine"]), median(m["raw"])
        rows.append([k, k + 1, raw, eng, rtt, rtt / raw if raw else None, rtt - eng])
    report.tables.append(
        (
            "Verify(k) over gRPC vs raw llama.cpp decode of k+1 tokens (median ms)",
            [
                "k",
                "tokens",
                "raw decode",
                "engine verify_ms",
                "gRPC round trip",
                "RTT / raw",
                "RTT - engine",
            ],
            rows,
        )
    )
    k8 = sweep[8]
    ratio8 = median(k8["rtt"]) / median(k8["raw"])
    report.target(
        "Verify(k=8) round trip / raw decode of 9 tokens", ratio8, "<= 1.15x", ratio8 <= 1.15
    )
    stream_overhead = median([r - e for r, e in zip(k8["rtt"], k8["engine"], strict=True)])
    fake = median(fake_rtt)
    report.tables.append(
        (
            "Fixed per-command overhead of the session stream (median ms)",
            ["measure", "ms"],
            [
                ["real engine: Verify(8) round trip - engine verify_ms", stream_overhead],
                ["fake engine (instant): Verify(0) round trip", fake],
            ],
        )
    )
    report.target(
        "session stream per-command overhead (fake engine RTT)", fake, "< 1 ms", fake < 1.0
    )
    gen_rows = [["engine Generate (gRPC stream)", median(gen_engine), *gen_engine]]
    if gen_ls:
        gen_rows.append(["llama-server /completion", median(gen_ls), *gen_ls])
    report.tables.append(
        (
            "Generate decode tok/s (median, then each run)",
            ["system", "median", *[f"run {i + 1}" for i in range(len(gen_engine))]],
            gen_rows,
        )
    )
    if gen_ls:
        r = median(gen_engine) / median(gen_ls)
        report.target("engine Generate tok/s / llama-server tok/s", r, ">= 0.95x", r >= 0.95)
    report.extra.update(
        {
            "verify_sweep": {str(k): m for k, m in sweep.items()},
            "generate_tps": {"engine": gen_engine, "llama_server": gen_ls},
            "fake_verify_rtt_ms": fake_rtt,
            "plot_bars": [
                ("raw decode of 9", median(k8["raw"])),
                ("Verify(8) engine", median(k8["engine"])),
                ("Verify(8) round trip", median(k8["rtt"])),
            ],
            "plot_ylabel": "median ms",
            "plot_series": [
                ("raw decode", sorted(sweep), [median(sweep[k]["raw"]) for k in sorted(sweep)]),
                ("Verify RTT", sorted(sweep), [median(sweep[k]["rtt"]) for k in sorted(sweep)]),
            ],
            "plot_series_x": "draft length k (tokens decoded = k + 1)",
            "plot_series_y": "median ms",
        }
    )
    report.notes.append(
        "Engine, gRPC client and the raw LlamaModel share one process (the agent's gRPC server "
        "and the client on one event loop); Verify and raw decode alternate rep by rep. Other "
        "engineers' tests ran on the same 2 cores at the same time."
    )
