"""The ``engine`` section's ``n_gpu_layers``: ``auto`` (planned offload) or llama.cpp's number;
anything else names the key."""

from __future__ import annotations

from pathlib import Path

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


def test_engine_batching_keys_default_to_the_engines_own() -> None:
    from tightwad.engine.engine_config import EngineConfig as Engine

    engine = Engine("m", "m.gguf", gpu_layers=0)
    got = config_from_mapping({}).engine
    assert (got.batch_steps, got.open_wait_s, got.prefill_chunk) == (
        engine.batch_steps,
        engine.open_wait_s,
        engine.prefill_chunk,
    )


def test_engine_batching_keys_are_read() -> None:
    got = config_from_mapping(
        {"engine": {"batch_steps": True, "open_wait_s": 2, "prefill_chunk": 128, "max_sessions": 6}}
    ).engine
    assert (got.batch_steps, got.open_wait_s, got.prefill_chunk, got.max_sessions) == (
        True,
        2.0,
        128,
        6,
    )
    assert isinstance(got.open_wait_s, float)


def test_engine_max_sessions_defaults_to_eight_slots() -> None:
    # Eight concurrent chats (llama-server -np 8's slots) start at once by default.
    assert config_from_mapping({}).engine.max_sessions == 8


@pytest.mark.parametrize(
    ("engine", "key", "reason"),
    [
        ({"batch_steps": "yes"}, "batch_steps", "expected true or false, got string 'yes'"),
        ({"open_wait_s": 0}, "open_wait_s", "must be > 0, got 0"),
        ({"open_wait_s": -1.5}, "open_wait_s", "must be > 0, got -1.5"),
        ({"open_wait_s": "10s"}, "open_wait_s", "expected a number, got string '10s'"),
        ({"prefill_chunk": 0}, "prefill_chunk", "must be >= 1, got 0"),
        ({"prefill_chunk": 8.5}, "prefill_chunk", "expected an integer, got number 8.5"),
        ({"max_sessions": 0}, "max_sessions", "must be >= 1, got 0"),
        (
            {"prefill_chunk": 1024},
            "prefill_chunk",
            "must not be larger than engine.batch_size (512): a prefill chunk is decoded in one "
            "batch, got 1024",
        ),
        (
            {"batch_size": 32},
            "batch_size",
            "must be at least engine.prefill_chunk (64): a prefill chunk is decoded in one "
            "batch, got 32",
        ),
    ],
)
def test_a_bad_engine_batching_key_names_the_key(
    engine: dict[str, object], key: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_mapping({"engine": engine})
    assert (caught.value.key_path, caught.value.reason) == (f"engine.{key}", reason)


def test_a_small_batch_with_a_small_chunk_is_fine() -> None:
    got = config_from_mapping({"engine": {"batch_size": 32, "prefill_chunk": 32}}).engine
    assert (got.batch_size, got.prefill_chunk) == (32, 32)


def test_gateway_max_choices() -> None:
    assert config_from_mapping({}).gateway.max_choices == 8
    assert config_from_mapping({"gateway": {"max_choices": 4}}).gateway.max_choices == 4
    for bad, reason in (
        (0, "must be between 1 and 128, got 0"),
        (129, "must be between 1 and 128, got 129"),
        ("8", "expected an integer, got string '8'"),
    ):
        with pytest.raises(ConfigError) as caught:
            config_from_mapping({"gateway": {"max_choices": bad}})
        assert (caught.value.key_path, caught.value.reason) == ("gateway.max_choices", reason)


def test_the_gateways_embedded_engines_take_the_engine_section(smollm_path: Path) -> None:
    from tightwad.config import ModelRef
    from tightwad.gateway.routes import _Builder

    cfg = config_from_mapping(
        {
            "engine": {"batch_steps": True, "open_wait_s": 1.5, "prefill_chunk": 32},
            "models": {"smol": {"path": str(smollm_path)}},
        }
    )
    builder = _Builder(cfg)
    builder.local_id(ModelRef("smol"), "routes.0.target")
    engine = builder.local["smol"]
    assert (engine.batch_steps, engine.open_wait_s, engine.prefill_chunk) == (True, 1.5, 32)
    # n_gpu_layers: auto by default, planned here: no GPU visible to ggml, every layer on the CPU
    assert engine.offload is not None and engine.gpu_layers == 0 and engine.devices == ()
