"""One load-client process of ``test_load_64``: ``--streams`` concurrent greedy chat streams
with the real ``openai`` client, each request after the other until ``--seconds`` have passed.

    python load_clients.py --url URL --model M --streams N --seconds S --max-tokens T
                           --prompts FILE.json --offset I --out FILE.json

The API key comes from ``$TIGHTWAD_API_KEY``. Writes one record per request (prompt, text,
finish reason, time to first token, completion tokens, error) to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import openai


async def _one(client: openai.AsyncOpenAI, model: str, prompt: str, max_tokens: int) -> dict:
    record: dict[str, Any] = {"prompt": prompt, "text": "", "finish": None, "ttft_s": None,
                              "tokens": 0, "error": None}  # fmt: skip
    t0 = time.monotonic()
    try:
        stream = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if chunk.choices:
                choice = chunk.choices[0]
                if choice.delta.content:
                    if record["ttft_s"] is None:
                        record["ttft_s"] = time.monotonic() - t0
                    record["text"] += choice.delta.content
                if choice.finish_reason:
                    record["finish"] = choice.finish_reason
            if chunk.usage is not None:
                record["tokens"] = chunk.usage.completion_tokens
    except Exception as exc:  # every failure is counted and reported
        record["error"] = f"{type(exc).__name__}: {exc}"
    record["elapsed_s"] = time.monotonic() - t0
    return record


async def _run(ns: argparse.Namespace, prompts: list[str]) -> list[dict]:
    client = openai.AsyncOpenAI(
        base_url=f"{ns.url}/v1",
        api_key=os.environ["TIGHTWAD_API_KEY"],
        max_retries=0,
        timeout=600,
    )
    deadline = time.monotonic() + ns.seconds
    records: list[dict] = []

    async def worker(i: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            prompt = prompts[(ns.offset + i + n) % len(prompts)]
            n += 1
            records.append(await _one(client, ns.model, prompt, ns.max_tokens))

    try:
        await asyncio.gather(*(worker(i) for i in range(ns.streams)))
    finally:
        await client.close()
    return records


def main() -> None:
    p = argparse.ArgumentParser()
    for flag in ("--url", "--model", "--prompts", "--out"):
        p.add_argument(flag, required=True)
    for flag in ("--streams", "--max-tokens", "--offset"):
        p.add_argument(flag, type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    ns = p.parse_args()
    records = asyncio.run(_run(ns, json.loads(Path(ns.prompts).read_text())))
    Path(ns.out).write_text(json.dumps(records))


if __name__ == "__main__":
    main()
