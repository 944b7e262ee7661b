"""``tightwadctl`` against a real controller on loopback with fake agents (real Register
stream, real NodeService): tables for people, ``--json`` for scripts, exit codes."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from pathlib import Path

from controller.test_service import FakeAgent, FakeNode

from tightwad.rpc import GrpcServer, ServiceRegistration
from tightwad.v1 import agent_pb2, agent_pb2_grpc

from . import test_ctl_fixtures as fx
from .test_ctl_fixtures import TOKEN, Cli, write_config

cli, cluster = fx.cli, fx.cluster  # the fixtures these tests use

GiB = 1024**3


def _lines_with(text: str, word: str) -> list[str]:
    return [line for line in text.splitlines() if word in line]


async def test_status_table_and_json(cli: Cli) -> None:
    r = await cli.ctl("status")
    assert r.code == 0, r.text
    assert f"at {cli.address}" in r.out
    assert "nodes: 2 (2 READY)" in r.out
    header = _lines_with(r.out, "NODE")[0].split()
    assert header[:3] == ["NODE", "STATE", "ADDRESS"]
    row_a = _lines_with(r.out, cli.agents[0].server.bound_address)[0].split()
    assert row_a[:2] == ["a", "READY"]
    assert "no deployments" in r.out

    r = await cli.ctl("--json", "status")
    assert r.code == 0, r.text
    doc = json.loads(r.out)
    assert doc["controller"]["address"] == cli.address
    assert doc["controller"]["version"]
    assert [(n["node"], n["state"]) for n in doc["nodes"]] == [("a", "READY"), ("b", "READY")]
    assert doc["deployments"] == []


async def test_nodes_and_gpus(cli: Cli) -> None:
    r = await cli.ctl("nodes")
    assert r.code == 0, r.text
    lines = r.out.splitlines()
    assert lines[0].split()[:4] == ["NODE", "STATE", "ADDRESS", "GPUS"]
    # columns are aligned: every row starts its STATE where the header does
    col = lines[0].index("STATE")
    assert [line[col : col + 5] for line in lines[1:]] == ["READY", "READY"]
    assert "556.0 MiB / 556.0 MiB" in lines[1]  # agent a's GPU: 300 + 256 MiB free

    r = await cli.ctl("--json", "nodes")
    nodes = json.loads(r.out)
    assert [n["node"] for n in nodes] == ["a", "b"]
    assert nodes[1]["gpu_free_bytes"] == (900 + 256) * 1024 * 1024
    assert nodes[0]["models"] == ["/models/m.gguf"]
    assert {d["id"] for d in nodes[0]["devices"]} == {"cpu:a", "GPU-a"}

    r = await cli.ctl("gpus")
    assert r.code == 0, r.text
    assert r.out.splitlines()[0].split() == [
        "NODE",
        "ID",
        "NAME",
        "VENDOR/BACKEND",
        "FREE",
        "TOTAL",
    ]
    row = _lines_with(r.out, "GPU-b")[0]
    assert "nvidia/cuda" in row and "1.13 GiB" in row
    assert "cpu/cpu" in _lines_with(r.out, "cpu:a")[0]
    devices = json.loads((await cli.ctl("--json", "gpus")).out)
    assert len(devices) == 4
    gpu_b = next(d for d in devices if d["id"] == "GPU-b")
    assert gpu_b == gpu_b | {"node": "b", "vendor": "nvidia", "backend": "cuda"}
    assert gpu_b["memory_free_bytes"] == gpu_b["memory_total_bytes"] > 0


async def test_models_merges_configured_and_reported(cli: Cli) -> None:
    r = await cli.ctl("models")
    assert r.code == 0, r.text
    row_m = _lines_with(r.out, "/models/m.gguf")[0].split()
    assert row_m[:3] == ["m", "config", "a,b"]
    assert "(no node has it)" in _lines_with(r.out, "/models/big.gguf")[0]
    rows = json.loads((await cli.ctl("--json", "models")).out)
    assert [(x["name"], x["configured"], x["nodes"]) for x in rows] == [
        ("m", True, ["a", "b"]),
        ("big", True, []),
    ]
    assert rows[0]["n_layers"] == 8 and rows[0]["quantization"] == "Q4_K_M"
    assert rows[1]["size_bytes"] is None


async def test_plan_fits_shows_split_and_bytes(cli: Cli) -> None:
    args = ("plan", "m", "--ctx", "1024", "--coordinator", "a", "--exclude", "cpu:a")
    r = await cli.ctl(*args)
    assert r.code == 0, r.text
    assert "m: FITS on coordinator a" in r.out
    assert _lines_with(r.out, "DEVICE")[0].split()[:3] == ["DEVICE", "NODE", "DEVICE"]
    assert any(line.startswith("--device CUDA0,RPC[127.0.0.1:") for line in r.out.splitlines())
    assert any(line.startswith("--tensor-split ") for line in r.out.splitlines())
    assert any(line.startswith("-ngl ") for line in r.out.splitlines())

    r = await cli.ctl("--json", *args)
    plan = json.loads(r.out)
    assert plan["fits"] is True and plan["coordinator"] == "a"
    assert plan["device_order"][0] == "CUDA0"
    assert sum(d["n_layers"] for d in plan["devices"]) == 8
    for d in plan["devices"]:
        assert d["expected_bytes"] == d["weight_bytes"] + d["kv_bytes"] + d["compute_bytes"]
        assert d["expected_bytes"] + d["margin_bytes"] <= d["free_bytes"]
    assert len(plan["tensor_split"]) == len(plan["device_order"])


async def test_plan_refusal_exits_1_with_the_numbers(cli: Cli) -> None:
    r = await cli.ctl("plan", "m", "--ctx", "4000000")
    assert r.code == 1
    assert "m: REFUSED" in r.out
    assert r.out.splitlines()[1].startswith("m does not fit: needs about ")
    assert "usable memory is" in r.out
    assert any("a/GPU-a" in line and "free 556.0 MiB" in line for line in r.out.splitlines())

    r = await cli.ctl("--json", "plan", "m", "--ctx", "4000000")
    assert r.code == 1
    plan = json.loads(r.out)
    assert plan["fits"] is False and "GiB" in plan["reason"] and plan["devices"] == []

    r = await cli.ctl("plan", "nope")
    assert r.code == 1 and "no ready node has the model 'nope'" in r.out


async def test_deploy_wait_events_then_stop(cli: Cli) -> None:
    r = await cli.ctl(
        "--json", "deploy", "m", "--ctx", "1024", "--coordinator", "a", "--wait",
        "--wait-timeout", "20",
    )  # fmt: skip
    assert r.code == 0, r.text
    dep = json.loads(r.out)
    assert dep["state"] == "SERVING" and dep["model"] == "m"
    assert dep["route"]["engine_address"].startswith("127.0.0.1:")  # on coordinator a
    assert dep["placement"]["coordinator"] == "a"
    assert "deployment_created" in r.err  # progress goes to stderr under --json

    r = await cli.ctl("status")
    row = next(ln for ln in r.out.splitlines() if ln.startswith(dep["deployment_id"]))
    assert row.split()[1:3] == ["m", "SERVING"]

    r = await cli.ctl("events")
    assert r.code == 0, r.text
    assert r.out.splitlines()[0].split() == [
        "ID", "TIME", "LEVEL", "KIND", "NODE", "DEPLOYMENT", "MESSAGE",
    ]  # fmt: skip
    assert _lines_with(r.out, "deployment_serving")[0].split()[2] == "INFO"
    events = json.loads((await cli.ctl("--json", "events")).out)
    kinds = [e["kind"] for e in events]
    assert kinds[:2] == ["node_joined", "node_joined"] and "deployment_serving" in kinds
    ids = [e["event_id"] for e in events]
    assert ids == sorted(ids)
    later = json.loads((await cli.ctl("--json", "events", "--since", str(ids[-2]))).out)
    assert [e["event_id"] for e in later] == ids[-1:]

    r = await cli.ctl("stop", "m")  # a model name names its running deployment
    assert r.code == 0, r.text
    assert f"stopping {dep['deployment_id']}: m STOPPING" in r.out
    r = await cli.ctl("stop", "m")
    assert r.code == 1 and "no running deployment 'm'" in r.err


async def test_deploy_refused_is_exit_1_with_reason(cli: Cli) -> None:
    r = await cli.ctl("deploy", "m", "--ctx", "4000000")
    assert r.code == 1
    assert "does not fit" in r.err and "usable memory is" in r.err


async def test_drain_and_undo(cli: Cli) -> None:
    r = await cli.ctl("drain", "b")
    assert r.code == 0, r.text
    assert r.out.strip() == "draining b: DRAINING"
    nodes = json.loads((await cli.ctl("--json", "nodes")).out)
    assert [n["state"] for n in nodes] == ["READY", "DRAINING"]
    r = await cli.ctl("--json", "drain", "b", "--undo")
    assert json.loads(r.out)["state"] == "READY"
    r = await cli.ctl("drain", "zz")
    assert r.code == 1 and "zz" in r.err


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_controller_exits_3(cli: Cli) -> None:
    address = f"127.0.0.1:{_closed_port()}"
    r = await cli.ctl_raw("--controller", address, "--token", TOKEN, "nodes")
    assert r.code == 3
    # The reason in gRPC's words ("Connection refused"), then what to check.
    assert r.err.strip().startswith(f"tightwadctl: cannot reach the controller at {address}: ")
    assert "refused" in r.err.lower()
    assert r.err.strip().endswith(
        "(is tightwad-controller running? --controller / controller.port in the config)"
    )
    assert r.out == ""


async def test_wrong_or_missing_token_exits_4_and_never_prints_it(cli: Cli, tmp_path: Path) -> None:
    secret = "wrong-Zq81-token"
    expected = (
        "tightwadctl: the controller refused the token (UNAUTHENTICATED): set --token or "
        "TIGHTWAD_TOKEN to cluster.token"
    )
    for argv in (["--token", secret, "status"], ["--token", secret, "--json", "events"]):
        r = await cli.ctl_raw("--controller", cli.address, *argv)
        assert r.code == 4, r.text
        # The in-process controller logs to the same stderr; the CLI's own line is the last.
        assert r.err.strip().splitlines()[-1] == expected
        assert secret not in r.text and TOKEN not in r.text
    # no token anywhere: same message
    bare = write_config(tmp_path / "bare.yaml", port=1, token=None)
    r = await cli.ctl_raw("-c", str(bare), "--controller", cli.address, "gpus")
    assert r.code == 4 and r.err.strip().splitlines()[-1] == expected
    # the right token from the file works, and is not printed either
    r = await cli.ctl("--json", "status")
    assert r.code == 0 and TOKEN not in r.text


class LogNode(FakeNode):
    """FakeNode plus StreamLogs over a fixed history (then one live line when following)."""

    history = ("starting rpc server", "listening on 127.0.0.1:50052", "accepted client")

    async def StreamLogs(self, request, context):  # type: ignore[no-untyped-def]
        lines = self.history[-request.tail :] if request.tail else self.history
        for i, line in enumerate(lines):
            yield agent_pb2.StreamLogsResponse(
                name=request.name, line=line, time=i, stream="stderr"
            )
        if request.follow:
            yield agent_pb2.StreamLogsResponse(name=request.name, line="live", stream="stdout")
            await asyncio.Event().wait()


class LogAgent(FakeAgent):
    def __init__(self, name: str) -> None:
        super().__init__(name, 2 * GiB)
        self.node = LogNode()
        self.server = GrpcServer(
            [
                ServiceRegistration(
                    "tightwad.v1.NodeService",
                    self.node,
                    agent_pb2_grpc.add_NodeServiceServicer_to_server,
                )
            ],
            token=TOKEN,
        )


async def test_logs_through_the_nodes_agent(cli: Cli) -> None:
    agent = LogAgent("c")
    await agent.server.start()
    try:
        await (await agent.register(cli.address)).read()
        r = await cli.ctl("logs", "c", "rpc-GPU-c")
        assert r.code == 0, r.text
        assert r.out.splitlines() == list(LogNode.history)
        r = await cli.ctl("--json", "logs", "c", "rpc-GPU-c", "--tail", "1")
        assert json.loads(r.out) == [
            {
                "node": "c",
                "process": "rpc-GPU-c",
                "time": 0.0,
                "stream": "stderr",
                "line": "accepted client",
            }
        ]
        r = await cli.ctl("logs", "nope", "x")
        assert r.code == 1 and "no node 'nope' (known: a, b, c)" in r.err
    finally:
        agent.call.cancel()
        await agent.channel.close()
        await agent.server.stop(0)


def _run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tightwad.cli.ctl", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


def test_version_and_help_in_a_process() -> None:
    from tightwad import __version__

    r = _run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"tightwadctl {__version__}"
    r = _run("--help")
    assert r.returncode == 0
    commands = "status nodes gpus models plan deploy swap stop drain logs events bench"
    for word in [*commands.split(), "--controller", "--token", "--json", "--timeout"]:
        assert word in r.stdout, word
    r = _run("plan", "--help")
    assert r.returncode == 0 and "--exclude" in r.stdout and "--kv" in r.stdout


def test_bench_points_to_benchmarks_when_absent_and_hands_over_when_present(
    tmp_path: Path,
) -> None:
    r = _run("bench", cwd=tmp_path)
    assert r.returncode == 1
    assert "see benchmarks/" in r.stdout.lower() and "drives a live gateway" in r.stdout
    pkg = tmp_path / "benchmarks"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "run.py").write_text("def main(argv):\n    print('bench got', argv)\n    return 7\n")
    r = _run("bench", "draft-free", "--n", "3", cwd=tmp_path)
    assert r.returncode == 7, r.stderr
    assert r.stdout.strip() == "bench got ['draft-free', '--n', '3']"
