"""The ``engine`` section's ``n_gpu_layers``: ``auto`` (planned offload) or llama.cpp's number;
anything else names the key."""

from __future__ import annotations

import pytest

from tightwad.config import config_from_mapping
from tightwad.errors import ConfigError


@pytest.mark.parametrize(("value", "expected"), [("auto", "auto"), (-1, -1), (0, 0), (12, 12)])
def test_n_gpu_layers_takes_auto_or_a_layer_count(value: object, expected: object) -> None:
    cfg = config_from_mapping({"engine": {"n_gpu_layers": value}})
    assert cfg.engine.n_gpu_layers == expected


def test_n_gpu_layers_default_is_the_planned_offload() -> None:
    assert config_from_mapping({}).engine.n_gpu_layers == "auto"
    assert config_from_mapping({"engine": {"ctx_size": 512}}).engine.n_gpu_layers == "auto"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("Auto", "expected 'auto' or an integer >= -1, got string 'Auto'"),
        ("all", "expected 'auto' or an integer >= -1, got string 'all'"),
        (-2, "must be >= -1, got -2"),
        (True, "expected an integer, got boolean true"),
        (1.5, "expected an integer, got number 1.5"),
    ],
)
def test_a_bad_n_gpu_layers_names_the_key(value: object, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_mapping({"engine": {"n_gpu_layers": value}})
    assert (caught.value.key_path, caught.value.reason) == ("engine.n_gpu_layers", reason)
