"""The seed's verbs on ``tightwad`` (status, start, stop, swap, proxy start|stop|status,
benchmark) against a real controller with fake agents and a real gateway app."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest
from agent.fake_ollama import FakeOllama, continuation, serve
from aiohttp import web
from gateway.fakes import FakeBackend

from tightwad.cli.seed import (
    GatewayAddress,
    add_seed_commands,
    build_proxy,
    gateway_address,
    run_seed,
)
from tightwad.config import load_config
from tightwad.gateway import main as gateway_main
from tightwad.gateway.api import GatewaySettings, create_app
from tightwad.gateway.assemble import assemble, listen_address

from . import test_ctl_fixtures as fx
from .test_ctl_fixtures import Cli, Result

cli, cluster = fx.cli, fx.cluster  # the fixtures these tests use

API_KEY = "sk-seed-test"
SEED_CONFIG = Path(__file__).parents[2] / "configs" / "cluster.yaml"


def _parser() -> argparse.ArgumentParser:
    """The seed verbs exactly as the umbrella adds them (the umbrella's own ``main``, which
    configures logging for its process, is exercised in a subprocess below)."""
    p = argparse.ArgumentParser(prog="tightwad")
    add_seed_commands(p.add_subparsers(dest="command", required=True))
    return p


def _seed_main(argv: list[str]) -> int:
    return run_seed(_parser().parse_args(argv))


async def tightwad(cli: Cli, *argv: str) -> Result:
    return await cli._call(_seed_main, list(argv))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_status_start_swap_stop(cli: Cli) -> None:
    cfg = str(cli.config)
    r = await tightwad(cli, "status", "-c", cfg)
    assert r.code == 0, r.text
    assert "nodes: 2 (2 READY)" in r.out and "no deployments" in r.out

    r = await tightwad(cli, "start", "-c", cfg, "-m", "m", "--wait")
    assert r.code == 0, r.text
    assert "SERVING" in r.out
    doc = json.loads((await tightwad(cli, "status", "-c", cfg, "--json")).out)
    assert [(d["model"], d["state"]) for d in doc["deployments"]] == [("m", "SERVING")]
    dep_id = doc["deployments"][0]["deployment_id"]

    r = await tightwad(cli, "swap", "-c", cfg, "m")
    assert r.code == 0, r.text
    assert f"swapped {dep_id}: m" in r.out

    r = await tightwad(cli, "stop", "-c", cfg)
    assert r.code == 0, r.text
    assert f"stopping {dep_id}: m STOPPING" in r.out
    r = await tightwad(cli, "stop", "-c", cfg)
    assert r.code == 0 and "nothing to stop" in r.out


async def test_start_defaults_to_the_configs_default_model(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIGHTWAD_CONFIG", str(cli.config))  # instead of -c
    r = await tightwad(cli, "start")
    assert r.code == 0, r.text
    assert r.out.startswith("deployed dep-") and ": m " in r.out.splitlines()[0]


async def test_start_without_a_model_says_how_to_name_one(cli: Cli, tmp_path: Path) -> None:
    bare = tmp_path / "bare.yaml"
    bare.write_text("cluster:\n  name: bare\n", encoding="utf-8")
    r = await tightwad(cli, "start", "-c", str(bare))
    assert r.code == 1
    assert "no model to start: give -m MODEL, or add a `models:` section" in r.err


async def test_controller_down_names_the_service_and_how_to_start_it(
    cli: Cli, tmp_path: Path
) -> None:
    down = fx.write_config(tmp_path / "down.yaml", port=_closed_port())
    for verb in (["status"], ["start", "-m", "m"], ["stop"], ["swap", "m"]):
        r = await tightwad(cli, verb[0], "-c", str(down), *verb[1:])
        assert r.code == 3, (verb, r.text)
        assert "cannot reach the controller at 127.0.0.1:" in r.err
        assert f"start it with `tightwad-controller -c {down}`" in r.err


@pytest.fixture
async def gateway_config(tmp_path: Path) -> AsyncIterator[Path]:
    """A real gateway app (fake backend) on loopback, and a cluster file naming it."""
    app = create_app({"fake": FakeBackend()}, GatewaySettings(api_key=API_KEY))
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    path = tmp_path / "gw.yaml"
    path.write_text(
        f"gateway:\n  host: 127.0.0.1\n  port: {port}\n  api_key: {API_KEY}\n", encoding="utf-8"
    )
    try:
        yield path
    finally:
        await runner.cleanup()


async def test_proxy_status_and_stop_against_a_running_gateway(
    cli: Cli, gateway_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = await tightwad(cli, "proxy", "status", "-c", str(gateway_config))
    assert r.code == 0, r.text
    lines = r.out.splitlines()
    assert lines[0].startswith("gateway at http://127.0.0.1:") and "1 route(s)" in lines[0]
    assert lines[1].split()[:3] == ["ROUTE", "STATE", "TARGET"]
    assert lines[2].split()[:2] == ["fake", "READY"]
    assert lines[3].startswith("requests 0, errors 0")
    doc = json.loads(
        (await tightwad(cli, "proxy", "status", "-c", str(gateway_config), "--json")).out
    )
    assert doc["object"] == "tightwad.status" and doc["routes"][0]["name"] == "fake"

    monkeypatch.setenv("TIGHTWAD_API_KEY", "wrong-key-x")
    r = await tightwad(cli, "proxy", "status", "-c", str(gateway_config))
    assert r.code == 4 and "refused the API key" in r.err and "wrong-key-x" not in r.text

    r = await tightwad(cli, "proxy", "stop", "-c", str(gateway_config))
    assert r.code == 1
    assert "Ctrl-C" in r.out and "systemctl stop tightwad-gateway" in r.out


async def test_proxy_status_and_stop_with_no_gateway(cli: Cli, tmp_path: Path) -> None:
    cfg = tmp_path / "nogw.yaml"
    cfg.write_text(f"gateway:\n  host: 127.0.0.1\n  port: {_closed_port()}\n", encoding="utf-8")
    r = await tightwad(cli, "proxy", "status", "-c", str(cfg))
    assert r.code == 3
    assert "no gateway answers at http://127.0.0.1:" in r.err
    assert f"`tightwad proxy start -c {cfg}`" in r.err
    r = await tightwad(cli, "proxy", "stop", "-c", str(cfg))
    assert r.code == 0 and "nothing to stop" in r.out


async def test_proxy_start_serves_the_seed_file_as_tightwad_gateway_does(tmp_path: Path) -> None:
    """The seed's ``proxy`` section (here over an Ollama target and drafter: Ollama cannot run
    here, its wire double does) is accepted by ``tightwad proxy start`` and assembled exactly
    as ``tightwad-gateway -c FILE`` assembles it: same routes, listen address, key; it serves."""
    fake = FakeOllama()
    server = serve(fake)
    url = await anext(server)
    port = _closed_port()
    cfg_path = tmp_path / "seed.yaml"
    cfg_path.write_text(
        f"proxy:\n  host: 127.0.0.1\n  port: {port}\n  max_draft_tokens: 8\n"
        f"  auth_token: {API_KEY}\n"
        f"  draft:\n    url: {url}\n    model_name: toy\n    backend: ollama\n"
        f"  target:\n    url: {url}\n    model_name: toy\n    backend: ollama\n",
        encoding="utf-8",
    )
    cfg = load_config(cfg_path)
    ns = gateway_main.build_parser().parse_args(["-c", str(cfg_path)])
    ns.api_key = None  # as without $TIGHTWAD_API_KEY
    by_gateway = await assemble(cfg, gateway_main.overrides(ns))
    by_proxy = await build_proxy(cfg, {})
    try:
        assert by_proxy.route_names == by_gateway.route_names == ["toy"]
        for stack in (by_proxy, by_gateway):
            g = stack.gateway
            assert (g.host, g.port, g.settings.api_key) == ("127.0.0.1", port, API_KEY)
        assert listen_address(cfg) == ("127.0.0.1", port)
        assert gateway_address(cfg, {}) == GatewayAddress(f"http://127.0.0.1:{port}", API_KEY)
        base = await by_proxy.start()
        assert base == f"http://127.0.0.1:{port}"
        client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=API_KEY, max_retries=0)
        async with client:
            models = await client.models.list()
            resp = await client.completions.create(
                model="toy", prompt="story:", max_tokens=4, temperature=0
            )
        assert [m.id for m in models.data] == ["toy"]
        assert resp.choices[0].text == continuation("story:", 4)[0]
    finally:
        await by_proxy.stop()
        await by_gateway.stop()
        await server.aclose()


async def test_umbrella_wires_the_seed_verbs_in_a_process(cli: Cli) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tightwad.cli.umbrella",
        "status",
        "-c",
        str(cli.config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert "nodes: 2 (2 READY)" in out.decode()
    for verb in ("proxy", "status", "start", "stop", "swap", "benchmark"):
        assert verb in _parser().format_help()
