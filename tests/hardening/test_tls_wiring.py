"""``cluster.tls`` wired through the real components, with certificates from ``tightwadctl certs``.

Proves:

- a controller, an agent (its own process, registering over mutual TLS), a gateway (its own
  process, dialling the agent's Engine service over mutual TLS) and ``tightwadctl`` configured
  from one cluster file work together: the agent registers, the controller's executor reaches
  the agent's Node service, the CLI lists the node, the gateway answers a chat completion;
- a client without a certificate, or with one from another CA, is refused at the handshake with
  a prompt UNAVAILABLE-style error that names the endpoint and says it is about TLS (the CLI,
  the gateway's Engine client, and an agent's registration alike); a plain-text server is
  refused by a TLS client the same way;
- the token stays on under TLS: the right certificate with a wrong token is UNAUTHENTICATED;
- a missing or mismatched certificate file stops each component at start with the config key
  and the path (exit status 2 for the processes).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from tightwad.agent.node_service import LoadDefaults
from tightwad.agent.processes import ProcessKind, ProcessSpec, ProcessState
from tightwad.agent.server import AgentServer, AgentSettings, tls_from_env
from tightwad.cli import ctl
from tightwad.cli.client import ControllerClient, ControllerUnreachable, TokenRefused
from tightwad.config import TlsConfig, load_config
from tightwad.controller.ids import DeploymentId, NodeId
from tightwad.controller.reconcile import UnloadEngine
from tightwad.controller.server import ControllerServer
from tightwad.errors import ConfigError, UnavailableError
from tightwad.gateway.engine_client import EngineClient
from tightwad.tls import channel_credentials

from .conftest import Pki
from .support import free_port

TOKEN = "tls-wiring-token-3b8e41c2"
PY = sys.executable


# --- set-up ----------------------------------------------------------------------------------


def _certs(directory: Path, *, name: str = "node-a") -> TlsConfig:
    """A cluster CA and one host certificate, made by the real ``tightwadctl certs``."""
    assert ctl.main(["certs", "init", "--dir", str(directory)]) == 0
    issue = ["certs", "issue", "--dir", str(directory), "--name", name]
    assert ctl.main([*issue, "--host", "127.0.0.1", "--host", "localhost"]) == 0
    return TlsConfig(
        ca_file=directory / "ca.pem",
        cert_file=directory / f"{name}.pem",
        key_file=directory / f"{name}-key.pem",
    )


def _cluster_file(
    path: Path,
    tls: TlsConfig | None,
    *,
    controller_port: int,
    state: Path,
    routes: str = "",
) -> Path:
    tls_block = (
        "  tls:\n"
        f"    ca_file: {tls.ca_file}\n"
        f"    cert_file: {tls.cert_file}\n"
        f"    key_file: {tls.key_file}\n"
        if tls
        else ""
    )
    path.write_text(
        f"cluster:\n  name: tls-test\n  token: {TOKEN}\n{tls_block}"
        f"controller:\n  host: 127.0.0.1\n  port: {controller_port}\n"
        f"  address: 127.0.0.1:{controller_port}\n  state_path: {state}\n"
        "  heartbeat_interval_s: 0.2\n" + routes,
        encoding="utf-8",
    )
    return path


@dataclass
class Proc:
    """A component in its own process; ``lines`` is everything it printed so far."""

    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    async def wait_for(self, marker: str, limit_s: float = 120.0) -> str:
        assert self.proc.stdout is not None
        async with asyncio.timeout(limit_s):
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise AssertionError("exited before " + marker + ":\n" + "".join(self.lines))
                line = raw.decode(errors="replace")
                self.lines.append(line)
                if marker in line:
                    self.reader = asyncio.get_running_loop().create_task(self._drain())
                    return line

    async def _drain(self) -> None:  # keep reading so a full pipe never blocks it
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace"))

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self.reader is not None:
            await asyncio.gather(self.reader, return_exceptions=True)


async def _spawn(*argv: str) -> Proc:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIGHTWAD_")}
    proc = await asyncio.create_subprocess_exec(
        PY,
        *argv,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    return Proc(proc)


async def _run(*argv: str, limit_s: float = 60.0) -> tuple[int, str]:
    proc = await _spawn(*argv)
    assert proc.proc.stdout is not None
    out = await asyncio.wait_for(proc.proc.stdout.read(), limit_s)
    return await proc.proc.wait(), out.decode(errors="replace")


async def _registered(client: ControllerClient, node: str, limit_s: float = 60.0) -> None:
    async with asyncio.timeout(limit_s):
        while True:
            nodes = await client.nodes()
            if any(n.record.node_id == node and n.state.value == "ready" for n in nodes):
                return
            await asyncio.sleep(0.2)


# --- the whole stack over mutual TLS ---------------------------------------------------------


@pytest.mark.engine
async def test_controller_agent_gateway_and_ctl_over_mtls(
    tmp_path: Path, smollm_path: Path
) -> None:
    tls = _certs(tmp_path / "pki")
    cport, aport = free_port(), free_port()
    routes = f"routes:\n  - name: smollm\n    target: grpc://127.0.0.1:{aport}\n"
    config = _cluster_file(
        tmp_path / "cluster.yaml",
        tls,
        controller_port=cport,
        state=tmp_path / "state.sqlite",
        routes=routes,
    )
    controller = ControllerServer(load_config(config))
    await controller.start()
    agent = gateway = None
    try:
        agent = await _spawn(
            "-m", "tightwad.agent.main", "-c", str(config), "--name", "node-a",
            "--listen", f"127.0.0.1:{aport}", "--model", str(smollm_path),
            "--model-id", "smollm", "--ctx-size", "512", "--threads", "2",
        )  # fmt: skip
        await agent.wait_for("listening on")

        # Registration over mTLS, seen by a TLS client of the controller.
        creds = channel_credentials(tls)
        async with ControllerClient(controller.address, token=TOKEN, credentials=creds) as c:
            await _registered(c, "node-a")

        # The controller's own executor dials the agent's Node service over mTLS: an unload of
        # a model that is not there comes back NOT_FOUND (done), not UNAVAILABLE.
        assert controller.controller is not None
        await controller.controller.executor.unload_engine(
            UnloadEngine(DeploymentId("d-none"), NodeId("node-a"), "absent")
        )

        # tightwadctl takes cluster.tls from the same file.
        code, out = await _run("-m", "tightwad.cli.ctl", "-c", str(config), "--json", "nodes")
        assert code == 0, out
        nodes = json.loads(out)
        listed = nodes["nodes"] if isinstance(nodes, dict) else nodes
        assert "node-a" in json.dumps(listed)

        # The gateway dials the agent's Engine service over mTLS and serves a completion.
        gateway = await _spawn(
            "-m", "tightwad.gateway.main", "-c", str(config), "--host", "127.0.0.1", "--port", "0"
        )
        url = (await gateway.wait_for("listening on")).rsplit("listening on ", 1)[1].strip()
        body = {"model": "smollm", "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 4, "temperature": 0}  # fmt: skip
        timeout = aiohttp.ClientTimeout(total=120)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(f"{url}/v1/chat/completions", json=body) as resp,
        ):
            reply = await resp.json()
        assert resp.status == 200, reply
        assert reply["choices"][0]["message"]["content"] is not None
        assert reply["usage"]["completion_tokens"] >= 1
    finally:
        for proc in (gateway, agent):
            if proc is not None:
                await proc.stop()
        await controller.stop(grace=0.5)
    printed = "".join(agent.lines if agent else [])
    assert TOKEN not in printed
    started = [line for line in printed.splitlines() if "agent_started" in line]
    assert started and '"tls": true' in started[0], printed  # it did serve TLS


@pytest.mark.engine
async def test_supervised_engine_host_serves_mtls_and_is_probed_over_it(
    pki: Pki, smollm_path: Path
) -> None:
    """An engine host started by a TLS agent gets the files through its environment, serves
    TLS only, and the supervisor's health probe (TLS too) sees it SERVING."""
    agent = AgentServer(
        AgentSettings(listen="127.0.0.1:0", token=TOKEN, name="node-a", tls=pki.node)
    )
    await agent.start()
    try:
        args = ("--model", str(smollm_path), "--model-id", "smollm", "--ctx-size", "256",
                "--threads", "2")  # fmt: skip
        status = await agent.supervisor.start(
            ProcessSpec("engine-tls", ProcessKind.ENGINE_HOST, args=args),
            wait_healthy=True,
            timeout_s=120,
        )
        assert status.state is ProcessState.RUNNING and status.healthy, status
        address = f"{status.host}:{status.port}"
        creds = channel_credentials(pki.client)
        engine = EngineClient(address, "smollm", token=TOKEN, credentials=creds)
        plain = EngineClient(address, "smollm", token=TOKEN)
        try:
            assert (await engine.info()).model == "smollm"
            with pytest.raises(UnavailableError, match="TLS"):
                await plain.info()
        finally:
            await engine.close()
            await plain.close()
    finally:
        await agent.stop(grace=1.0)


