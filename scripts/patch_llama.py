"""Build-time helpers for scripts/build_llama.sh (stdlib only; runs before any venv exists).

``patch_llama.py SRC``: the one source patch we apply to the vendored llama.cpp. Its
``ggml-vulkan.cpp`` chains ``vk::LayerSettingsCreateInfoEXT`` into instance creation without a
header-version guard; Vulkan headers before 1.3.261 (Debian 12 ships 1.3.239) lack that type, so
the build fails. The patch wraps that block in ``#if VK_HEADER_VERSION >= 261`` and otherwise
creates the instance without the layer-settings chain (it only enables validation best practices).
Idempotent; a source that no longer has the block is left alone, loudly.

``patch_llama.py --wheel PURE_WHEEL LIB_DIR OUT_DIR``: writes PURE_WHEEL (the binding's Python
package, built with LLAMA_BUILD=OFF) to OUT_DIR with every shared library of LIB_DIR added under
``llama_cpp/lib`` and its RECORD rewritten.
"""

from __future__ import annotations

import base64
import hashlib
import sys
import zipfile
from pathlib import Path

_MARK = "tightwad: VK_EXT_layer_settings guard"
_OLD = """    VkBool32 enable_best_practice = layer_settings;
    std::vector<vk::LayerSettingEXT> settings = {"""
_CREATE = (
    "    vk::InstanceCreateInfo instance_create_info(vk::InstanceCreateFlags{}, &app_info, "
    "layers, extensions, &layer_setting_info);\n"
)


_VULKAN = Path("ggml", "src", "ggml-vulkan", "ggml-vulkan.cpp")


def patch_source(src: Path) -> None:
    """``src``: the binding's source (llama.cpp under vendor/llama.cpp) or llama.cpp itself."""
    candidates = [src / "vendor" / "llama.cpp" / _VULKAN, src / _VULKAN]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise SystemExit(f"patch_llama: no {_VULKAN} under {src}: not a llama.cpp source")
    text = path.read_text()
    if _MARK in text:
        return
    if _OLD not in text or _CREATE not in text:
        print(
            f"patch_llama: {path} no longer has the unguarded layer-settings block; not patched",
            file=sys.stderr,
        )
        return
    text = text.replace(_OLD, f"#if VK_HEADER_VERSION >= 261  // {_MARK}\n{_OLD}", 1)
    fallback = (
        "#else\n"
        "    vk::InstanceCreateInfo instance_create_info(vk::InstanceCreateFlags{}, &app_info, "
        "layers, extensions);\n#endif\n"
    )
    text = text.replace(_CREATE, _CREATE + fallback, 1)
    path.write_text(text)
    print(f"patch_llama: guarded VK_EXT_layer_settings in {path}", file=sys.stderr)


def _digest(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def add_libraries(pure: Path, lib_dir: Path, out_dir: Path) -> Path:
    libs = sorted(p for p in lib_dir.iterdir() if p.suffix in {".so", ".dylib"})
    names = {p.stem for p in libs}
    if not {"libllama", "libggml", "libggml-base"} <= names:
        raise SystemExit(f"patch_llama: no libllama, libggml and libggml-base in {lib_dir}")
    out = out_dir / pure.name
    records: list[str] = []
    with zipfile.ZipFile(pure) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        record_name = next(n for n in zin.namelist() if n.endswith(".dist-info/RECORD"))
        for info in zin.infolist():
            if info.filename == record_name or info.filename.startswith("llama_cpp/lib/"):
                continue
            data = zin.read(info)
            zout.writestr(info, data)
            records.append(f"{info.filename},{_digest(data)},{len(data)}")
        for lib in libs:
            data = lib.read_bytes()
            name = f"llama_cpp/lib/{lib.name}"
            entry = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            entry.external_attr = 0o755 << 16
            zout.writestr(entry, data, zipfile.ZIP_DEFLATED)
            records.append(f"{name},{_digest(data)},{len(data)}")
        records.append(f"{record_name},,")
        zout.writestr(record_name, "\n".join(records) + "\n")
    print(f"patch_llama: {out.name} with {len(libs)} libraries from {lib_dir}", file=sys.stderr)
    return out


if __name__ == "__main__":
    if sys.argv[1] == "--wheel":
        add_libraries(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        patch_source(Path(sys.argv[1]))
