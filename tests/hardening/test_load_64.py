"""Load: 64 concurrent streaming clients, in several processes, through the full stack.

A ``tightwad-agent`` process serves SmolLM2-135M; a ``tightwad-gateway`` process serves it as
an n-gram-drafted route. ``CLIENT_PROCESSES`` processes (``load_clients.py``) each keep
``STREAMS_PER_PROCESS`` greedy chat streams going with the real ``openai`` client, request
after request, for ``DURATION_S`` (``TIGHTWAD_LOAD64_SECONDS``, default 120).

Asserted: no request fails; every answer is the target alone's greedy answer for its prompt
(or departs from it only at a near-tie, see ``support.NEAR_TIE_LOGPROB_GAP``); the RSS of every
server process (agent, gateway, and any descendant) grows under 10% from after a warm-up pass
to the end; both exit 0 on SIGTERM. Reported (printed, and written as JSON under
``$TIGHTWAD_LOAD64_RESULTS``, e.g. ``benchmarks/results/load/``): requests, errors, p50/p99 time
to first token, tokens per second, RSS at start and end per process. Timings are reported, not
asserted: this tier runs on shared CPUs.

``SESSIONS`` engine sessions (and gateway slots) serve the 64 clients; the others wait in the
gateway's queue, so time to first token includes that wait. Each decode step of the embedded
engine costs in proportion to all sessions' KV cells (see ``test_load.py``).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import openai
import pytest

from .support import (
    ServerProcess,
    free_port,
    rss_bytes,
    start_agent,
    start_gateway_process,
    target_alone,
)

pytestmark = [pytest.mark.slow, pytest.mark.engine, pytest.mark.cluster]

CLIENT_PROCESSES = int(os.environ.get("TIGHTWAD_LOAD64_PROCESSES", "4"))
STREAMS_PER_PROCESS = int(os.environ.get("TIGHTWAD_LOAD64_STREAMS", "16"))
DURATION_S = float(os.environ.get("TIGHTWAD_LOAD64_SECONDS", "120"))
SESSIONS = int(os.environ.get("TIGHTWAD_LOAD64_SESSIONS", "8"))
# One engine thread: on a shared 2-core box a second one waits at every barrier of every layer
# for a core (measured: plain steps of 1.3 s instead of ~20 ms while another job ran).
THREADS = int(os.environ.get("TIGHTWAD_LOAD64_THREADS", "1"))
# Where the figures go: set it to keep them (benchmarks/results/load/ holds a recorded run);
# otherwise they land in the test's temporary folder (and are printed).
RESULTS = os.environ.get("TIGHTWAD_LOAD64_RESULTS", "")
MAX_TOKENS = 24
API_KEY = "sk-load-64"
MODEL = "smollm"
CLIENT = Path(__file__).with_name("load_clients.py")
PROMPTS = [
    "Count from one to twenty, separated by commas.",
    "Write a Python function that returns the square of a number.",
    "Repeat this sentence three times: the cat sat on the mat.",
    "List the days of the week.",
    "What is the capital of France? Answer in one sentence.",
    "Write a haiku about the sea.",
    "Name three primary colors.",
    "What does HTML stand for?",
]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _rss(procs: list[ServerProcess]) -> dict[str, int]:
    """RSS of every server process and each of its descendants, by name."""
    out: dict[str, int] = {}
    for p in procs:
        out[p.name] = rss_bytes(p.pid)
        for child in p.descendants():
            out[f"{p.name}/{child}"] = rss_bytes(child)
    return out


def _records(tmp: Path) -> list[dict]:
    return [
        r for i in range(CLIENT_PROCESSES) for r in json.loads((tmp / f"c{i}.json").read_text())
    ]


def _write(figures: dict, tmp: Path) -> Path:
    folder = Path(RESULTS) if RESULTS else tmp
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(figures, indent=2) + "\n")
    return out


async def _warm_up(url: str) -> None:
    """Every prompt, ``SESSIONS`` at once: the KV buffer's pages become resident."""
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0) as c:
        for _ in range(2):
            await asyncio.gather(
                *(
                    c.chat.completions.create(
                        model=MODEL,
                        messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                        max_tokens=MAX_TOKENS,
                        temperature=0,
                    )
                    for i in range(SESSIONS)
                )
            )