# --- who gets refused ------------------------------------------------------------------------


@pytest.fixture
async def tls_cluster(
    tmp_path: Path, pki: Pki
) -> AsyncIterator[tuple[ControllerServer, AgentServer]]:
    """A TLS controller and a TLS agent (Node + Engine services, no model) on loopback."""
    config = _cluster_file(
        tmp_path / "cluster.yaml",
        pki.node,
        controller_port=free_port(),
        state=tmp_path / "state.sqlite",
    )
    controller = ControllerServer(load_config(config), listen="127.0.0.1:0")
    await controller.start()
    agent = AgentServer(
        AgentSettings(
            listen="127.0.0.1:0",
            token=TOKEN,
            name="node-a",
            controller=controller.address,
            heartbeat_refresh_s=5.0,
            load_defaults=LoadDefaults(ctx_size=256),
            tls=pki.node,
        )
    )
    await agent.start()
    try:
        assert agent.link is not None
        await asyncio.wait_for(agent.link.attached.wait(), 30)
        yield controller, agent
    finally:
        await agent.stop(grace=0.2)
        await controller.stop(grace=0.2)


def _assert_tls_refusal(message: str, address: str) -> None:
    assert address in message, message
    assert "TLS" in message or "tls" in message, message


async def test_clients_without_a_cluster_certificate_are_refused(
    tls_cluster: tuple[ControllerServer, AgentServer], pki: Pki
) -> None:
    controller, agent = tls_cluster
    loop = asyncio.get_running_loop()
    for credentials in (None, channel_credentials(pki.stranger)):
        started = loop.time()
        client = ControllerClient(
            controller.address, token=TOKEN, timeout=10.0, credentials=credentials
        )
        async with client:
            with pytest.raises(ControllerUnreachable) as refused:
                await client.nodes()
        _assert_tls_refusal(str(refused.value), controller.address)
        engine = EngineClient(agent.address, "none", token=TOKEN, credentials=credentials)
        try:
            with pytest.raises(UnavailableError) as unavailable:
                await engine.info()
        finally:
            await engine.close()
        _assert_tls_refusal(str(unavailable.value), agent.address)
        assert loop.time() - started < 5.0  # refused at the handshake, not a hang

    # With the cluster's certificate, the same calls go through; the token is still checked.
    good = channel_credentials(pki.client)
    async with ControllerClient(controller.address, token=TOKEN, credentials=good) as client:
        assert [n.record.node_id for n in await client.nodes()] == ["node-a"]
    async with ControllerClient(controller.address, token="wrong", credentials=good) as client:
        with pytest.raises(TokenRefused):
            await client.nodes()


