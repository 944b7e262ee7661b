"""The ``gpu`` tier: real ggml GPU backends. Here that is Vulkan on Mesa's lavapipe
(``llvmpipe``, a Vulkan device of type CPU that ggml skips unless ``GGML_VK_VISIBLE_DEVICES``
names it). The variable is set only in the environment of the subprocesses these tests start,
never in the test process: a backend reads it once per process, and every other test must keep
computing on the CPU."""

from __future__ import annotations

import pytest

from gpu.vk import VK_ENV, child_env, ggml_devices


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "gpu: needs a ggml GPU backend device (Vulkan's llvmpipe on CI machines)"
    )


@pytest.fixture(scope="session")
def vulkan_device() -> dict[str, object]:
    """ggml's Vulkan0 as a subprocess with ``GGML_VK_VISIBLE_DEVICES=0`` sees it; skips when
    there is none (a non-Vulkan build, or no Vulkan driver: apt install mesa-vulkan-drivers)."""
    found = [d for d in ggml_devices(child_env(vulkan=True)) if str(d["name"]) == "Vulkan0"]
    if not found:
        pytest.skip(
            f"no Vulkan device visible to ggml with {VK_ENV}=0 (needs llama.cpp built with "
            "TIGHTWAD_BACKEND=vulkan and a Vulkan driver such as Mesa's lavapipe)"
        )
    return found[0]
