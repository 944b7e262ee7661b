"""Domain <-> protobuf for the agent's inventory and model facts: the only place they meet.

Unknown utilisation/temperature is ``None`` in the domain and -1 on the wire. ``Inventory``'s
``processes`` and ``engines`` belong to other modules: ``inventory_to_proto`` leaves them empty
for their owners to fill in.
"""

from __future__ import annotations

from tightwad.engine.device_facts import (
    Backend,
    DeviceInfo,
    HostFacts,
    InventoryReport,
    InventoryWarning,
    Vendor,
)
from tightwad.engine.model_facts import ModelFacts, ModelFileError
from tightwad.v1 import agent_pb2, common_pb2

__all__ = [
    "device_from_proto",
    "device_to_proto",
    "host_from_proto",
    "host_to_proto",
    "inventory_from_proto",
    "inventory_to_proto",
    "model_error_to_proto",
    "model_facts_from_proto",
    "model_facts_to_proto",
    "warning_from_proto",
    "warning_to_proto",
]

_VENDORS = {
    Vendor.NVIDIA: common_pb2.VENDOR_NVIDIA,
    Vendor.AMD: common_pb2.VENDOR_AMD,
    Vendor.APPLE: common_pb2.VENDOR_APPLE,
    Vendor.INTEL: common_pb2.VENDOR_INTEL,
    Vendor.CPU: common_pb2.VENDOR_CPU,
    Vendor.UNKNOWN: common_pb2.VENDOR_UNSPECIFIED,
}
_BACKENDS = {
    Backend.CUDA: common_pb2.BACKEND_CUDA,
    Backend.ROCM: common_pb2.BACKEND_ROCM,
    Backend.METAL: common_pb2.BACKEND_METAL,
    Backend.VULKAN: common_pb2.BACKEND_VULKAN,
    Backend.CPU: common_pb2.BACKEND_CPU,
    Backend.RPC: common_pb2.BACKEND_RPC,
    Backend.SYCL: common_pb2.BACKEND_SYCL,
    Backend.UNKNOWN: common_pb2.BACKEND_UNSPECIFIED,
}
_VENDORS_BACK = {v: k for k, v in _VENDORS.items()}
_BACKENDS_BACK = {v: k for k, v in _BACKENDS.items()}


def _unknown_to_wire(value: float | None) -> float:
    return -1.0 if value is None else value


def _unknown_from_wire(value: float) -> float | None:
    return None if value < 0 else value


def device_to_proto(device: DeviceInfo) -> common_pb2.Device:
    return common_pb2.Device(
        id=device.id,
        index=device.index,
        name=device.name,
        vendor=_VENDORS[device.vendor],
        backend=_BACKENDS[device.backend],
        memory_total_bytes=device.memory_total_bytes,
        memory_free_bytes=device.memory_free_bytes,
        utilization_percent=_unknown_to_wire(device.utilization_percent),
        temperature_c=_unknown_to_wire(device.temperature_c),
        driver_version=device.driver_version,
        compute_version=device.compute_version,
        pci_bus_id=device.pci_bus_id,
        parent_id=device.parent_id,
        ggml_name=device.ggml_name,
    )


def device_from_proto(msg: common_pb2.Device) -> DeviceInfo:
    return DeviceInfo(
        id=msg.id,
        index=msg.index,
        name=msg.name,
        vendor=_VENDORS_BACK.get(msg.vendor, Vendor.UNKNOWN),
        backend=_BACKENDS_BACK.get(msg.backend, Backend.UNKNOWN),
        memory_total_bytes=msg.memory_total_bytes,
        memory_free_bytes=msg.memory_free_bytes,
        utilization_percent=_unknown_from_wire(msg.utilization_percent),
        temperature_c=_unknown_from_wire(msg.temperature_c),
        driver_version=msg.driver_version,
        compute_version=msg.compute_version,
        pci_bus_id=msg.pci_bus_id,
        parent_id=msg.parent_id,
        ggml_name=msg.ggml_name,
    )