async def test_tls_client_to_a_plain_server_is_refused(tmp_path: Path, pki: Pki) -> None:
    plain = AgentServer(AgentSettings(listen="127.0.0.1:0", token=TOKEN, node_service=False))
    await plain.start()
    try:
        engine = EngineClient(
            plain.address, "none", token=TOKEN, credentials=channel_credentials(pki.client)
        )
        try:
            with pytest.raises(UnavailableError) as refused:
                await asyncio.wait_for(engine.info(), 10)
        finally:
            await engine.close()
        _assert_tls_refusal(str(refused.value), plain.address)
    finally:
        await plain.stop(grace=0.1)


async def test_agent_with_a_foreign_certificate_never_registers(
    tls_cluster: tuple[ControllerServer, AgentServer], pki: Pki
) -> None:
    controller, _ = tls_cluster
    mallory = AgentServer(
        AgentSettings(
            listen="127.0.0.1:0",
            token=TOKEN,
            name="mallory",
            controller=controller.address,
            tls=pki.stranger,
        )
    )
    await mallory.start()
    try:
        link = mallory.link
        assert link is not None
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(link.attached.wait(), 2.0)
        assert link.sessions == 0
        # What it logs as controller_link_failed: the endpoint, UNAVAILABLE, and why.
        assert link.last_error.startswith(f"{controller.address}: UNAVAILABLE: "), link.last_error
        assert "TLS handshake failed" in link.last_error
    finally:
        await mallory.stop(grace=0.1)
    good = channel_credentials(pki.client)
    async with ControllerClient(controller.address, token=TOKEN, credentials=good) as client:
        assert "mallory" not in [n.record.node_id for n in await client.nodes()]


