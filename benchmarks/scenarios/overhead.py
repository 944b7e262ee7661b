"""Scenario ``overhead``: what the gateway and the session stream add, measured over a trivially
fast engine (:mod:`benchmarks.fake_engine`, the real EngineService interface, in its own process).

- Session stream: round trip of one Verify command (k = 0 and k = 8) on an open stream, straight
  from :class:`~tightwad.gateway.engine_client.EngineClient`: the fixed per-command cost.
- Gateway: streamed chat completions (draft none: one token per round) read with a raw SSE
  client. The fake engine records when each Verify arrives; the gap between consecutive arrivals
  is one whole round through the gateway (its loop, the gRPC round trip, SSE write), all of it
  overhead since the engine answers at once. The gateway's own added latency per round is that
  minus the bare session-stream round trip. Streamed tokens/s is measured on the client, which
  runs in its own process (as a user's client does): its SSE parsing does not compete with the
  gateway's event loop.

Targets (issue 7): p50 added latency per round < 1 ms; >= 5,000 streamed tokens/s, one stream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path
from statistics import median, quantiles

import aiohttp
from tqdm import tqdm

from benchmarks.machine import machine_facts
from benchmarks.report import Report
from benchmarks.stacks import Route, fake_engine_process, gateway_for
from tightwad.gateway.engine_client import EngineClient
from tightwad.spec.sampling import SamplingConfig

NAME = "overhead"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--commands", type=int, default=2000, help="Verify round trips per k")
    p.add_argument("--tokens", type=int, default=5000, help="tokens per streamed request")
    p.add_argument("--streams", type=int, default=3, help="streamed requests (one at a time)")


def pct(xs: list[float], q: int) -> float:
    """The q-th percentile (q in 1..99)."""
    if len(xs) < 2:
        return xs[0] if xs else 0.0
    return quantiles(xs, n=100, method="inclusive")[q - 1]


async def session_round_trips(address: str, n: int, k: int) -> list[float]:
    """Milliseconds of ``n`` Verify commands of ``k`` drafts on one open session."""
    client = EngineClient(address, "fake")
    sess = client.session(timeout_s=120)
    await sess.open([1, 2, 3, 4], SamplingConfig())
    drafts = list(range(1, k + 1))
    out: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        await sess.verify(drafts)
        out.append((time.perf_counter() - t0) * 1000.0)
    await sess.close()
    await client.close()
    return out


async def stream_gaps(url: str, route: str, tokens: int) -> tuple[list[float], float, int]:
    """One streamed chat request: (inter-chunk gaps in ms, tokens/s from request to last
    chunk, completion tokens)."""
    body = {
        "model": route,
        "messages": [{"role": "user", "content": "go"}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    stamps: list[float] = []
    completion = 0
    t0 = time.perf_counter()
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}/v1/chat/completions", json=body) as resp,
    ):
        resp.raise_for_status()
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            data = json.loads(line[6:])
            for ch in data.get("choices") or []:
                if (ch.get("delta") or {}).get("content"):
                    stamps.append(time.perf_counter())
            if data.get("usage"):
                completion = int(data["usage"]["completion_tokens"])
    gaps = [(b - a) * 1000.0 for a, b in pairwise(stamps)]
    # Tokens per second over the whole stream (chunks may carry several tokens each).
    span = stamps[-1] - t0 if stamps else 0.0
    tps = completion / span if span > 0 else 0.0
    return gaps, tps, completion


async def stream_rate(url: str, route: str, tokens: int) -> float:
    """Streamed tokens/s of one request, read by a client in its own process."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.scenarios.overhead",
        url,
        route,
        str(tokens),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"stream client exited {proc.returncode}")
    return float(json.loads(out)["tps"])


