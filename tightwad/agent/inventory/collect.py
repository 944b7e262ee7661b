"""One inventory pass: every probe at once, then the ggml cross-check.

``collect_inventory`` never raises for what it finds on a host: a missing tool contributes
nothing, a broken one a warning. The CPU device (``cpu:<hostname>``) and the host's RAM are
always reported.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path

import tightwad
from tightwad.agent.inventory import amd, apple, cpu, ggml, nvidia
from tightwad.agent.inventory.runner import CommandRunner
from tightwad.engine.device_facts import (
    DeviceInfo,
    HostFacts,
    InventoryReport,
    InventoryWarning,
)
from tightwad.logs import get_logger

__all__ = ["DEFAULT_TIMEOUT_S", "GGML_PROBE", "collect_inventory"]

DEFAULT_TIMEOUT_S = 15.0
# The installed binding's ggml, asked in a subprocess (a backend initialises once per process).
GGML_PROBE: tuple[str, ...] = (sys.executable, "-m", "tightwad.engine.ggml_devices")
_log = get_logger(__name__)

Probe = tuple[list[DeviceInfo], list[InventoryWarning]]


async def collect_inventory(
    runner: CommandRunner,
    *,
    llama_server: Path | None = None,
    rpc_server_banner: str | None = None,
    proc_root: Path = Path("/proc"),
    timeout_s: float = DEFAULT_TIMEOUT_S,
    ggml_probe: Sequence[str] | None = GGML_PROBE,
) -> InventoryReport:
    """Take the host's inventory.

    ``llama_server``: the binary to ask ``--list-devices`` and ``--version`` for the ggml
    cross-check (skipped when ``None``). ``rpc_server_banner``: what a ``ggml-rpc-server`` of
    this host printed on start, for its protocol version (and devices when there is no
    ``llama_server``). ``proc_root``: where ``meminfo``/``cpuinfo`` are read (tests point it at
    fixtures). ``timeout_s``: per command. ``ggml_probe``: the command that lists the devices
    of the binding's ggml as JSON (PCI ids included); preferred over ``--list-devices``.
    """
    host = await _host(runner, proc_root, timeout_s)
    async with asyncio.TaskGroup() as group:
        gpu_tasks = [
            group.create_task(_guarded(name, probe))
            for name, probe in (
                ("nvidia-smi", lambda: nvidia.probe_nvidia(runner, timeout_s)),
                ("amd", lambda: amd.probe_amd(runner, timeout_s)),
                (
                    "apple",
                    lambda: apple.probe_apple(
                        runner, timeout_s, host.hostname, host.ram_total_bytes
                    ),
                ),
            )
        ]
        ggml_task = group.create_task(
            _ggml_view(runner, llama_server, rpc_server_banner, timeout_s, ggml_probe)
        )
    devices = [cpu.cpu_device(host)]
    warnings: list[InventoryWarning] = []
    for task in gpu_tasks:
        found, said = task.result()
        devices += found
        warnings += said
    ggml_devices, version, ggml_warnings = ggml_task.result()
    warnings += ggml_warnings
    if ggml_devices is not None:
        devices, disagreements = ggml.cross_check(devices, ggml_devices, host=host.hostname)
        warnings += disagreements
    host = replace(
        host, llama_cpp_version=version, rpc_protocol_version=_rpc_version(rpc_server_banner)
    )
    report = InventoryReport(host=host, devices=tuple(devices), warnings=tuple(warnings))
    _log.info("inventory_taken", devices=len(devices), warnings=len(warnings))
    return report


async def _guarded(source: str, probe: Callable[[], Awaitable[Probe]]) -> Probe:
    """A parser bug must cost one vendor's devices and a warning, not the whole inventory."""
    try:
        return await probe()
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        _log.warning("inventory_probe_failed", source=source, error=repr(exc))
        return [], [InventoryWarning(source, f"could not read the tool's output: {exc!r}")]


async def _read(path: Path) -> str:
    try:
        return await asyncio.to_thread(path.read_text, encoding="utf-8", errors="replace")
    except OSError:
        return ""


async def _host(runner: CommandRunner, proc_root: Path, timeout_s: float) -> HostFacts:
    meminfo, cpuinfo = await _read(proc_root / "meminfo"), await _read(proc_root / "cpuinfo")
    total, available = cpu.parse_meminfo(meminfo)
    facts = cpu.parse_cpuinfo(cpuinfo)
    if total == 0:
        total, available, facts = await _sysctl_host(runner, timeout_s, facts)
    return cpu.host_facts(facts, total, available, tightwad.__version__)


async def _sysctl_host(
    runner: CommandRunner, timeout_s: float, facts: cpu.CpuFacts
) -> tuple[int, int, cpu.CpuFacts]:
    """macOS and BSDs: no /proc, ask sysctl. Available RAM is unknown there: report total."""
    memsize = await runner.run(("sysctl", "-n", "hw.memsize"), timeout_s=timeout_s)
    brand = await runner.run(("sysctl", "-n", "machdep.cpu.brand_string"), timeout_s=timeout_s)
    total = (apple.parse_memsize(memsize.stdout) if memsize.ok else None) or 0
    model = brand.stdout.strip() if brand.ok else facts.model
    return total, total, cpu.CpuFacts(model=model, cores=facts.cores)


async def _probe_binding(
    runner: CommandRunner, probe: Sequence[str] | None, timeout_s: float
) -> list[ggml.GgmlDevice] | None:
    if not probe:
        return None
    result = await runner.run(tuple(probe), timeout_s=timeout_s)
    try:
        return ggml.parse_ggml_devices_json(result.stdout) if result.ok else None
    except (ValueError, KeyError, TypeError) as exc:
        _log.warning("ggml_probe_unreadable", error=repr(exc))
        return None


async def _ggml_view(
    runner: CommandRunner,
    llama_server: Path | None,
    banner: str | None,
    timeout_s: float,
    probe: Sequence[str] | None = None,
) -> tuple[list[ggml.GgmlDevice] | None, str, list[InventoryWarning]]:
    """ggml's devices (``None``: nothing to cross-check with), llama.cpp version, warnings."""
    bound = await _probe_binding(runner, probe, timeout_s)
    if llama_server is None:
        if bound is not None:
            return bound, "", []
        parsed = ggml.parse_rpc_server_banner(banner) if banner else None
        return (list(parsed.devices) if parsed and parsed.devices else None), "", []
    listing = await runner.run((str(llama_server), "--list-devices"), timeout_s=timeout_s)
    version = await runner.run((str(llama_server), "--version"), timeout_s=timeout_s)
    devices = ggml.parse_list_devices(listing.output) if listing.ok else None
    if bound is not None:
        return bound, ggml.parse_llama_version(version.output), []
    if devices is None:
        why = "not found" if not listing.found else (listing.output.strip()[-200:] or "failed")
        return (
            None,
            "",
            [
                InventoryWarning(
                    "ggml",
                    f"{llama_server} --list-devices gave no device list ({why}); not cross-checked",
                )
            ],
        )
    return devices, ggml.parse_llama_version(version.output), []


def _rpc_version(banner: str | None) -> str:
    parsed = ggml.parse_rpc_server_banner(banner) if banner else None
    return parsed.protocol_version if parsed else ""
