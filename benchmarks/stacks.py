"""What a scenario runs against: a tightwad stack (agents + gateway on loopback, in this
process) and peer ``llama-server`` processes (real binaries built from the same llama.cpp
source as the binding, ``scripts/build_llama.sh bin``).

Both are async context managers that always tear down what they started, even on error.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tightwad.agent.server import AgentServer, AgentSettings
from tightwad.engine.engine_config import EngineConfig
from tightwad.gateway.api import GatewaySettings
from tightwad.gateway.engine_client import EngineClient
from tightwad.gateway.loop import RouteSpec
from tightwad.gateway.server import GatewayServer

__all__ = [
    "GatewayStack",
    "Route",
    "child_process",
    "engine_host_process",
    "fake_engine_process",
    "gateway_for",
    "gateway_stack",
    "llama_bin_dir",
    "llama_server",
]

_ROOT = Path(__file__).resolve().parent.parent


def llama_bin_dir() -> Path:
    """The directory holding the real ``llama-server`` (built and cached on first use)."""
    out = subprocess.run(
        [str(_ROOT / "scripts" / "build_llama.sh"), "bin"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHON": os.environ.get("PYTHON", "python3")},
    )
    return Path(out.stdout.strip().splitlines()[-1])


@dataclass(frozen=True, slots=True)
class Route:
    """One gateway route of a benchmark stack."""

    name: str
    draft_mode: str = "none"
    use_drafter: bool = False
    pipeline: bool = False
    max_draft_tokens: int = 16


@dataclass
class GatewayStack:
    url: str
    target_address: str
    draft_address: str | None
    agents: list[AgentServer] = field(default_factory=list)


@contextlib.asynccontextmanager
async def gateway_stack(
    target: Path,
    routes: Sequence[Route],
    *,
    draft: Path | None = None,
    threads: int = 2,
    ctx_size: int = 4096,
    max_sessions: int = 2,
    batch_steps: bool | None = None,
    max_concurrency: int = 4,
) -> AsyncIterator[GatewayStack]:
    """A target agent (+ a draft agent when ``draft``) and a gateway serving ``routes``;
    ``batch_steps`` turns the engines' continuous batching on or off (None: their default);
    ``max_concurrency``: the generations one route runs at once (the rest queue)."""
    agents: list[AgentServer] = []
    try:

        async def start_agent(model_id: str, path: Path) -> AgentServer:
            cfg = EngineConfig(
                model_id=model_id,
                path=path,
                ctx_size=ctx_size,
                max_sessions=max_sessions,
                threads=threads,
                **({} if batch_steps is None else {"batch_steps": batch_steps}),
            )
            agent = AgentServer(
                AgentSettings(listen="127.0.0.1:0", engines=(cfg,), node_service=False)
            )
            await agent.start()
            agents.append(agent)
            return agent

        agent = await start_agent("target", target)
        draft_address = None
        if draft is not None:
            draft_address = (await start_agent("draft", draft)).address
        async with gateway_for(
            agent.address, routes, draft_address=draft_address, max_concurrency=max_concurrency
        ) as url:
            yield GatewayStack(url, agent.address, draft_address, agents)
    finally:
        for a in reversed(agents):
            await a.stop(grace=0.5)


@contextlib.asynccontextmanager
async def gateway_for(
    target_address: str,
    routes: Sequence[Route],
    *,
    draft_address: str | None = None,
    target_model: str = "target",
    draft_model: str = "draft",
    max_concurrency: int = 4,
) -> AsyncIterator[str]:
    """The real gateway, in this process, serving ``routes`` over engines at these addresses
    (at most ``max_concurrency`` generations of a route at once); yields its base URL."""
    specs = []
    for r in routes:
        drafters: tuple[EngineClient, ...] = ()
        if r.use_drafter:
            if draft_address is None:
                raise ValueError(f"route {r.name} drafts with a model but none was given")
            drafters = (EngineClient(draft_address, draft_model),)
        specs.append(
            RouteSpec(
                name=r.name,
                target=EngineClient(target_address, target_model),
                draft_mode=r.draft_mode,  # type: ignore[arg-type]
                drafters=drafters,
                pipeline=r.pipeline,
                max_draft_tokens=r.max_draft_tokens,
            )
        )
    gateway = GatewayServer(
        specs,
        GatewaySettings(max_concurrency=max_concurrency, max_queue=16, max_tokens_cap=1 << 20),
        host="127.0.0.1",
        port=0,
    )
    try:
        yield await gateway.start()
    finally:
        await gateway.stop()


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the benchmark process dies, however it dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def llama_server(
    model: Path,
    *,
    threads: int = 2,
    ctx_size: int = 4096,
    extra: Sequence[str] = (),
    log_path: Path | None = None,
    ready_timeout_s: float = 180.0,
) -> AsyncIterator[str]:
    """A real ``llama-server`` on a free loopback port; yields its base URL (no ``/v1``)."""
    binary = llama_bin_dir() / "llama-server"
    port = _free_port()
    argv = [
        str(binary),
        "-m",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-t",
        str(threads),
        "-tb",
        str(threads),
        "-c",
        str(ctx_size),
        "-np",
        "1",
        "-fa",
        "on",
        "--jinja",
        *extra,
    ]
    log_target: int | object = asyncio.subprocess.DEVNULL
    log_file = None
    if log_path is not None:
        log_file = await asyncio.to_thread(log_path.open, "wb")
        log_target = log_file
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=log_target, stderr=asyncio.subprocess.STDOUT, preexec_fn=_die_with_parent
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as http:
            while True:
                if proc.returncode is not None:
                    raise RuntimeError(
                        f"llama-server exited with {proc.returncode} at start-up: {argv}"
                    )
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(f"{url}/health") as r:
                        if r.status == 200:
                            break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"llama-server not healthy after {ready_timeout_s}s")
                await asyncio.sleep(0.25)
        yield url
    finally:
        await stop_process(proc)
        if log_file is not None:
            log_file.close()


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


@contextlib.asynccontextmanager
async def fake_engine_process(
    ready_timeout_s: float = 30.0, record: Path | None = None
) -> AsyncIterator[str]:
    """:mod:`benchmarks.fake_engine` in its own process (as an engine on another host would
    be); yields its gRPC address."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")])),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.fake_engine",
        "--listen",
        "127.0.0.1:0",
        *(["--record", str(record)] if record is not None else []),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=str(_ROOT),
        env=env,
        preexec_fn=_die_with_parent,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + ready_timeout_s
        text = ""
        while not text.startswith("READY "):
            line = await asyncio.wait_for(proc.stdout.readline(), deadline - time.monotonic())
            if not line:
                raise RuntimeError("the fake engine exited before it was ready")
            text = line.decode().strip()
        address = text.split(" ", 1)[1]
        # Keep draining its stdout so that its logs can never block it.
        drain = asyncio.create_task(_drain(proc.stdout))
        try:
            yield address
        finally:
            drain.cancel()
    finally:
        await stop_process(proc, 5.0)


