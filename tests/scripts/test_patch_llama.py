"""scripts/patch_llama.py, the one source patch build_llama.sh applies: it finds
ggml-vulkan.cpp in the binding's sdist layout (vendor/llama.cpp/...) or in a plain llama.cpp
tree, guards the layer-settings block once (idempotent), and refuses a tree without the file."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
MARK = "tightwad: VK_EXT_layer_settings guard"
BLOCK = (
    "    VkBool32 enable_best_practice = layer_settings;\n"
    "    std::vector<vk::LayerSettingEXT> settings = {\n"
    "    };\n"
    "    vk::InstanceCreateInfo instance_create_info(vk::InstanceCreateFlags{}, &app_info, "
    "layers, extensions, &layer_setting_info);\n"
)


def _patch(src: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPTS / "patch_llama.py"), str(src)],
        capture_output=True,
        text=True,
        check=False,
    )


def _tree(root: Path, prefix: str) -> Path:
    path = root / prefix / "ggml" / "src" / "ggml-vulkan" / "ggml-vulkan.cpp"
    path.parent.mkdir(parents=True)
    path.write_text("int before;\n" + BLOCK + "int after;\n")
    return path


@pytest.mark.parametrize("prefix", ["vendor/llama.cpp", "."])
def test_the_block_is_guarded_once_in_either_layout(tmp_path: Path, prefix: str) -> None:
    path = _tree(tmp_path, prefix)
    first = _patch(tmp_path)
    assert first.returncode == 0, first.stderr
    text = path.read_text()
    assert text.count(MARK) == 1
    guarded = text.split("#if VK_HEADER_VERSION >= 261", 1)[1]
    assert "#else" in guarded and "layers, extensions);\n#endif" in guarded
    assert _patch(tmp_path).returncode == 0 and path.read_text() == text  # idempotent


def test_a_tree_without_the_file_is_refused_by_name(tmp_path: Path) -> None:
    out = _patch(tmp_path)
    assert out.returncode != 0 and "ggml-vulkan.cpp" in out.stderr + out.stdout


def test_the_pinned_sdist_is_patched_when_cached(tmp_path: Path) -> None:
    """The real source the build uses (cached by install.sh, which the test command runs
    first): a layout change in a new llama-cpp-python release fails here, not in a fresh CI."""
    version = re.search(
        r"LLAMA_CPP_PYTHON_VERSION:-([0-9.]+)", (SCRIPTS / "build_llama.sh").read_text()
    )
    assert version is not None
    cache = Path(os.environ.get("TIGHTWAD_CACHE", Path.home() / ".cache" / "tightwad"))
    tgz = cache / "llama.cpp" / version[1] / f"llama_cpp_python-{version[1]}.tar.gz"
    if not tgz.is_file():
        pytest.skip(f"no cached sdist at {tgz}: run scripts/install.sh")
    member = f"llama_cpp_python-{version[1]}/vendor/llama.cpp/ggml/src/ggml-vulkan/ggml-vulkan.cpp"
    with tarfile.open(tgz) as tar:
        tar.extract(member, tmp_path, filter="data")
    src = tmp_path / f"llama_cpp_python-{version[1]}"
    out = _patch(src)
    assert out.returncode == 0, out.stderr
    assert MARK in (src / member.split("/", 1)[1]).read_text(), out.stdout