async def test_sixty_four_streaming_clients(tmp_path: Path, smollm_path: Path) -> None:
    agent_port, gateway_port = free_port(), free_port()
    agent = start_agent(
        tmp_path, smollm_path, name="target", port=agent_port, ctx_size=256,
        max_sessions=SESSIONS, threads=THREADS,
    )  # fmt: skip
    servers = [agent]
    clients: list[asyncio.subprocess.Process] = []
    try:
        await agent.wait_ready()
        gateway = start_gateway_process(
            tmp_path,
            port=gateway_port,
            api_key=API_KEY,
            config=(
                "gateway:\n  api_key: ${TIGHTWAD_API_KEY}\n"
                f"  max_concurrency: {SESSIONS}\n  queue_size: 128\n"
                f"routes:\n  - name: {MODEL}\n    target: grpc://127.0.0.1:{agent_port}\n"
                "    draft: ngram\n"
            ),
        )
        servers.append(gateway)
        await gateway.wait_ready()
        url = f"http://127.0.0.1:{gateway_port}"
        refs = await target_alone(f"127.0.0.1:{agent_port}", MODEL, PROMPTS, MAX_TOKENS)
        await _warm_up(url)
        rss_start = _rss(servers)

        prompts_file = tmp_path / "prompts.json"
        prompts_file.write_text(json.dumps(PROMPTS))
        started = time.monotonic()
        clients += [
            await asyncio.create_subprocess_exec(
                sys.executable, str(CLIENT), "--url", url, "--model", MODEL,
                "--streams", str(STREAMS_PER_PROCESS), "--seconds", str(DURATION_S),
                "--max-tokens", str(MAX_TOKENS), "--prompts", str(prompts_file),
                "--offset", str(i * STREAMS_PER_PROCESS), "--out", str(tmp_path / f"c{i}.json"),
                env={**os.environ, "TIGHTWAD_API_KEY": API_KEY},
            )
            for i in range(CLIENT_PROCESSES)
        ]  # fmt: skip
        codes = await asyncio.wait_for(
            asyncio.gather(*(c.wait() for c in clients)), DURATION_S + 600
        )
        elapsed = time.monotonic() - started
        rss_end = _rss(servers)
        assert codes == [0] * CLIENT_PROCESSES, codes
        records = _records(tmp_path)
        exits = {p.name: await p.terminate(timeout_s=60) for p in reversed(servers)}
    finally:
        for c in clients:
            if c.returncode is None:
                c.kill()
                await c.wait()
        for p in servers:
            p.kill()

    errors = [r["error"] for r in records if r["error"]]
    ok = [r for r in records if not r["error"]]
    ttft = [r["ttft_s"] for r in ok if r["ttft_s"] is not None]
    tokens = sum(r["tokens"] for r in ok)
    identical = sum(refs[r["prompt"]].divergence(r["text"]) is None for r in ok)
    figures = {
        "clients": CLIENT_PROCESSES * STREAMS_PER_PROCESS,
        "client_processes": CLIENT_PROCESSES,
        "engine_sessions": SESSIONS,
        "max_tokens": MAX_TOKENS,
        "duration_s": round(elapsed, 1),
        "requests": len(records),
        "errors": len(errors),
        "error_samples": errors[:5],
        "identical_to_target_alone": identical,
        "ttft_p50_s": round(_percentile(ttft, 0.50), 3) if ttft else None,
        "ttft_p99_s": round(_percentile(ttft, 0.99), 3) if ttft else None,
        "ttft_mean_s": round(statistics.fmean(ttft), 3) if ttft else None,
        "completion_tokens": tokens,
        "tokens_per_s": round(tokens / elapsed, 1),
        "rss_start_mib": {k: round(v / 2**20, 1) for k, v in rss_start.items()},
        "rss_end_mib": {k: round(v / 2**20, 1) for k, v in rss_end.items()},
        "rss_growth": {
            k: round((rss_end[k] - v) / v, 4) for k, v in rss_start.items() if k in rss_end
        },
        "exit_codes": exits,
    }
    try:
        from benchmarks.machine import machine_facts

        figures["machine"] = machine_facts()
    except Exception as exc:  # the figures matter more than the machine facts
        figures["machine"] = f"unavailable: {exc!r}"
    out = _write(figures, tmp_path)
    shown = {k: v for k, v in figures.items() if k != "machine"}
    print(f"64-client load figures ({out}):\n{json.dumps(shown, indent=2)}")

    assert figures["errors"] == 0, errors[:5]
    assert records and len(ok) == len(records)
    for r in ok:
        assert r["finish"] in ("stop", "length"), r
        refs[r["prompt"]].check(r["text"], "under load")
    assert set(rss_start) == set(rss_end), (rss_start, rss_end)
    for name, growth in figures["rss_growth"].items():
        assert growth < 0.10, (name, figures["rss_growth"])
    assert exits == {"gateway": 0, "target": 0}, exits
