"""GPU inventory of one host, across vendors, cross-checked with what llama.cpp sees.

Parsers are pure functions of a tool's text (``parse_nvidia_csv``, ``parse_rocm_smi``, ...);
probes run the tools through an injectable ``CommandRunner``; ``collect_inventory`` runs them
all and returns an ``InventoryReport``. Devices are keyed by UUID or PCI bus id, never by index.
"""

from tightwad.agent.inventory.amd import parse_amd_smi, parse_rocm_smi, parse_rocminfo
from tightwad.agent.inventory.apple import metal_working_set, parse_system_profiler
from tightwad.agent.inventory.collect import collect_inventory
from tightwad.agent.inventory.cpu import cpu_device, parse_cpuinfo, parse_meminfo
from tightwad.agent.inventory.ggml import (
    GgmlDevice,
    RpcServerBanner,
    cross_check,
    parse_ggml_devices_json,
    parse_list_devices,
    parse_rpc_server_banner,
)
from tightwad.agent.inventory.nvidia import parse_nvidia_csv, parse_nvidia_list, parse_nvidia_xml
from tightwad.agent.inventory.runner import (
    CommandResult,
    CommandRunner,
    ReplayRunner,
    SubprocessRunner,
)
from tightwad.engine.device_facts import (
    Backend,
    DeviceInfo,
    HostFacts,
    InventoryReport,
    InventoryWarning,
    Vendor,
)

__all__ = [
    "Backend",
    "CommandResult",
    "CommandRunner",
    "DeviceInfo",
    "GgmlDevice",
    "HostFacts",
    "InventoryReport",
    "InventoryWarning",
    "ReplayRunner",
    "RpcServerBanner",
    "SubprocessRunner",
    "Vendor",
    "collect_inventory",
    "cpu_device",
    "cross_check",
    "metal_working_set",
    "parse_amd_smi",
    "parse_cpuinfo",
    "parse_ggml_devices_json",
    "parse_list_devices",
    "parse_meminfo",
    "parse_nvidia_csv",
    "parse_nvidia_list",
    "parse_nvidia_xml",
    "parse_rocm_smi",
    "parse_rocminfo",
    "parse_rpc_server_banner",
    "parse_system_profiler",
]