def host_to_proto(host: HostFacts) -> agent_pb2.HostInfo:
    return agent_pb2.HostInfo(
        hostname=host.hostname,
        os=host.os,
        arch=host.arch,
        cpu_cores=host.cpu_cores,
        ram_total_bytes=host.ram_total_bytes,
        ram_available_bytes=host.ram_available_bytes,
        agent_version=host.agent_version,
        llama_cpp_version=host.llama_cpp_version,
        rpc_protocol_version=host.rpc_protocol_version,
    )


def host_from_proto(msg: agent_pb2.HostInfo) -> HostFacts:
    return HostFacts(
        hostname=msg.hostname,
        os=msg.os,
        arch=msg.arch,
        cpu_cores=msg.cpu_cores,
        ram_total_bytes=msg.ram_total_bytes,
        ram_available_bytes=msg.ram_available_bytes,
        agent_version=msg.agent_version,
        llama_cpp_version=msg.llama_cpp_version,
        rpc_protocol_version=msg.rpc_protocol_version,
    )


def warning_to_proto(warning: InventoryWarning) -> agent_pb2.InventoryWarning:
    return agent_pb2.InventoryWarning(source=warning.source, message=warning.message)


def warning_from_proto(msg: agent_pb2.InventoryWarning) -> InventoryWarning:
    return InventoryWarning(source=msg.source, message=msg.message)


def inventory_to_proto(report: InventoryReport) -> agent_pb2.Inventory:
    return agent_pb2.Inventory(
        host=host_to_proto(report.host),
        devices=[device_to_proto(d) for d in report.devices],
        warnings=[warning_to_proto(w) for w in report.warnings],
    )


def inventory_from_proto(msg: agent_pb2.Inventory) -> InventoryReport:
    return InventoryReport(
        host=host_from_proto(msg.host),
        devices=tuple(device_from_proto(d) for d in msg.devices),
        warnings=tuple(warning_from_proto(w) for w in msg.warnings),
    )


def model_facts_to_proto(facts: ModelFacts) -> common_pb2.ModelFacts:
    return common_pb2.ModelFacts(
        path=facts.path,
        size_bytes=facts.size_bytes,
        architecture=facts.architecture,
        name=facts.name,
        n_layers=facts.n_layers,
        context_length=facts.context_length,
        embedding_length=facts.embedding_length,
        n_head=facts.n_head,
        n_head_kv=facts.n_head_kv,
        layer_bytes=list(facts.layer_bytes),
        embedding_bytes=facts.embedding_bytes,
        output_bytes=facts.output_bytes,
        kv_bytes_per_token=facts.kv_bytes_per_token,
        quantization=facts.quantization,
        n_vocab=facts.n_vocab,
        vocab_fingerprint=facts.vocab_fingerprint,
        sha256=facts.sha256,
    )


def model_facts_from_proto(msg: common_pb2.ModelFacts) -> ModelFacts:
    """The wire has no ``tied_embeddings``/``other_bytes``: they come back False/0."""
    return ModelFacts(
        path=msg.path,
        size_bytes=msg.size_bytes,
        architecture=msg.architecture,
        name=msg.name,
        n_layers=msg.n_layers,
        context_length=msg.context_length,
        embedding_length=msg.embedding_length,
        n_head=msg.n_head,
        n_head_kv=msg.n_head_kv,
        layer_bytes=tuple(msg.layer_bytes),
        embedding_bytes=msg.embedding_bytes,
        output_bytes=msg.output_bytes,
        kv_bytes_per_token=msg.kv_bytes_per_token,
        quantization=msg.quantization,
        n_vocab=msg.n_vocab,
        vocab_fingerprint=msg.vocab_fingerprint,
        sha256=msg.sha256,
    )


def model_error_to_proto(error: ModelFileError) -> agent_pb2.InventoryWarning:
    """A file ``ListModelFiles`` could not read, as its ``errors`` entry."""
    return agent_pb2.InventoryWarning(source=error.path, message=error.reason)