async def run(args: argparse.Namespace) -> Report:
    report = Report(
        scenario=NAME,
        machine=machine_facts(),
        config={"commands": args.commands, "tokens": args.tokens, "streams": args.streams},
    )
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "arrivals.jsonl"
        async with fake_engine_process(record=record) as address:
            rtt = {}
            for k in (0, 8):
                await session_round_trips(address, 50, k)  # warm
                rtt[k] = await session_round_trips(address, args.commands, k)
            # "rounds": a predicted-output route given no prediction takes one Verify round
            # trip per token (what any drafting route does on its plain steps); "none" streams
            # the whole completion as one Generate.
            routes = [
                Route("rounds", "prediction"),
                Route("none", "none"),
                Route("ngram", "ngram", max_draft_tokens=16),
            ]
            async with gateway_for(address, routes, target_model="fake") as url:
                await stream_gaps(url, "rounds", 200)  # warm
                round_rates: list[float] = []
                for _ in tqdm(range(args.streams), desc="streams, 1 token/round", unit="stream"):
                    round_rates.append(await stream_rate(url, "rounds", args.tokens))
                sessions = [json.loads(line) for line in record.read_text().splitlines()]
                await stream_gaps(url, "none", 200)  # warm
                rates: list[float] = []
                for _ in tqdm(range(args.streams), desc="streams, draft none", unit="stream"):
                    rates.append(await stream_rate(url, "none", args.tokens))
                await stream_gaps(url, "ngram", 200)  # warm
                ngram_rates: list[float] = []
                for _ in tqdm(range(args.streams), desc="streams, n-gram", unit="stream"):
                    ngram_rates.append(await stream_rate(url, "ngram", args.tokens))
    # The last sessions are the measured streams (the earlier ones: RTT loops and warm-up).
    gaps = [
        (b - a) * 1000.0 for arrivals in sessions[-args.streams :] for a, b in pairwise(arrivals)
    ]
    rows = []
    for k, xs in rtt.items():
        rows.append([f"session Verify k={k} round trip", median(xs), pct(xs, 90), pct(xs, 99)])
    rows.append(
        [
            "whole round through the gateway (engine-side gap), 1 token per round",
            median(gaps),
            pct(gaps, 90),
            pct(gaps, 99),
        ]
    )
    gw_own = median(gaps) - median(rtt[0])
    rows.append(["gateway's added latency (round - bare Verify RTT)", gw_own, None, None])
    report.tables.append(("Latency per round / command (ms)", ["what", "p50", "p90", "p99"], rows))
    report.tables.append(
        (
            "Streamed tokens/s, one stream at a time",
            ["route", *[f"stream {i + 1}" for i in range(len(rates))], "median"],
            [
                ["plain steps, 1 Verify round trip per token", *round_rates, median(round_rates)],
                ["draft none (one Generate stream)", *rates, median(rates)],
                ["n-gram, k <= 16 (all accepted)", *ngram_rates, median(ngram_rates)],
            ],
        )
    )
    report.target("p50 gateway added latency per round, ms", gw_own, "< 1 ms", gw_own < 1.0)
    report.target(
        "p50 whole round through gateway (gRPC included), ms",
        median(gaps),
        "< 1 ms",
        median(gaps) < 1.0,
    )
    report.target(
        "session stream fixed per-command overhead p50, ms",
        median(rtt[0]),
        "< 1 ms",
        median(rtt[0]) < 1.0,
    )
    report.target(
        "streamed tokens/s, one stream, draft none", median(rates), ">= 5000", median(rates) >= 5000
    )
    report.target(
        "streamed tokens/s, one stream, 1 Verify round trip per token",
        median(round_rates),
        ">= 5000",
        median(round_rates) >= 5000,
    )
    report.target(
        "streamed tokens/s, one stream, n-gram (17 tokens per round)",
        median(ngram_rates),
        ">= 5000",
        median(ngram_rates) >= 5000,
    )
    report.extra.update(
        {
            "verify_rtt_ms": {str(k): xs for k, xs in rtt.items()},
            "gateway_round_ms": {"p50": median(gaps), "p90": pct(gaps, 90), "p99": pct(gaps, 99)},
            "gateway_own_ms_p50": gw_own,
            "stream_tps": rates,
            "stream_tps_rounds": round_rates,
            "stream_tps_ngram": ngram_rates,
            "plot_bars": [
                ("Verify k=0", median(rtt[0])),
                ("Verify k=8", median(rtt[8])),
                ("gateway round", median(gaps)),
            ],
            "plot_ylabel": "p50 ms",
            "plot_series": [
                ("gateway round (ms), first 300", list(range(len(gaps[:300]))), gaps[:300])
            ],
            "plot_series_x": "round",
            "plot_series_y": "ms",
        }
    )
    report.notes.append(
        "Fake engine, gateway (this process) and each measured SSE client in their own "
        "processes, on 2 cores; warm-up requests use an in-process client. The load average "
        "at start is in the machine facts: read the figures with it."
    )
    return report


if __name__ == "__main__":  # the stream client of stream_rate: URL ROUTE TOKENS
    _url, _route, _tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
    _gaps, _tps, _n = asyncio.run(stream_gaps(_url, _route, _tokens))
    print(json.dumps({"tps": _tps, "completion_tokens": _n}))
