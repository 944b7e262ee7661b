"""Load: many concurrent streaming requests through a real stack for about a minute.

``tightwad up`` (agent + gateway in one process, SmolLM2-135M, n-gram drafting) serves
``CONCURRENCY`` clients, each streaming chat completions back to back with the real ``openai``
client for ``DURATION_S``. Reported (printed, and written to ``load.json`` in the test's tmp
dir): errors, requests, p50/p99 time to first token, tokens per second, RSS at start and end.
Asserted: no errors, RSS growth under 10%. Timings are reported, not asserted: this tier runs
on shared CPUs.

``SESSIONS`` engine sessions serve the ``CONCURRENCY`` clients (the rest queue in the gateway):
with one KV cache of ``ctx_size * max_sessions`` cells every decode step of the embedded engine
costs in proportion to all sessions' cells, and the target session's whole-stream deadline
(``RouteSpec.target_timeout_s``, 120 s) then fails requests once 48 sessions share 2 cores.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from pathlib import Path

import openai
import pytest

from .support import rss_bytes, start_up

pytestmark = [pytest.mark.slow, pytest.mark.engine]

CONCURRENCY = int(os.environ.get("TIGHTWAD_LOAD_CONCURRENCY", "32"))
# Engine sessions (and gateway slots); the other clients wait in the gateway's queue. See the
# module docstring for why this is not CONCURRENCY on a CPU-only host.
SESSIONS = int(os.environ.get("TIGHTWAD_LOAD_SESSIONS", "4"))
DURATION_S = float(os.environ.get("TIGHTWAD_LOAD_SECONDS", "60"))
API_KEY = "sk-load-test"
PROMPTS = [
    "Count from one to twenty, separated by commas.",
    "Write a Python function that returns the square of a number.",
    "Repeat this sentence three times: the cat sat on the mat.",
    "List the days of the week.",
    "What is the capital of France? Answer in one sentence.",
    "Write a haiku about the sea.",
]


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def test_concurrent_streaming_load(tmp_path: Path) -> None:
    stack = await start_up(
        tmp_path,
        api_key=API_KEY,
        ctx_size=512,
        max_sessions=SESSIONS,
        max_concurrency=SESSIONS,
        queue_size=CONCURRENCY,
        threads=2,
    )
    client = openai.AsyncOpenAI(
        base_url=f"{stack.url}/v1", api_key=API_KEY, max_retries=0, timeout=600
    )
    ttft: list[float] = []
    tokens = 0
    requests = 0
    errors: list[str] = []
    try:
        # Warm up one request, then the RSS baseline.
        await client.chat.completions.create(
            model=stack.model, messages=[{"role": "user", "content": "hi"}], max_tokens=8
        )
        rss_start = rss_bytes(stack.proc.pid)
        started = time.monotonic()
        deadline = started + DURATION_S

        async def worker(i: int) -> None:
            nonlocal tokens, requests
            n = 0
            while time.monotonic() < deadline:
                prompt = PROMPTS[(i + n) % len(PROMPTS)]
                n += 1
                t0 = time.monotonic()
                first = None
                try:
                    stream = await client.chat.completions.create(
                        model=stack.model,
                        messages=[{"role": "user", "content": prompt}],
                        max_tokens=24,
                        temperature=0,
                        stream=True,
                        stream_options={"include_usage": True},
                    )
                    async for chunk in stream:
                        if first is None and chunk.choices and chunk.choices[0].delta.content:
                            first = time.monotonic() - t0
                        if chunk.usage is not None:
                            tokens += chunk.usage.completion_tokens
                    requests += 1
                    if first is not None:
                        ttft.append(first)
                except Exception as exc:  # every failure is counted and reported
                    errors.append(f"{type(exc).__name__}: {exc}")

        await asyncio.gather(*(worker(i) for i in range(CONCURRENCY)))
        elapsed = time.monotonic() - started
        rss_end = rss_bytes(stack.proc.pid)
    finally:
        await client.close()
        output = await stack.stop()
    figures = {
        "concurrency": CONCURRENCY,
        "engine_sessions": SESSIONS,
        "duration_s": round(elapsed, 1),
        "requests": requests,
        "errors": len(errors),
        "error_samples": errors[:5],
        "ttft_p50_s": round(_percentile(ttft, 0.50), 3),
        "ttft_p99_s": round(_percentile(ttft, 0.99), 3),
        "ttft_mean_s": round(statistics.fmean(ttft), 3) if ttft else None,
        "completion_tokens": tokens,
        "tokens_per_s": round(tokens / elapsed, 1),
        "rss_start_mib": round(rss_start / 2**20, 1),
        "rss_end_mib": round(rss_end / 2**20, 1),
        "rss_growth": round((rss_end - rss_start) / rss_start, 4),
        "exit_code": stack.proc.returncode,
    }
    out = tmp_path / "load.json"
    out.write_text(json.dumps(figures, indent=2))
    print(f"load test figures ({out}):\n{json.dumps(figures, indent=2)}")
    assert API_KEY not in output
    assert figures["errors"] == 0, errors[:5]
    assert figures["rss_growth"] < 0.10, figures
