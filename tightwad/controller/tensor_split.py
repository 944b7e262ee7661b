"""llama.cpp's ``--tensor-split`` and ``-ngl``, both ways: from planned layer ranges to the
flags (:func:`tensor_split_for`), and from the flags to the device of each layer, as
llama.cpp itself assigns them (:func:`layers_from_split`).

``tensor_split`` values put each cumulative boundary half a layer inside its range, so
llama.cpp's ``upper_bound`` over the normalised split reproduces exactly the planned ranges.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["layers_from_split", "tensor_split_for"]


def tensor_split_for(layer_counts: Sequence[int]) -> tuple[tuple[float, ...], int]:
    """``--tensor-split`` and ``-ngl`` for devices holding ``layer_counts`` consecutive layers
    each, in ``--device`` order (the last one also holds the output head, which llama.cpp
    counts as one more layer)."""
    if not layer_counts:
        return (), 0
    counts = list(layer_counts)
    counts[-1] += 1
    total = sum(counts)
    cumulative, bounds = 0, []
    for c in counts[:-1]:
        cumulative += c
        bounds.append((cumulative - 0.5) / total)
    bounds.append(1.0)
    split, prev = [], 0.0
    for b in bounds:
        split.append(round(b - prev, 6))
        prev = b
    return tuple(split), total


def layers_from_split(
    tensor_split: Sequence[float], n_layers: int, n_gpu_layers: int
) -> list[int | None]:
    """llama.cpp's own mapping: the device index (in ``--device`` order) of each layer
    ``0..n_layers`` (the last entry is the output head); ``None`` = the CPU.

    ``-ngl`` counts the output head as a layer and offloads from the end: the last
    ``n_gpu_layers`` of the ``n_layers + 1`` units go to the devices (llama.cpp's
    ``i_gpu_start = n_layer + 1 - n_gpu_layers``, checked against its load log)."""
    total = sum(tensor_split)
    cumulative, acc = [], 0.0
    for f in tensor_split:
        acc += f
        cumulative.append(acc / total if total else 0.0)
    gpu_start = max(n_layers + 1 - n_gpu_layers, 0)
    act = min(n_gpu_layers, n_layers + 1) if tensor_split else 0
    out: list[int | None] = []
    for il in range(n_layers + 1):
        if il < gpu_start or il - gpu_start >= act:
            out.append(None)
            continue
        x = (il - gpu_start) / act
        out.append(next((i for i, s in enumerate(cumulative) if s > x), len(cumulative) - 1))
    return out
