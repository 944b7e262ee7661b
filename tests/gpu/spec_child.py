"""Run in a subprocess by the gpu tier: an engine with the default offload plan (every layer on
the GPU the environment shows), hosted on loopback gRPC as the gateway hosts its engines, and
the gateway's speculative loop over it twice on the same edit prompt: the target alone
(``draft_mode="none"``, top-2 logprobs kept for near-ties) and n-gram drafting. Prints one JSON
object: the plan's summary, and per run the tokens and the loop's stats.

Usage: python spec_child.py MODEL N
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from tightwad.engine.engine_config import EngineConfig
from tightwad.engine.server import EngineServer
from tightwad.gateway.engine_client import EngineClient
from tightwad.gateway.loop import RouteSpec, SpecBackend
from tightwad.gateway.types import ChatMessage, Finished, GenerationRequest, TextDelta

CODE = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"
EDIT = f"Repeat this Python code exactly, with `add` renamed to `plus`:\n```python\n{CODE}```"


async def _run(address: str, mode: str, n: int) -> dict[str, object]:
    # No calibration sweep (up to 64-wide verifies: minutes on llvmpipe); it only tunes speed.
    spec = RouteSpec(name="r", target=EngineClient(address, "m"), draft_mode=mode, calibrate=False)
    backend = SpecBackend(spec)
    await backend.start()
    req = GenerationRequest(
        model="r",
        messages=(ChatMessage("user", EDIT),),
        max_tokens=n,
        logprobs=mode == "none",
        top_logprobs=2 if mode == "none" else 0,
    )
    tokens: list[int] = []
    gaps: list[float] = []
    stats: dict[str, object] = {}
    try:
        async for ev in backend.generate(req):
            if isinstance(ev, TextDelta):
                tokens += ev.token_ids
                gaps += [e.top[0][2] - e.top[1][2] if len(e.top) > 1 else 0.0 for e in ev.logprobs]
            elif isinstance(ev, Finished):
                stats = asdict(ev.stats)
    finally:
        await backend.spec.target.close()
    return {"tokens": tokens, "gaps": gaps, "stats": stats}


async def main(model: Path, n: int) -> dict[str, object]:
    cfg = EngineConfig("m", model, ctx_size=1024, max_sessions=2, threads=2)
    server = EngineServer("127.0.0.1:0", engines=(cfg,))
    address = await server.start()
    try:
        alone = await _run(address, "none", n)
        ngram = await _run(address, "ngram", n)
    finally:
        await server.stop(grace=1.0)
    return {
        "summary": cfg.offload_summary,
        "devices": list(cfg.devices),
        "alone": alone,
        "ngram": ngram,
    }


if __name__ == "__main__":
    result = asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
    print("RESULT " + json.dumps(result), flush=True)
    # Every engine is closed by now. Leave without the interpreter's teardown: ggml-vulkan
    # built as shared libraries can crash in its static destructors at exit (llama.cpp
    # #10528), which once turned this finished, correct run into a -11 in the full suite.
    # A crash before this line still fails the test (no RESULT, the return code shown).
    os._exit(0)
