"""Engine hosts as supervised processes: the command line, the wire kind, and the watchdog's
view of its own TCP connections (pure parts and a real socket; no model)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from tightwad.agent.engine_host import (
    EXIT_RPC_PEER_LOST,
    TOKEN_ENV,
    build_parser,
    lost_peers,
    parse_rpc_devices,
    settings_from_args,
)
from tightwad.agent.processes import ProcessKind, ProcessSpec, build_command
from tightwad.agent.processes import process_wire as process_convert
from tightwad.errors import InvalidRequestError
from tightwad.v1 import agent_pb2


def test_engine_host_command_runs_the_module_on_this_interpreter() -> None:
    spec = ProcessSpec("engine-dep-1", ProcessKind.ENGINE_HOST, args=("--model", "/m.gguf"))
    argv = build_command(spec, Path(sys.executable), "127.0.0.1", 50123)
    assert argv == [
        sys.executable,
        "-u",
        "-m",
        "tightwad.agent.engine_host",
        "--listen",
        "127.0.0.1:50123",
        "--model",
        "/m.gguf",
    ]
    v6 = build_command(spec, Path(sys.executable), "::1", 50123)
    assert v6[v6.index("--listen") + 1] == "[::1]:50123"


def test_engine_host_listen_address_is_the_agents_to_choose() -> None:
    spec = ProcessSpec("e", ProcessKind.ENGINE_HOST, args=("--listen", "0.0.0.0:1"))
    with pytest.raises(InvalidRequestError, match="--listen"):
        build_command(spec, Path(sys.executable), "127.0.0.1", 1)


def test_engine_host_kind_round_trips_the_wire() -> None:
    spec = ProcessSpec("e", ProcessKind.ENGINE_HOST, args=("--devices", "RPC[h:1]"))
    msg = process_convert.spec_to_proto(spec)
    assert msg.kind == agent_pb2.PROCESS_KIND_ENGINE_HOST
    assert process_convert.spec_from_proto(msg) == spec


def test_settings_take_the_token_from_the_environment_and_check_the_split() -> None:
    parser = build_parser()
    ns = parser.parse_args(
        [
            "--listen", "127.0.0.1:1", "--model", "/m/x.gguf", "--gpu-layers", "20",
            "--devices", "RPC[10.0.0.2:50052],RPC[10.0.0.3:50052]", "--tensor-split", "0.5,0.5",
        ]
    )  # fmt: skip
    settings = settings_from_args(ns, {TOKEN_ENV: "t"})
    assert settings.token == "t"
    assert settings.engine.model_id == "x"
    assert settings.engine.devices == ("RPC[10.0.0.2:50052]", "RPC[10.0.0.3:50052]")
    assert settings.engine.tensor_split == (0.5, 0.5)
    assert parse_rpc_devices(settings.engine.devices) == [("10.0.0.2", 50052), ("10.0.0.3", 50052)]
    bad = parser.parse_args(
        ["--listen", "h:1", "--model", "m", "--devices", "RPC[h:1]", "--tensor-split", "1,1"]
    )
    with pytest.raises(Exception, match="2 values for 1 device"):
        settings_from_args(bad, {})


@pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="needs Linux /proc")
def test_watchdog_sees_a_closed_peer_connection() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    peer = ({"127.0.0.1"}, port, f"127.0.0.1:{port}")
    assert lost_peers([peer]) == [peer[2]]  # no connection at all
    client = socket.create_connection(("127.0.0.1", port))
    server_side, _ = listener.accept()
    try:
        assert lost_peers([peer]) == []  # ESTABLISHED
        server_side.close()  # the rpc-server dies: our side goes to CLOSE_WAIT
        assert lost_peers([peer]) == [peer[2]]
    finally:
        client.close()
        listener.close()
    assert EXIT_RPC_PEER_LOST == 75
