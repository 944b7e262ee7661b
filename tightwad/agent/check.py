"""``tightwad-agent --check``: what this host offers and what is missing, with the fix.

Checks: devices (vendor tools cross-checked with ggml), the ``ggml-rpc-server`` and
``llama-server`` binaries and the ggml backend each was built for (``build.env`` of
scripts/build_llama.sh's cache, else the ``libggml-<backend>`` libraries beside it),
llama-cpp-python, its backend and its RPC support, and the model directories. A host with a GPU
whose builds are CPU-only gets a warning with the command that rebuilds for it.
Exit 0 when the agent can serve (an rpc-server binary and the Python binding are present),
1 otherwise. Every line is ``[ok]``, ``[warn]`` or ``[missing]``; the last two say the fix.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from tightwad.agent.binaries import BinaryKind
from tightwad.agent.inventory import InventoryReport, SubprocessRunner, Vendor, collect_inventory
from tightwad.agent.server import AgentSettings
from tightwad.errors import NotFoundError

__all__ = [
    "CheckItem",
    "backend_items",
    "backends_in",
    "binding_backend",
    "built_backend",
    "check_items",
    "rpc_support",
    "run_check",
]

_GIB = 1 << 30
# ggml backend library (lib<name>.so / .dylib) -> TIGHTWAD_BACKEND value
_BACKEND_LIBS = (
    ("ggml-cuda", "cuda"),
    ("ggml-hip", "rocm"),
    ("ggml-metal", "metal"),
    ("ggml-vulkan", "vulkan"),
    ("ggml-sycl", "sycl"),
)
_BACKEND_FOR_VENDOR = {Vendor.NVIDIA: "cuda", Vendor.AMD: "rocm", Vendor.APPLE: "metal"}


def backends_in(lib_dir: Path) -> list[str]:
    """The GPU backends whose ggml libraries are in ``lib_dir`` (``[]``: CPU only)."""
    return [
        backend
        for lib, backend in _BACKEND_LIBS
        if any(lib_dir.glob(f"lib{lib}.so*")) or any(lib_dir.glob(f"lib{lib}*.dylib"))
    ]


def built_backend(binary: Path) -> str:
    """The backend a binary was built for: its cache's ``build.env``, else the libraries
    beside it, else ``"unknown"`` (a static or foreign build)."""
    env = binary.resolve().parent.parent / "build.env"
    if env.is_file():
        for line in env.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "backend" and value.strip():
                return value.strip()
    libs = binary.resolve().parent
    if any(libs.glob("libggml*")):
        return ",".join(backends_in(libs)) or "cpu"
    return "unknown"


def binding_backend() -> str:
    """The backend of the installed llama-cpp-python (``""`` when it is not installed)."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return ""
    return ",".join(backends_in(Path(spec.origin).parent / "lib")) or "cpu"


def _gpu_vendor(report: InventoryReport) -> Vendor | None:
    """The vendor of a real GPU of the host (not a software device such as llvmpipe)."""
    return next((d.vendor for d in report.devices if d.vendor in _BACKEND_FOR_VENDOR), None)


def backend_items(report: InventoryReport, built: dict[str, str]) -> list[CheckItem]:
    """Which backend each build is for; a warning when the host has a GPU (per the
    inventory) and a build is CPU-only. ``built``: what -> backend (``""``: absent)."""
    vendor = _gpu_vendor(report)
    items = []
    for what, backend in built.items():
        if not backend:
            continue
        if backend == "cpu" and vendor is not None:
            want = _BACKEND_FOR_VENDOR[vendor]
            items.append(
                CheckItem(
                    "warn",
                    f"{what} backend",
                    f"built for the CPU only, but this host has a {vendor.value} GPU: "
                    "it will not be used",
                    f"TIGHTWAD_BACKEND={want} scripts/install.sh "
                    f"(and TIGHTWAD_BACKEND={want} scripts/build_llama.sh bin for the binaries)",
                )
            )
        else:
            items.append(CheckItem("ok", f"{what} backend", backend))
    return items


@dataclass(frozen=True, slots=True)
class CheckItem:
    level: str  # "ok", "warn", "missing"
    what: str
    detail: str
    fix: str = ""
    required: bool = False

    def render(self) -> str:
        line = f"[{self.level}] {self.what}: {self.detail}"
        return f"{line}\n        fix: {self.fix}" if self.fix else line


