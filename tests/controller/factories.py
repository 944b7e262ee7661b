"""Hand-built domain values for controller tests: devices, candidates, model facts."""

from __future__ import annotations

from tightwad.controller.ids import NodeId
from tightwad.controller.placement import Candidate
from tightwad.engine.device_facts import Backend, DeviceInfo, Vendor
from tightwad.engine.model_facts import ModelFacts

MiB = 1024 * 1024
GiB = 1024 * MiB

_VENDOR = {
    Backend.CUDA: Vendor.NVIDIA,
    Backend.ROCM: Vendor.AMD,
    Backend.METAL: Vendor.APPLE,
    Backend.VULKAN: Vendor.AMD,
    Backend.CPU: Vendor.CPU,
}


def device(
    dev_id: str,
    free: int,
    *,
    backend: Backend = Backend.CUDA,
    total: int | None = None,
    index: int = 0,
    ggml_name: str = "",
) -> DeviceInfo:
    return DeviceInfo(
        id=dev_id,
        index=index,
        name=f"{backend.value} {dev_id}",
        vendor=_VENDOR.get(backend, Vendor.UNKNOWN),
        backend=backend,
        memory_total_bytes=total if total is not None else free,
        memory_free_bytes=free,
        ggml_name=ggml_name,
    )


def cand(node: str, dev: DeviceInfo, port: int = 50052) -> Candidate:
    return Candidate(
        NodeId(node), dev, rpc_host=f"10.0.0.{sum(map(ord, node)) % 200 + 1}", rpc_port=port
    )


def facts(
    n_layers: int = 24,
    layer_bytes: int = 100 * MiB,
    *,
    embedding: int = 200 * MiB,
    output: int = 200 * MiB,
    kv_per_token: int = 24 * 1024,
    name: str = "m",
    layers: tuple[int, ...] | None = None,
) -> ModelFacts:
    per_layer = layers if layers is not None else (layer_bytes,) * n_layers
    return ModelFacts(
        path=f"/models/{name}.gguf",
        size_bytes=sum(per_layer) + embedding + output,
        architecture="llama",
        name=name,
        n_layers=len(per_layer),
        context_length=4096,
        embedding_length=1024,
        n_head=16,
        n_head_kv=4,
        layer_bytes=per_layer,
        embedding_bytes=embedding,
        output_bytes=output,
        kv_bytes_per_token=kv_per_token,
        quantization="Q4_K_M",
        n_vocab=32000,
        vocab_fingerprint="f" * 64,
    )