async def stop_process(proc: asyncio.subprocess.Process, grace_s: float = 10.0) -> None:
    """SIGTERM, ``grace_s`` to exit, then SIGKILL (a process already gone is fine)."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def child_process(
    argv: Sequence[str],
    *,
    ready: str,
    log_path: Path | None = None,
    ready_timeout_s: float = 300.0,
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """A child (``argv`` may start with ``taskset``/``ip netns exec``, which exec the rest) that
    prints a line containing ``ready`` on stdout when it serves; yields (process, that line).
    Its stdout keeps being drained; stderr goes to ``log_path`` (or nowhere). Always stopped
    (SIGTERM, then SIGKILL) on exit; it also gets SIGTERM if this process dies."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")])),
    }
    log_file = None
    err: int | object = asyncio.subprocess.DEVNULL
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = await asyncio.to_thread(log_path.open, "ab")
        err = log_file
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=err,
        cwd=str(_ROOT),
        env=env,
        preexec_fn=_die_with_parent,
    )
    drain: asyncio.Task[None] | None = None
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + ready_timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{argv[0]}: not ready after {ready_timeout_s}s: {list(argv)}")
            try:
                raw = await asyncio.wait_for(proc.stdout.readline(), left)
            except TimeoutError:
                continue
            if not raw:
                await proc.wait()
                where = f" (log: {log_path})" if log_path else ""
                raise RuntimeError(
                    f"{list(argv)} exited with {proc.returncode} before it was ready{where}"
                )
            text = raw.decode(errors="replace").strip()
            if ready in text:
                break
        drain = asyncio.create_task(_drain(proc.stdout))
        yield proc, text
    finally:
        if drain is not None:
            drain.cancel()
        await stop_process(proc)
        if log_file is not None:
            log_file.close()


@contextlib.asynccontextmanager
async def engine_host_process(
    model: Path,
    *,
    model_id: str,
    threads: int,
    ctx_size: int = 4096,
    max_sessions: int = 2,
    listen: str = "127.0.0.1:0",
    devices: Sequence[str] = (),
    tensor_split: Sequence[float] = (),
    gpu_layers: int = 0,
    prefix: Sequence[str] = (),
    log_path: Path | None = None,
    ready_timeout_s: float = 600.0,
    banner: list[str] | None = None,
) -> AsyncIterator[str]:
    """The agent's Engine as its own process (:mod:`tightwad.agent.engine_host`, what an agent
    runs pooled engines in), optionally behind ``prefix`` (e.g. ``taskset -c 1``); yields the
    gRPC address it serves on once the model is loaded. Its ready line (which names the layers
    per device) is appended to ``banner`` when given."""
    argv = [
        *prefix,
        sys.executable,
        "-m",
        "tightwad.agent.engine_host",
        "--listen", listen,
        "--model", str(model),
        "--model-id", model_id,
        "--ctx-size", str(ctx_size),
        "--threads", str(threads),
        "--max-sessions", str(max_sessions),
        "--gpu-layers", str(gpu_layers),
        "--log-level", "warning",
    ]  # fmt: skip
    if devices:
        argv += ["--devices", ",".join(devices)]
    if tensor_split:
        argv += ["--tensor-split", ",".join(f"{x:g}" for x in tensor_split)]
    async with child_process(
        argv,
        ready="tightwad-engine-host serving",
        log_path=log_path,
        ready_timeout_s=ready_timeout_s,
    ) as (_proc, line):
        # "tightwad-engine-host serving ID on HOST:PORT (devices)"
        if banner is not None:
            banner.append(line)
        yield line.split(" on ", 1)[1].split(" ", 1)[0]
