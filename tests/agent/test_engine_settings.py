"""The cluster file's ``engine`` section reaches every engine the agent builds: the one
``tightwad-agent --model`` hosts, the ones ``LoadModel`` loads, and the engine host's flags
(pure: configs and parsed flags in, ``EngineConfig`` out; nothing is loaded)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tightwad.agent.engine_host import build_parser, settings_from_args
from tightwad.agent.main import build_parser as agent_parser
from tightwad.agent.main import settings_from_config
from tightwad.agent.node_service import _load_request
from tightwad.config import config_from_mapping
from tightwad.engine.engine_config import EngineConfig
from tightwad.v1 import agent_pb2

ENGINE = {
    "batch_steps": True,
    "open_wait_s": 2.5,
    "prefill_chunk": 32,
    "max_sessions": 3,
    "batch_size": 256,
    "n_gpu_layers": 0,
}


def _batching(cfg: EngineConfig) -> tuple[object, ...]:
    return (cfg.batch_steps, cfg.open_wait_s, cfg.prefill_chunk, cfg.max_sessions, cfg.batch_size)


def test_the_agents_own_engine_and_loads_take_the_files_engine_section(tmp_path: Path) -> None:
    cfg = config_from_mapping({"engine": ENGINE})
    ns = agent_parser().parse_args(["--model", str(tmp_path / "m.gguf")])
    settings = settings_from_config(cfg, ns)
    (engine,) = settings.engines
    assert _batching(engine) == (True, 2.5, 32, 3, 256)
    assert engine.gpu_layers == 0
    msg = agent_pb2.LoadModelRequest(model="m", path=str(tmp_path / "m.gguf"), gpu_layers=0)
    loaded = _load_request(msg, settings.load_defaults).config
    assert _batching(loaded) == (True, 2.5, 32, 3, 256)


def test_without_the_keys_every_engine_gets_the_engines_defaults(tmp_path: Path) -> None:
    plain = EngineConfig("m", tmp_path / "m.gguf", gpu_layers=0)
    ns = agent_parser().parse_args(["--model", str(tmp_path / "m.gguf")])
    (engine,) = settings_from_config(config_from_mapping({}), ns).engines
    defaults = (plain.batch_steps, plain.open_wait_s, plain.prefill_chunk)
    assert (engine.batch_steps, engine.open_wait_s, engine.prefill_chunk) == defaults
    host = settings_from_args(
        build_parser().parse_args(["--listen", "h:1", "--model", "m.gguf", "--gpu-layers", "0"]),
        {},
    ).engine
    assert (host.batch_steps, host.open_wait_s, host.prefill_chunk) == defaults


def test_engine_host_flags_set_batching() -> None:
    ns = build_parser().parse_args(
        [
            "--listen", "h:1", "--model", "m.gguf", "--gpu-layers", "0", "--batch-steps",
            "--open-wait-s", "0.5", "--prefill-chunk", "128", "--max-sessions", "2",
        ]
    )  # fmt: skip
    assert _batching(settings_from_args(ns, {}).engine) == (True, 0.5, 128, 2, 512)
    off = build_parser().parse_args(["--listen", "h:1", "--model", "m", "--no-batch-steps"])
    assert off.batch_steps is False


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        (["--open-wait-s", "0"], "expected seconds > 0, got '0'"),
        (["--open-wait-s", "soon"], "expected seconds > 0, got 'soon'"),
        (["--prefill-chunk", "0"], "expected an integer >= 1, got 0"),
    ],
)
def test_bad_engine_host_flags_say_why(
    flags: list[str], reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--listen", "h:1", "--model", "m", *flags])
    assert reason in capsys.readouterr().err


def test_a_prefill_chunk_larger_than_the_batch_is_refused() -> None:
    ns = build_parser().parse_args(
        ["--listen", "h:1", "--model", "m", "--prefill-chunk", "1024", "--batch-size", "512"]
    )
    with pytest.raises(argparse.ArgumentTypeError, match="larger than --batch-size 512"):
        settings_from_args(ns, {})