# --- bad files fail at start, naming the key -------------------------------------------------


def _broken(tls: TlsConfig, tmp_path: Path, which: str) -> TlsConfig:
    missing = tmp_path / "nowhere" / f"{which}.pem"
    if which == "cert":
        return TlsConfig(ca_file=tls.ca_file, cert_file=missing, key_file=tls.key_file)
    if which == "mismatch":  # a real key, but not the certificate's
        other = _certs(tmp_path / "other-pki", name="other")
        return TlsConfig(ca_file=tls.ca_file, cert_file=tls.cert_file, key_file=other.key_file)
    return TlsConfig(ca_file=missing, cert_file=tls.cert_file, key_file=tls.key_file)


@pytest.mark.parametrize(
    ("which", "key", "reason"),
    [
        ("cert", "cluster.tls.cert_file", "no such file"),
        ("ca", "cluster.tls.ca_file", "no such file"),
        ("mismatch", "cluster.tls.key_file", "is not the key of"),
    ],
)
async def test_bad_tls_files_stop_every_component_at_start(
    tmp_path: Path, pki: Pki, which: str, key: str, reason: str
) -> None:
    tls = _broken(pki.node, tmp_path, which)
    config = _cluster_file(
        tmp_path / "cluster.yaml",
        tls,
        controller_port=free_port(),
        state=tmp_path / "state.sqlite",
        routes="routes:\n  - name: r\n    target: grpc://127.0.0.1:1\n",
    )
    path = {"cert": tls.cert_file, "ca": tls.ca_file, "mismatch": tls.key_file}[which]
    commands: Sequence[tuple[int, tuple[str, ...]]] = (  # (exit status, argv)
        (2, ("-m", "tightwad.controller.main", "-c", str(config))),
        (2, ("-m", "tightwad.agent.main", "-c", str(config), "--listen", "127.0.0.1:0")),
        (2, ("-m", "tightwad.gateway.main", "-c", str(config), "--port", "0")),
        (1, ("-m", "tightwad.cli.ctl", "-c", str(config), "nodes")),
    )
    for status, argv in commands:
        code, out = await _run(*argv)
        assert code == status, (argv, code, out)
        assert key in out and reason in out and str(path) in out, (argv, out)
        assert "Traceback" not in out, (argv, out)


async def test_ctl_tls_flags_name_themselves(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--controller", "127.0.0.1:1", "--token", TOKEN]
    code = await asyncio.to_thread(ctl.main, [*base, "--tls-ca", str(pki.client.ca_file), "nodes"])
    assert code == 1
    assert "--tls-cert" in capsys.readouterr().err
    missing = str(tmp_path / "no-key.pem")
    flags = ["--tls-ca", str(pki.client.ca_file), "--tls-cert", str(pki.client.cert_file)]
    code = await asyncio.to_thread(ctl.main, [*base, *flags, "--tls-key", missing, "nodes"])
    err = capsys.readouterr().err
    assert code == 1 and "--tls-key" in err and missing in err


def test_engine_host_tls_environment_is_all_or_nothing(pki: Pki) -> None:
    assert tls_from_env({}) is None
    full = {
        "TIGHTWAD_ENGINE_TLS_CA": str(pki.node.ca_file),
        "TIGHTWAD_ENGINE_TLS_CERT": str(pki.node.cert_file),
        "TIGHTWAD_ENGINE_TLS_KEY": str(pki.node.key_file),
    }
    assert tls_from_env(full) == pki.node
    with pytest.raises(ConfigError, match="TIGHTWAD_ENGINE_TLS_KEY"):
        tls_from_env({k: v for k, v in full.items() if not k.endswith("KEY")})
