"""The ``gpu`` tier: real ggml GPU backends. On CI machines that is Vulkan on Mesa's lavapipe
(``llvmpipe``, a Vulkan device of type CPU that ggml skips unless ``GGML_VK_VISIBLE_DEVICES``
names it); on a machine with a real GPU (``scripts/gpu_check.sh``) it is that GPU. Visibility
is set only in the environment of the subprocesses these tests start, never in the test
process: a backend reads it once per process, and every other test must keep computing on the
CPU."""

from __future__ import annotations

import pytest

from gpu.vk import child_env, ggml_devices, pick_gpu


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "gpu: needs a ggml GPU backend device (Vulkan's llvmpipe on CI machines)"
    )


@pytest.fixture(scope="session")
def gpu_device() -> dict[str, object]:
    """The ggml GPU device a subprocess sees with the GPUs shown (``Vulkan0`` on CI); skips
    when there is none (a CPU-only build, or no driver: apt install mesa-vulkan-drivers)."""
    found = pick_gpu(ggml_devices(child_env(gpu=True)))
    if found is None:
        pytest.skip(
            "no GPU device visible to ggml (needs llama.cpp built for a GPU backend, e.g. "
            "TIGHTWAD_BACKEND=vulkan scripts/install.sh, and a driver such as Mesa's lavapipe)"
        )
    return found
