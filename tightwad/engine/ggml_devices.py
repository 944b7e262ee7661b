"""The devices ggml itself sees in this process: what offload planning and the agent's
inventory need (name, description, type, free/total memory, PCI bus id where ggml gives one).

Reads ``ggml_backend_dev_*`` from the ggml libraries shipped in llama-cpp-python's wheel (the
same build the engine runs), without loading a model or initialising llama.cpp. The first call
initialises ggml's backends, which read their environment then (e.g. Vulkan's
``GGML_VK_VISIBLE_DEVICES``), so a process sees the devices its environment allowed at start.

``python -m tightwad.engine.ggml_devices`` prints one JSON object per device; the agent's
inventory runs it as a subprocess so that a backend's initialisation never happens inside the
agent.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import sys
from collections.abc import MutableMapping, Sequence
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

__all__ = [
    "VK_DISABLE_FUSION",
    "GgmlDeviceProps",
    "ggml_library_dir",
    "is_llvmpipe",
    "list_ggml_devices",
    "software_vulkan_workaround",
]

# enum ggml_backend_dev_type (ggml-backend.h)
_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel", 4: "meta"}


@dataclass(frozen=True, slots=True)
class GgmlDeviceProps:
    """One ``ggml_backend_dev_t``: ``name`` is what llama.cpp's ``--device`` takes."""

    name: str
    description: str
    type: str  # cpu, gpu, igpu, accel, meta
    memory_free_bytes: int
    memory_total_bytes: int
    device_id: str = ""  # lower-case PCI bus id "0000:c1:00.0" where the backend knows it

    @property
    def is_gpu(self) -> bool:
        """A device layers can be offloaded to (a GPU, integrated or not)."""
        return self.type in ("gpu", "igpu")


class _Caps(ctypes.Structure):
    _fields_ = [(n, ctypes.c_bool) for n in ("async_", "host_buffer", "from_ptr", "events")]


class _Props(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("description", ctypes.c_char_p),
        ("memory_free", ctypes.c_size_t),
        ("memory_total", ctypes.c_size_t),
        ("type", ctypes.c_int),
        ("device_id", ctypes.c_char_p),
        ("caps", _Caps),
        ("_pad", ctypes.c_char * 64),  # room for fields a newer ggml appends
    ]


def ggml_library_dir() -> Path | None:
    """``llama_cpp/lib`` of the installed binding (not imported), or ``None``."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return None
    lib = Path(spec.origin).parent / "lib"
    return lib if lib.is_dir() else None


def _text(raw: bytes | None) -> str:
    return raw.decode("utf-8", "replace") if raw else ""


@cache
def list_ggml_devices() -> tuple[GgmlDeviceProps, ...]:
    """Every device ggml registered in this process (CPU included); empty without a binding."""
    lib_dir = ggml_library_dir()
    if lib_dir is None:
        return ()
    names = [p for p in (lib_dir / "libggml.so", lib_dir / "libggml.dylib") if p.exists()]
    if not names:
        return ()
    ggml = ctypes.CDLL(str(names[0]))
    ggml.ggml_backend_dev_count.restype = ctypes.c_size_t
    ggml.ggml_backend_dev_get.restype = ctypes.c_void_p
    ggml.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    ggml.ggml_backend_dev_get_props.restype = None
    ggml.ggml_backend_dev_get_props.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Props)]
    found = []
    for i in range(ggml.ggml_backend_dev_count()):
        props = _Props()
        ggml.ggml_backend_dev_get_props(ggml.ggml_backend_dev_get(i), ctypes.byref(props))
        found.append(
            GgmlDeviceProps(
                name=_text(props.name),
                description=_text(props.description),
                type=_TYPES.get(props.type, "unknown"),
                memory_free_bytes=int(props.memory_free),
                memory_total_bytes=int(props.memory_total),
                device_id=_text(props.device_id).lower(),
            )
        )
    return tuple(found)


#: ggml-vulkan's switch for its fused kernels (read when a Vulkan device is first initialised).
VK_DISABLE_FUSION = "GGML_VK_DISABLE_FUSION"


def is_llvmpipe(description: str) -> bool:
    """Whether a Vulkan device's description (ggml's, which the inventory uses as its name) is
    Mesa's software device."""
    return "llvmpipe" in description


def software_vulkan_workaround(
    devices: Sequence[str], n_gpu_layers: int, env: MutableMapping[str, str] = os.environ
) -> str:
    """Turn off ggml-vulkan's op fusion when a model is about to run on Mesa's software Vulkan
    device (``llvmpipe``); returns the device's name when it did, else ``""``.

    Measured here (llama.cpp of llama-cpp-python 0.3.36, Mesa 22.3 llvmpipe, SmolLM2 with flash
    attention, all layers on Vulkan0): after a 1-token decode, a 3-token decode crashes the
    process with SIGSEGV inside llvmpipe's shader threads, every time (a verify of speculation
    does exactly that); with ``GGML_VK_DISABLE_FUSION`` set, or flash attention off, the same
    calls give the CPU's tokens. Real GPUs keep their fused kernels: nothing is changed unless a
    device the model uses is llvmpipe, and a value the user set is left as it is. Call before
    the model loads: ggml reads the variable when it first initialises the device (listing
    devices does not)."""
    if n_gpu_layers == 0 or VK_DISABLE_FUSION in env:
        return ""
    seen = list_ggml_devices()
    used = set(devices) if devices else {d.name for d in seen if d.is_gpu}
    for d in seen:
        if d.name in used and d.name.startswith("Vulkan") and is_llvmpipe(d.description):
            env[VK_DISABLE_FUSION] = "1"
            return d.name
    return ""


def main() -> int:
    for device in list_ggml_devices():
        print(json.dumps(asdict(device)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
