"""Helpers of the hardening tier: a live gateway on loopback, RSS, free ports, real server
processes (agent, gateway, controller) with their output and descendants, and the target
alone's reference answers."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from tightwad.gateway.api import GatewaySettings, create_app
from tightwad.gateway.types import Backend


@dataclass
class LiveGateway:
    url: str
    port: int
    runner: web.AppRunner
    session: aiohttp.ClientSession

    async def close(self) -> None:
        await self.session.close()
        await self.runner.cleanup()


async def start_gateway(
    routes: Mapping[str, Backend], settings: GatewaySettings, **runner_kwargs: object
) -> LiveGateway:
    """The gateway app served as production serves it (handler cancellation on)."""
    app = create_app(routes, settings)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, **runner_kwargs)  # type: ignore[arg-type]
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
    return LiveGateway(f"http://127.0.0.1:{port}", port, runner, session)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of a process (this one by default), from /proc."""
    status = Path(f"/proc/{pid or 'self'}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc status")


@dataclass
class UpProcess:
    """``tightwad up`` (agent + gateway on SmolLM2, n-gram drafting) in its own process."""

    proc: asyncio.subprocess.Process
    url: str
    port: int
    model: str
    output: list[str] = field(default_factory=list)
    drain: asyncio.Task[None] | None = None

    async def stop(self) -> str:
        """SIGTERM, wait for the exit; everything the process printed."""
        if self.proc.returncode is None:
            self.proc.terminate()
        await asyncio.wait_for(self.proc.wait(), 60)
        if self.drain is not None:
            await asyncio.wait_for(self.drain, 10)
        return "".join(self.output)


async def start_up(
    tmp: Path,
    *,
    api_key: str,
    ctx_size: int = 512,
    max_sessions: int = 8,
    max_concurrency: int = 8,
    queue_size: int = 32,
    threads: int = 2,
    max_tokens_cap: int = 2048,
    target: Path | None = None,
) -> UpProcess:
    """Start ``tightwad up`` with the key in the environment (never on the command line)."""
    port = free_port()
    config = tmp / "up.yaml"
    config.write_text(
        "gateway:\n"
        "  api_key: ${TIGHTWAD_API_KEY}\n"
        f"  max_concurrency: {max_concurrency}\n"
        f"  queue_size: {queue_size}\n"
        f"  max_tokens_cap: {max_tokens_cap}\n"
    )
    env = {**os.environ, "TIGHTWAD_API_KEY": api_key}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tightwad.cli.umbrella",
        "up",
        "-c",
        str(config),
        "--port",
        str(port),
        "--ctx-size",
        str(ctx_size),
        "--max-sessions",
        str(max_sessions),
        "--threads",
        str(threads),
        *(["--target", str(target)] if target is not None else []),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    seen: list[str] = []
    async with asyncio.timeout(180):
        while True:
            line = (await proc.stdout.readline()).decode(errors="replace")
            if not line:
                raise RuntimeError("tightwad up exited:\n" + "".join(seen[-40:]))
            seen.append(line)
            if line.startswith("Tightwad is serving"):
                break
    up = UpProcess(proc, f"http://127.0.0.1:{port}", port, line.split("'")[1], seen)

    async def drain() -> None:  # keep reading, so a full pipe never blocks the server
        assert proc.stdout is not None
        async for chunk in proc.stdout:
            up.output.append(chunk.decode(errors="replace"))

    up.drain = asyncio.get_running_loop().create_task(drain())
    return up


# --- real server processes (the fault and 64-client load tests) -----------------------------

API_KEY_ENV = "TIGHTWAD_API_KEY"
_BIN = Path(sys.executable).parent