def rpc_support() -> tuple[bool, str]:
    """Whether llama-cpp-python's libraries export ``ggml_backend_rpc_add_server``."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return False, "llama-cpp-python is not installed"
    libs = Path(spec.origin).parent / "lib"
    for lib in sorted(libs.glob("libggml-rpc*.so*")) + sorted(libs.glob("libggml*.dylib")):
        try:
            handle = ctypes.CDLL(str(lib))
        except OSError:
            continue
        if hasattr(handle, "ggml_backend_rpc_add_server"):
            return True, f"ggml_backend_rpc_add_server in {lib.name}"
    return False, f"no library under {libs} exports ggml_backend_rpc_add_server"


def _device_items(report: InventoryReport) -> list[CheckItem]:
    items = [
        CheckItem(
            "ok",
            f"device {d.id}",
            f"{d.name} ({d.backend.value}), {d.memory_free_bytes / _GIB:.1f} of "
            f"{d.memory_total_bytes / _GIB:.1f} GiB free",
        )
        for d in report.devices
    ]
    if not any(d.is_gpu for d in report.devices):
        items.append(
            CheckItem(
                "warn",
                "GPUs",
                "none found: this host serves as a CPU worker or drafter",
                "with a GPU: install its driver and tool (nvidia-smi, rocm-smi, amd-smi)",
            )
        )
    items += [CheckItem("warn", f"inventory ({w.source})", w.message) for w in report.warnings]
    return items


def _binary_items(settings: AgentSettings) -> list[CheckItem]:
    items = []
    for kind, required in ((BinaryKind.RPC_SERVER, True), (BinaryKind.LLAMA_SERVER, False)):
        try:
            items.append(CheckItem("ok", kind.value, str(settings.binaries.find(kind))))
        except NotFoundError as exc:
            detail, _, fix = exc.message.partition(" Fix: ")
            level = "missing" if required else "warn"
            items.append(CheckItem(level, kind.value, detail, fix, required=required))
    return items


def _binding_items() -> list[CheckItem]:
    if importlib.util.find_spec("llama_cpp") is None:
        return [
            CheckItem(
                "missing",
                "llama-cpp-python",
                "not installed: the embedded engine cannot run",
                "pip install the wheel scripts/build_llama.sh builds (CMAKE_ARGS=-DGGML_RPC=ON)",
                required=True,
            )
        ]
    ok, detail = rpc_support()
    if ok:
        return [CheckItem("ok", "llama-cpp-python RPC", detail)]
    return [
        CheckItem(
            "warn",
            "llama-cpp-python RPC",
            detail,
            "rebuild llama-cpp-python with CMAKE_ARGS=-DGGML_RPC=ON (scripts/build_llama.sh)",
        )
    ]


def _model_dir_items(settings: AgentSettings) -> list[CheckItem]:
    items = []
    for directory in settings.model_dirs:
        if directory.is_dir():
            count = sum(1 for _ in directory.rglob("*.gguf"))
            items.append(CheckItem("ok", f"model dir {directory}", f"{count} GGUF file(s)"))
        else:
            items.append(
                CheckItem(
                    "warn",
                    f"model dir {directory}",
                    "does not exist",
                    f"mkdir -p {directory} and put GGUF files there, or set agents.model_dirs",
                )
            )
    return items


def _built(settings: AgentSettings) -> dict[str, str]:
    built = {}
    for kind in (BinaryKind.RPC_SERVER, BinaryKind.LLAMA_SERVER):
        path = settings.binaries.try_find(kind)
        built[kind.value] = built_backend(path) if path is not None else ""
    built["llama-cpp-python"] = binding_backend()
    return built


def check_items(settings: AgentSettings, report: InventoryReport) -> list[CheckItem]:
    return [
        *_device_items(report),
        *_binary_items(settings),
        *_binding_items(),
        *backend_items(report, _built(settings)),
        *_model_dir_items(settings),
    ]


def run_check(settings: AgentSettings) -> int:
    """Print the report; 0 when nothing required is missing, else 1."""
    llama = settings.binaries.try_find(BinaryKind.LLAMA_SERVER)
    report = asyncio.run(collect_inventory(SubprocessRunner(), llama_server=llama))
    host = report.host
    print(
        f"host {host.hostname}: {host.os} {host.arch}, {host.cpu_cores} cores, "
        f"{host.ram_available_bytes / _GIB:.1f} of {host.ram_total_bytes / _GIB:.1f} GiB RAM free"
    )
    items = check_items(settings, report)
    for item in items:
        print(item.render())
    missing = [i for i in items if i.required and i.level == "missing"]
    print("ready" if not missing else f"not ready: {len(missing)} required item(s) missing")
    return 1 if missing else 0
