"""What the end-to-end scenarios share: the systems under test, the request matrix (every prompt
on every system, interleaved prompt by prompt so that background load hits all systems alike),
and the options every scenario takes."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

import openai
from tqdm import tqdm

from benchmarks.measure import RequestResult, stream_chat
from benchmarks.prompts import KINDS, Prompt

__all__ = ["System", "add_common_arguments", "greedy_identity_table", "run_matrix"]


@dataclass(frozen=True, slots=True)
class System:
    """One system under test: an OpenAI endpoint and model name, and what it runs."""

    name: str
    base_url: str  # ends in /v1
    model: str
    use_prediction: bool = False
    kinds: tuple[str, ...] | None = None  # None = every kind

    def runs(self, prompt: Prompt) -> bool:
        return self.kinds is None or prompt.kind in self.kinds


def add_common_arguments(p: argparse.ArgumentParser, *, max_tokens: int = 128) -> None:
    p.add_argument("--kinds", default=",".join(KINDS), help="comma-separated prompt kinds")
    p.add_argument("--per-kind", type=int, default=2, help="prompts per kind (suite has 2)")
    p.add_argument("--repeat", type=int, default=1, help="times each prompt runs per system")
    p.add_argument("--max-tokens", type=int, default=max_tokens)
    p.add_argument("--threads", type=int, default=2, help="CPU threads of every engine")


async def run_matrix(
    systems: Sequence[System], prompts: Sequence[Prompt], *, max_tokens: int, repeat: int = 1
) -> list[RequestResult]:
    """Warm every system once, then run each prompt on each system, prompt by prompt; odd
    repeats take the systems in reverse order, so a machine that drifts slower or faster over
    the run (this VM does, by up to 15%) favours no system."""
    clients = {
        s.name: openai.AsyncOpenAI(
            base_url=s.base_url, api_key="bench", max_retries=0, timeout=600.0
        )
        for s in systems
    }
    warm = Prompt("warm-up", "warm-up", "Say hello.")
    for s in systems:
        await stream_chat(clients[s.name], s.name, warm, model=s.model, max_tokens=8)
    jobs = [
        (p, s)
        for rep in range(repeat)
        for p in prompts
        for s in (systems if rep % 2 == 0 else systems[::-1])
        if s.runs(p)
    ]
    results: list[RequestResult] = []
    with tqdm(total=len(jobs), unit="req", dynamic_ncols=True) as bar:
        for prompt, s in jobs:
            bar.set_description(f"{prompt.name} on {s.name}")
            r = await stream_chat(
                clients[s.name],
                s.name,
                prompt,
                model=s.model,
                max_tokens=max_tokens,
                use_prediction=s.use_prediction,
            )
            results.append(r)
            bar.set_postfix(tps=f"{r.decode_tps:.1f}", err=bool(r.error))
            bar.update()
    for c in clients.values():
        await c.close()
    return results


def greedy_identity_table(
    results: Sequence[RequestResult], reference: str
) -> tuple[str, list[str], list[list[object]]]:
    """For greedy prompts: does each system's text equal the reference system's (lossless)?"""
    ref = {r.prompt: r.text for r in results if r.system == reference and not r.sampled}
    rows: list[list[object]] = []
    for system in dict.fromkeys(r.system for r in results):
        if system == reference:
            continue
        same = total = 0
        for r in results:
            if r.system == system and not r.sampled and r.prompt in ref:
                total += 1
                same += r.text == ref[r.prompt]
        if total:
            rows.append([system, f"{same}/{total}"])
    return (
        f"Greedy outputs identical to `{reference}`",
        ["system", "identical / greedy requests"],
        rows,
    )


def kinds_arg(value: str) -> list[str]:
    return [k.strip() for k in value.split(",") if k.strip()]
