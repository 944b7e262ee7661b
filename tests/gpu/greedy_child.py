"""Run in a subprocess by the gpu tier (a ggml backend reads its environment once per process):
load an engine with the default offload plan (``gpu_layers="auto"``), greedy-generate for each
prompt, print one JSON object: the plan, the placement, and per prompt the tokens and the
top-1 minus top-2 logprob gap at each position.

Usage: python greedy_child.py MODEL N PROMPT [PROMPT ...]
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from tightwad.engine.contract import Message
from tightwad.engine.engine_config import EngineConfig
from tightwad.engine.llama_engine import Engine
from tightwad.spec.sampling import SamplingConfig


async def main(model: Path, n: int, prompts: list[str]) -> dict[str, object]:
    cfg = EngineConfig("m", model, ctx_size=512, max_sessions=2, threads=2)
    engine = await Engine.load(cfg)
    runs = []
    try:
        for text in prompts:
            _, prompt = await engine.render_chat(
                [Message("user", text)], add_generation_prompt=True
            )
            s, _, _ = await engine.open_session(prompt, SamplingConfig(), top_logprobs=2)
            tokens, gaps = [], []
            async for tok, lp, _why in s.generate(n, ignore_eos=True):
                if tok < 0:
                    break
                tokens.append(tok)
                gaps.append(lp.top[0][1] - lp.top[1][1] if lp is not None else 0.0)
            s.release()
            runs.append({"prompt": prompt, "tokens": tokens, "gaps": gaps})
        info = await engine.info()
    finally:
        await engine.close()
    return {
        "gpu_layers": cfg.gpu_layers,
        "devices": list(cfg.devices),
        "summary": cfg.offload_summary,
        "placement": [list(p) for p in info.devices],
        "runs": runs,
    }


if __name__ == "__main__":
    result = asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]))
    print("RESULT " + json.dumps(result), flush=True)
    # Every engine is closed by now. Leave without the interpreter's teardown: ggml-vulkan
    # built as shared libraries can crash in its static destructors at exit (llama.cpp
    # #10528), which once turned this finished, correct run into a -11 in the full suite.
    # A crash before this line still fails the test (no RESULT, the return code shown).
    os._exit(0)