@dataclass
class ServerProcess:
    """A ``tightwad-*`` server in its own process; its output is collected by a thread."""

    name: str
    popen: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)
    ready_prefix: str = ""
    ready_line: str = ""

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return "".join(self.lines)

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line)
            if not self.ready.is_set() and line.startswith(self.ready_prefix):
                self.ready_line = line.strip()
                self.ready.set()
        self.popen.stdout.close()  # EOF: the process is gone (no unclosed pipe left behind)
        self.ready.set()  # exited: wake the waiter

    async def wait_ready(self, timeout_s: float = 180.0) -> str:
        await asyncio.to_thread(self.ready.wait, timeout_s)
        if not self.ready_line:
            self.kill()
            raise RuntimeError(f"{self.name} did not start:\n{self.output()[-3000:]}")
        return self.ready_line

    def kill(self) -> None:
        """SIGKILL (no chance to clean up) and reap."""
        if self.alive:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(30)

    def descendants(self) -> list[int]:
        return descendants(self.pid)

    def sigterm(self) -> None:
        self.popen.send_signal(signal.SIGTERM)

    async def wait(self, timeout_s: float = 60.0) -> int:
        """Wait for the exit (SIGKILL after ``timeout_s``). The exit status."""
        try:
            return await asyncio.to_thread(self.popen.wait, timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    async def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM; wait for the exit (SIGKILL after ``timeout_s``). The exit status."""
        if self.alive:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.popen.wait, timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise


#: what a leaked task, stream or generator prints; a fault test fails on any of them
LEAK_SIGNS = (
    "Task was destroyed but it is pending",
    "exception was never retrieved",
    "ResourceWarning",
)


#: not ours: llama_cpp._utils opens os.devnull twice at import and keeps both for the
#: process's life (its stdout/stderr silencer), so Python reports them at exit
_THIRD_PARTY = "unclosed file <_io.TextIOWrapper name='/dev/null' mode='w'"


def leaks(proc: ServerProcess) -> list[str]:
    """The lines of ``proc``'s output that show a leak (see :data:`LEAK_SIGNS`)."""
    return [
        line
        for line in proc.lines
        if any(sign in line for sign in LEAK_SIGNS) and _THIRD_PARTY not in line
    ]


def spawn(name: str, argv: list[str], ready_prefix: str, env: dict[str, str] | None = None):
    """Start ``argv`` (a console script of this venv) with its output collected; warnings
    about unclosed resources are errors in it (``-W error::ResourceWarning``)."""
    popen = subprocess.Popen(
        [str(_BIN / argv[0]), *argv[1:]],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={
            **os.environ,
            "TIGHTWAD_LOG_JSON": "0",
            "PYTHONWARNINGS": "error::ResourceWarning",
            **(env or {}),
        },
    )
    proc = ServerProcess(name, popen, ready_prefix=ready_prefix)
    threading.Thread(target=proc._read, name=f"read-{name}", daemon=True).start()
    return proc


def cluster_file(tmp: Path, name: str, text: str) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(text)
    return path


def start_agent(
    tmp: Path,
    model: Path,
    *,
    name: str,
    port: int,
    model_id: str = "smollm",
    ctx_size: int = 512,
    max_sessions: int = 8,
    threads: int = 1,
    config: str = "",
    controller: str | None = None,
) -> ServerProcess:
    """``tightwad-agent`` serving ``model`` in its embedded engine on 127.0.0.1:port."""
    cfg = cluster_file(tmp, f"agent-{name}", config or "agents:\n  host: 127.0.0.1\n")
    argv = [
        "tightwad-agent", "-c", str(cfg), "--name", name, "--listen", f"127.0.0.1:{port}",
        "--model", str(model), "--model-id", model_id, "--ctx-size", str(ctx_size),
        "--max-sessions", str(max_sessions), "--threads", str(threads), "--log-level", "warning",
    ]  # fmt: skip
    if controller:
        argv += ["--controller", controller]
    return spawn(name, argv, f"tightwad-agent {name} listening on ")


def start_gateway_process(
    tmp: Path, *, port: int, api_key: str, config: str, name: str = "gateway"
) -> ServerProcess:
    """``tightwad-gateway`` on 127.0.0.1:port; the key comes from the environment."""
    cfg = cluster_file(tmp, name, config)
    argv = ["tightwad-gateway", "-c", str(cfg), "--port", str(port), "--log-level", "warning"]
    return spawn(name, argv, "tightwad-gateway listening on ", env={API_KEY_ENV: api_key})


def start_controller_process(
    tmp: Path, *, port: int, state: Path, config: str = "", name: str = "controller"
) -> ServerProcess:
    cfg = cluster_file(tmp, name, config or "controller:\n  host: 127.0.0.1\n")
    argv = [
        "tightwad-controller", "-c", str(cfg), "--listen", f"127.0.0.1:{port}",
        "--state", str(state), "--log-level", "warning",
    ]  # fmt: skip
    return spawn(name, argv, "tightwad-controller listening on ")


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc's parent links)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@dataclass(frozen=True)
class Reference:
    """The target alone's greedy answer to a chat prompt (one plain step at a time), with the
    top-1 minus top-2 logprob gap at each step (see :data:`support.NEAR_TIE_LOGPROB_GAP`)."""

    tokens: tuple[int, ...]
    gaps: tuple[float, ...]
    pieces: tuple[bytes, ...]

    @property
    def text(self) -> str:
        from tightwad.spec.detok import IncrementalDetokenizer

        det = IncrementalDetokenizer(list(self.pieces))
        return "".join(det.push(t) for t in self.tokens) + det.flush()

    def divergence(self, text: str) -> int | None:
        """Index of the first reference token the output ``text`` does not continue with."""
        from tightwad.spec.detok import IncrementalDetokenizer

        det = IncrementalDetokenizer(list(self.pieces))
        so_far = ""
        for i, tok in enumerate(self.tokens):
            so_far += det.push(tok)
            if not text.startswith(so_far):
                return i
        so_far += det.flush()
        return None if text == so_far else len(self.tokens)

    def check(self, text: str, what: str) -> bool:
        """Assert ``text`` is this answer or departs from it only at a near-tie; whether equal."""
        from support import NEAR_TIE_LOGPROB_GAP

        i = self.divergence(text)
        if i is None:
            return True
        assert i < len(self.gaps) and self.gaps[i] < NEAR_TIE_LOGPROB_GAP, (
            f"{what}: output departs from the target alone at token {i} (top-2 gap "
            f"{self.gaps[i] if i < len(self.gaps) else 'n/a'}): {text!r} vs {self.text!r}"
        )
        return False

    def check_start(self, text: str, what: str) -> bool:
        """:meth:`check` for an answer cut short (fewer tokens than the reference)."""
        if self.text.startswith(text):
            return True
        return self.check(text, what)


async def target_alone(address: str, model: str, prompts: Sequence[str], n: int):
    """:class:`Reference` answers of the engine at ``address`` for each chat prompt."""
    from tightwad.gateway.engine_client import EngineClient
    from tightwad.spec.sampling import SamplingConfig

    client = EngineClient(address, model)
    try:
        pieces, _special, _fp = await client.vocabulary()
        eog = (await client.info()).eog_token_ids
        out: dict[str, Reference] = {}
        for content in prompts:
            prompt = await client.render_chat([("user", content, "")])
            session = client.session(timeout_s=120)
            await session.open(prompt, SamplingConfig(), top_logprobs=2)
            tokens: list[int] = []
            gaps: list[float] = []
            for _ in range(n):
                v = await session.verify([])
                top = v.logprobs[0].top
                gaps.append(top[0].logprob - top[1].logprob)
                if v.next_token in eog:
                    break
                tokens.append(v.next_token)
            await session.close()
            out[content] = Reference(tuple(tokens), tuple(gaps), tuple(pieces))
        return out
    finally:
        await client.close()


async def live_sessions(address: str, model: str) -> int:
    from tightwad.gateway.engine_client import EngineClient

    client = EngineClient(address, model)
    try:
        return (await client.info()).live_sessions
    finally:
        await client.close()
