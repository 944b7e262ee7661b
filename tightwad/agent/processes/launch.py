"""How a ``ProcessSpec`` becomes a command line and an environment (pure functions).

- Binding policy: a process listens on the agent's cluster address unless the spec names
  another. A wildcard (``0.0.0.0``, ``::``) or public address needs a double opt-in, the
  host's ``cluster.allow_public_bind`` and the spec's ``allow_public_bind``, and is returned
  with a warning to log loudly: the llama.cpp RPC protocol has no authentication.
- Device pinning by the vendor's visibility variable, keyed by stable ids: NVIDIA by UUID in
  ``CUDA_VISIBLE_DEVICES`` (with ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so indices agree with
  nvidia-smi); AMD by ``ROCR_VISIBLE_DEVICES`` (UUID or index) and ``HIP_VISIBLE_DEVICES``
  renumbered ``0..n-1`` (HIP indices are relative to what ROCR exposes); Vulkan by
  ``GGML_VK_VISIBLE_DEVICES`` (see :func:`vulkan_index`); a CPU-only process hides every GPU.
- Backend presets (ROCm with several GPUs: ``HSA_ENABLE_SDMA=0``; Mesa's software Vulkan
  device llvmpipe: ``GGML_VK_DISABLE_FUSION=1``, as
  :func:`tightwad.engine.ggml_devices.software_vulkan_workaround` says why), then the spec's ``env``
  overrides on top.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tightwad.agent.processes.domain import ProcessKind, ProcessSpec
from tightwad.engine.device_facts import Backend, DeviceInfo
from tightwad.engine.ggml_devices import VK_DISABLE_FUSION, is_llvmpipe
from tightwad.errors import InvalidRequestError

__all__ = [
    "ENGINE_HOST_MODULE",
    "BindPolicy",
    "DeviceLookup",
    "build_command",
    "child_env",
    "device_env",
    "resolve_bind_host",
    "vulkan_index",
]

DeviceLookup = Callable[[str], DeviceInfo | None]

_WILDCARDS = frozenset({"0.0.0.0", "::", "*"})
_SPEC_ADDRESS_FLAGS = frozenset({"--host", "--port", "-H", "-p", "--listen"})
ENGINE_HOST_MODULE = "tightwad.agent.engine_host"
_ROCM_MULTI_GPU = {"HSA_ENABLE_SDMA": "0"}
VK_VISIBLE = "GGML_VK_VISIBLE_DEVICES"


@dataclass(frozen=True, slots=True)
class BindPolicy:
    cluster_address: str = "127.0.0.1"
    allow_public_bind: bool = False
    private_network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None


def _is_public(host: str, policy: BindPolicy) -> bool:
    if host in _WILDCARDS:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host != "localhost" and policy.private_network is not None
    if ip.is_loopback:
        return False
    if policy.private_network is not None:
        return ip not in policy.private_network
    return not ip.is_private


def resolve_bind_host(spec: ProcessSpec, policy: BindPolicy) -> tuple[str, str | None]:
    """The address to listen on, and a warning to log (``None`` when all is well)."""
    host = spec.host or policy.cluster_address
    if not _is_public(host, policy):
        return host, None
    if not (spec.allow_public_bind and policy.allow_public_bind):
        missing = [
            what
            for what, ok in (
                ("cluster.allow_public_bind: true in the cluster file", policy.allow_public_bind),
                ("allow_public_bind in the process spec", spec.allow_public_bind),
            )
            if not ok
        ]
        raise InvalidRequestError(
            f"{spec.name}: refusing to listen on {host}, a wildcard or public address outside "
            f"the cluster network ({policy.private_network or 'private ranges'}); the llama.cpp "
            f"RPC protocol has no authentication. Use the cluster address "
            f"{policy.cluster_address}, or opt in with {' and '.join(missing)}"
        )
    warning = (
        f"{spec.name} listens on {host}: anyone who can reach this port can run code on the "
        "device (llama.cpp RPC has no authentication); firewall it"
    )
    return host, warning


def _resolve_devices(spec: ProcessSpec, lookup: DeviceLookup) -> list[DeviceInfo]:
    devices: list[DeviceInfo] = []
    for device_id in spec.device_ids:
        device = lookup(device_id)
        if device is None:
            raise InvalidRequestError(f"{spec.name}: device {device_id!r} is not on this host")
        devices.append(device)
    return devices


def _cuda_ref(device: DeviceInfo) -> str:
    return device.id if device.id.startswith(("GPU-", "MIG-")) else str(device.index)


def vulkan_index(device: DeviceInfo, base: Mapping[str, str]) -> int:
    """The Vulkan physical-device index ``GGML_VK_VISIBLE_DEVICES`` takes for ``device``.

    The inventory names a Vulkan device as ggml numbers it in the agent's process
    (``Vulkan1``: ggml's second Vulkan device). When the agent's environment sets
    ``GGML_VK_VISIBLE_DEVICES`` (as a host with Mesa's llvmpipe must, a Vulkan device of type
    CPU that ggml skips otherwise), ggml's n-th device is the n-th index of that list; without
    it ggml lists the GPUs in the loader's order, which is the physical index as long as no
    CPU-type device (llvmpipe) comes first: set the variable on such a host."""
    digits = device.ggml_name.removeprefix("Vulkan")
    position = int(digits) if digits.isdigit() else device.index
    shown = [p for p in base.get(VK_VISIBLE, "").replace(",", " ").split() if p.isdigit()]
    if VK_VISIBLE in base and position < len(shown):
        return int(shown[position])
    return position


def device_env(
    spec: ProcessSpec, lookup: DeviceLookup, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Visibility variables and backend presets for the spec's devices (before overrides);
    ``base`` is the agent's own environment (for Vulkan's numbering)."""
    devices = _resolve_devices(spec, lookup)
    env: dict[str, str] = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    if not spec.device_ids:
        return env
    cuda = [d for d in devices if d.backend is Backend.CUDA]
    rocm = [d for d in devices if d.backend is Backend.ROCM]
    vulkan = [d for d in devices if d.backend is Backend.VULKAN]
    env[VK_VISIBLE] = ",".join(str(vulkan_index(d, base or {})) for d in vulkan)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(_cuda_ref(d) for d in cuda)
    env["ROCR_VISIBLE_DEVICES"] = ",".join(_cuda_ref(d) for d in rocm)
    env["HIP_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(len(rocm)))
    if len(rocm) > 1:
        env.update(_ROCM_MULTI_GPU)
    if any(is_llvmpipe(d.name) for d in vulkan):  # software Vulkan: see the function's doc
        env[VK_DISABLE_FUSION] = "1"
    return env


def _check_args(spec: ProcessSpec) -> None:
    clash = sorted(_SPEC_ADDRESS_FLAGS.intersection(a.split("=", 1)[0] for a in spec.args))
    if clash:
        raise InvalidRequestError(
            f"{spec.name}: {', '.join(clash)} in args; set the spec's host and port instead"
        )


def build_command(
    spec: ProcessSpec,
    binary: Path,
    host: str,
    port: int,
    *,
    line_buffer: Sequence[str] = (),
) -> list[str]:
    """argv for the child; ``line_buffer`` (e.g. ``stdbuf -oL -eL``) goes in front.

    For an engine host ``binary`` is the Python interpreter that runs
    :mod:`tightwad.agent.engine_host` (unbuffered, so its log lines arrive as written)."""
    _check_args(spec)
    if spec.kind is ProcessKind.RPC_SERVER:
        own = [str(binary), "-H", host, "-p", str(port)]
    elif spec.kind is ProcessKind.ENGINE_HOST:
        listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        own = [str(binary), "-u", "-m", ENGINE_HOST_MODULE, "--listen", listen]
    else:
        own = [str(binary), "--host", host, "--port", str(port)]
    return [*line_buffer, *own, *spec.args]


def child_env(base: Mapping[str, str], spec: ProcessSpec, lookup: DeviceLookup) -> dict[str, str]:
    """The child's whole environment: ``base``, then pinning and presets, then ``spec.env``."""
    return {**base, **device_env(spec, lookup, base), **spec.env}
