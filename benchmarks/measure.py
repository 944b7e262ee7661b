"""One streamed chat request through an OpenAI-compatible endpoint, timed on the client.

:func:`stream_chat` uses the real ``openai`` client and records, per request: wall time, time to
first token, completion tokens (the server's own usage), the server-reported prompt time, and
what speculation did (the gateway's ``tightwad`` object, or llama-server's ``timings``
``draft_n``/``draft_n_accepted``).

Figures: ``decode_tps`` = completion tokens / (wall - server-reported prompt time), i.e.
generation speed without prefill; ``e2e_tps`` = completion tokens / wall.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import openai

from benchmarks.prompts import Prompt

__all__ = ["RequestResult", "stream_chat"]


@dataclass(slots=True)
class RequestResult:
    system: str
    prompt: str
    kind: str
    sampled: bool
    completion_tokens: int = 0
    prompt_tokens: int = 0
    wall_s: float = 0.0
    ttft_s: float = 0.0
    prefill_ms: float | None = None
    decode_tps: float = 0.0
    e2e_tps: float = 0.0
    # Speculation, when the server reports it.
    mode: str = ""
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    plain_steps: int = 0
    draft_ms: float = 0.0
    verify_ms: float = 0.0
    accepted_by_position: list[int] = field(default_factory=list)
    draft_failures: int = 0
    finish_reason: str = ""
    text: str = ""
    error: str = ""
    load_average: float | None = None  # 1-minute load average when the request ended

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


async def stream_chat(
    client: openai.AsyncOpenAI,
    system: str,
    prompt: Prompt,
    *,
    model: str,
    max_tokens: int,
    use_prediction: bool = False,
    ignore_eos: bool = False,
) -> RequestResult:
    """Run ``prompt`` once as a streamed chat request; failures are recorded, not raised."""
    res = RequestResult(system=system, prompt=prompt.name, kind=prompt.kind, sampled=prompt.sampled)
    kwargs: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt.content}],
        "max_tokens": max_tokens,
        "temperature": prompt.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if prompt.seed is not None:
        kwargs["seed"] = prompt.seed
    if use_prediction and prompt.prediction:
        kwargs["prediction"] = {"type": "content", "content": prompt.prediction}
    if ignore_eos:
        kwargs["extra_body"] = {"ignore_eos": True}
    pieces: list[str] = []
    t0 = time.perf_counter()
    try:
        stream = await client.chat.completions.create(**kwargs)
        async for chunk in stream:
            data = chunk.to_dict()
            for choice in data.get("choices") or []:
                text = (choice.get("delta") or {}).get("content") or ""
                if text:
                    if not pieces:
                        res.ttft_s = time.perf_counter() - t0
                    pieces.append(text)
                if choice.get("finish_reason"):
                    res.finish_reason = choice["finish_reason"]
            if data.get("usage"):
                res.completion_tokens = int(data["usage"].get("completion_tokens") or 0)
                res.prompt_tokens = int(data["usage"].get("prompt_tokens") or 0)
            if "tightwad" in data:
                _take_tightwad(res, data["tightwad"])
            if "timings" in data:
                _take_timings(res, data["timings"])
    except openai.OpenAIError as exc:
        res.error = f"{type(exc).__name__}: {exc}"
    res.wall_s = time.perf_counter() - t0
    res.load_average = round(os.getloadavg()[0], 2)
    res.text = "".join(pieces)
    if res.completion_tokens and res.wall_s > 0:
        gen_s = res.wall_s - (res.prefill_ms or 0.0) / 1000.0
        res.decode_tps = res.completion_tokens / gen_s if gen_s > 0 else 0.0
        res.e2e_tps = res.completion_tokens / res.wall_s
    return res


def _take_tightwad(res: RequestResult, tw: dict[str, Any]) -> None:
    res.mode = str(tw.get("mode", ""))
    res.rounds = int(tw.get("rounds", 0))
    res.drafted = int(tw.get("drafted", 0))
    res.accepted = int(tw.get("accepted", 0))
    res.plain_steps = int(tw.get("plain_steps", 0))
    res.draft_ms = float(tw.get("draft_ms", 0.0))
    res.verify_ms = float(tw.get("verify_ms", 0.0))
    res.prefill_ms = float(tw.get("prefill_ms", 0.0))
    res.accepted_by_position = [int(x) for x in tw.get("accepted_by_position", [])]
    res.draft_failures = int(tw.get("draft_failures", 0))


def _take_timings(res: RequestResult, t: dict[str, Any]) -> None:
    res.mode = res.mode or "llama-server"
    res.prefill_ms = float(t.get("prompt_ms", 0.0))
    if "draft_n" in t:
        res.drafted = int(t.get("draft_n", 0))
        res.accepted = int(t.get("draft_n_accepted", 0))
