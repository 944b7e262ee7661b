"""Run in a subprocess by the gpu tier: the decode sequence that crashed Mesa's llvmpipe inside
ggml-vulkan's fused kernels (flash attention on, every layer on the GPU: a 20-token prefill, a
1-token decode, then a 3-token decode with every row's logits, as a verify of speculation
does), after the engine's workaround. Prints one JSON object: the device the workaround
applied to ("" when none), and each decode's argmax rows.

Usage: python fusion_child.py MODEL DEVICE
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tightwad.engine.binding import LlamaLoadParams, LlamaModel
from tightwad.engine.ggml_devices import software_vulkan_workaround


def main(model: Path, device: str) -> dict[str, object]:
    devices = (device,) if device else ()
    applied = software_vulkan_workaround(devices, -1) if device else ""
    params = LlamaLoadParams(
        path=model, n_ctx=512, n_threads=2, n_gpu_layers=-1 if device else 0,
        n_seq_max=2, flash_attn=True, devices=devices,
    )  # fmt: skip
    m = LlamaModel(params)
    tokens = [(i * 37) % 5000 + 10 for i in range(24)]
    rows: list[list[int]] = []
    pos = 0
    for width in (20, 1, 3):
        m.decode(0, tokens[pos : pos + width], pos, list(range(width)))
        rows.append([m.argmax_row(i) for i in range(width)])
        pos += width
    m.close()
    return {"applied": applied, "rows": rows}


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(Path(sys.argv[1]), sys.argv[2])), flush=True)
    os._exit(0)  # as spec_child.py: no ggml-vulkan static teardown
