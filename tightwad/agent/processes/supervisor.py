"""The Supervisor: runs ``ggml-rpc-server``, ``llama-server`` and engine-host children and
keeps them up.

It is the shell around the pure machine of :mod:`.lifecycle`: one supervising task per
process feeds events (exit, probe result, timer, command) to ``step`` and executes the actions
it returns (spawn, terminate, schedule a restart).

Guarantees:

- Each child starts in its own session (``start_new_session``), so its process group id is
  its pid; stopping sends SIGTERM to the whole group, then SIGKILL after the grace period, and
  a child's group is SIGKILLed once more after it exits, so no grandchild is left behind.
  ``close()`` stops every child before returning: nothing outlives the agent.
- Every task it starts is owned: the per-process tasks are awaited by ``close()``, and each
  runs its helpers (log pumps, probes, timers) in a TaskGroup.
- Ports come from a :class:`.PortAllocator`: two supervised processes never share one.
- Waits have deadlines: probes, stop (grace then SIGKILL), ``wait_healthy`` and ``close``.
- Backoff timers sleep on the injectable clock.
- An engine host (:mod:`tightwad.agent.engine_host`) runs on this Python interpreter with
  ``engine_env`` (e.g. the cluster token) added to its environment, and only to its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc

from tightwad.agent.binaries import BinaryKind
from tightwad.agent.processes import lifecycle as lc
from tightwad.agent.processes.domain import ProcessKind, ProcessSpec, ProcessState, ProcessStatus
from tightwad.agent.processes.launch import (
    BindPolicy,
    DeviceLookup,
    build_command,
    child_env,
    resolve_bind_host,
)
from tightwad.agent.processes.logring import LogRing
from tightwad.agent.processes.ports import PortAllocator
from tightwad.agent.processes.probes import (
    ProbeError,
    grpc_health,
    http_health,
    listening,
    rpc_hello,
)
from tightwad.clock import Clock, SystemClock
from tightwad.errors import (
    ConflictError,
    DeadlineError,
    InvalidRequestError,
    NotFoundError,
    TightwadError,
)
from tightwad.logs import get_logger

__all__ = ["Changes", "Supervisor", "SupervisorSettings"]

log = get_logger("tightwad.agent.processes")

BinaryFinder = Callable[[BinaryKind], Path]
_BINARY_OF = {
    ProcessKind.RPC_SERVER: BinaryKind.RPC_SERVER,
    ProcessKind.LLAMA_SERVER: BinaryKind.LLAMA_SERVER,
}
_SETTLED = frozenset(
    {
        ProcessState.RUNNING,
        ProcessState.BACKOFF,
        ProcessState.CRASH_LOOP,
        ProcessState.FAILED,
        ProcessState.STOPPED,
    }
)
_PUMP_DRAIN_S = 2.0
ENGINE_SERVICE = "tightwad.v1.EngineService"


@dataclass(frozen=True, slots=True)
class SupervisorSettings:
    bind: BindPolicy = field(default_factory=BindPolicy)
    restart: lc.RestartPolicy = field(default_factory=lc.RestartPolicy)
    stop_grace_s: float = 5.0
    rpc_start_timeout_s: float = 30.0
    llama_start_timeout_s: float = 300.0
    probe_interval_s: float = 5.0
    starting_probe_interval_s: float = 0.2
    probe_timeout_s: float = 2.0
    unhealthy_after: int = 3
    log_lines: int = 2000
    port_low: int = 50100
    port_high: int = 50999
    line_buffered: bool = True

    def start_timeout(self, kind: ProcessKind) -> float:
        if kind is ProcessKind.RPC_SERVER:
            return self.rpc_start_timeout_s
        return self.llama_start_timeout_s


class Changes:
    """A version counter with waiters: ``bump()`` on every change, ``wait(after)`` for one."""

    def __init__(self) -> None:
        self.version = 0
        self._waiters: set[asyncio.Future[None]] = set()

    def bump(self) -> None:
        self.version += 1
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def wait(self, after: int, timeout_s: float) -> int:
        """The version once it is past ``after``, or the current one after ``timeout_s``."""
        if self.version > after:
            return self.version
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, timeout_s)
        finally:
            self._waiters.discard(waiter)
        return self.version


@dataclass(eq=False)
class _Managed:
    """One supervised process: its spec, machine state and the live child, if any."""

    spec: ProcessSpec
    host: str
    port: int
    ring: LogRing
    sup: lc.Supervision = field(default_factory=lc.Supervision)
    events: asyncio.Queue[lc.Event] = field(default_factory=asyncio.Queue)
    proc: asyncio.subprocess.Process | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    binary: str = ""
    since: float = 0.0
    protocol_version: str = ""
    closing: bool = False
    timer: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else 0


def _kill_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class Supervisor:
    """Start, stop, restart and watch child processes. ``await close()`` when done."""

    def __init__(
        self,
        binaries: BinaryFinder,
        *,
        devices: DeviceLookup | None = None,
        settings: SupervisorSettings | None = None,
        clock: Clock | None = None,
        base_env: Mapping[str, str] | None = None,
        engine_env: Mapping[str, str] | None = None,
        python: str | None = None,
        probe_credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self._binaries = binaries
        self._devices: DeviceLookup = devices or (lambda _id: None)
        self.settings = settings or SupervisorSettings()
        self._clock: Clock = clock or SystemClock()
        self._base_env = dict(os.environ if base_env is None else base_env)
        # GGML_NO_BACKTRACE: an abort (a dead RPC peer) must not attach gdb for seconds.
        self._engine_env = {
            "PYTHONUNBUFFERED": "1",
            "GGML_NO_BACKTRACE": "1",
            **(engine_env or {}),
        }
        self._python = python or sys.executable
        # An engine host serves TLS when the cluster does (engine_env carries the files).
        self._probe_credentials = probe_credentials
        self.ports = PortAllocator(self.settings.port_low, self.settings.port_high)
        self.changes = Changes()
        self._procs: dict[str, _Managed] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closed = False
        stdbuf = shutil.which("stdbuf") if self.settings.line_buffered else None
        self._line_buffer = (stdbuf, "-oL", "-eL") if stdbuf else ()

    # -- queries ------------------------------------------------------------------------

    def status(self, name: str) -> ProcessStatus:
        return self._status(self._get(name))

    def processes(self) -> list[ProcessStatus]:
        return [self._status(m) for m in self._procs.values()]

    def logs(self, name: str) -> LogRing:
        return self._get(name).ring

    def rpc_protocol_version(self) -> str:
        """The protocol version a healthy rpc-server of this host answered HELLO with."""
        return next((m.protocol_version for m in self._procs.values() if m.protocol_version), "")

    def _get(self, name: str) -> _Managed:
        try:
            return self._procs[name]
        except KeyError:
            known = ", ".join(sorted(self._procs)) or "none"
            raise NotFoundError(f"no process {name!r} (known: {known})") from None

    def _status(self, m: _Managed) -> ProcessStatus:
        return ProcessStatus(
            name=m.spec.name,
            spec=m.spec,
            state=m.sup.state,
            pid=m.pid,
            host=m.host,
            port=m.port,
            restarts=m.sup.restarts,
            last_exit_code=m.sup.last_exit_code,
            message=m.sup.message,
            healthy=m.sup.healthy,
            since=m.since,
            binary=m.binary,
            protocol_version=m.protocol_version,
        )

    # -- commands -----------------------------------------------------------------------

    async def start(
        self, spec: ProcessSpec, *, wait_healthy: bool = False, timeout_s: float | None = None
    ) -> ProcessStatus:
        """Start ``spec`` (idempotent for the same spec); optionally wait until it settles."""
        if self._closed:
            raise InvalidRequestError("the supervisor is shutting down")
        if not spec.name:
            raise InvalidRequestError("a process needs a name")
        m = self._procs.get(spec.name)
        if m is None:
            m = self._register(spec)
        elif m.spec != spec:
            if m.sup.state.alive:
                raise ConflictError(f"process {spec.name!r} runs with another spec; stop it first")
            m = self._respec(m, spec)
        already, generation = m.sup.state.alive, m.sup.generation
        m.events.put_nowait(lc.Start())

        def started(s: lc.Supervision) -> bool:
            return already or s.generation > generation

        if not wait_healthy:
            return await self._wait(m, started, 5.0)
        limit = timeout_s or self.settings.start_timeout(spec.kind) + 10.0
        deadline = self._clock.monotonic() + limit
        status = await self._wait(m, lambda s: started(s) and s.state in _SETTLED, limit)
        if m.sup.state is not ProcessState.BACKOFF:
            return status
        # A first attempt that died is restarted on its own: waiting for the caller means
        # waiting for that restart too (healthy, or given up), within the same limit.
        try:
            return await self._wait(
                m,
                lambda s: s.state in _SETTLED and s.state is not ProcessState.BACKOFF,
                max(deadline - self._clock.monotonic(), 0.0),
            )
        except DeadlineError:
            return self._status(m)

    async def stop(self, name: str, grace_s: float | None = None) -> ProcessStatus:
        m = self._get(name)
        grace = grace_s or self.settings.stop_grace_s
        m.events.put_nowait(lc.Stop(grace))
        return await self._wait(m, lambda s: not s.state.alive, grace + 10.0)

    async def restart(self, name: str, *, grace_s: float | None = None) -> ProcessStatus:
        m = self._get(name)
        grace = grace_s or self.settings.stop_grace_s
        generation = m.sup.generation
        m.events.put_nowait(lc.Restart(grace))
        return await self._wait(
            m,
            lambda s: s.generation > generation and s.state is not ProcessState.STOPPING,
            grace + 10.0,
        )

    async def close(self, grace_s: float | None = None) -> None:
        """Stop every child (SIGTERM, grace, SIGKILL) and end every supervising task."""
        self._closed = True
        grace = grace_s or self.settings.stop_grace_s
        for m in self._procs.values():
            m.closing = True
            m.events.put_nowait(lc.Stop(grace))
        tasks = list(self._tasks.values())
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=grace + 10.0)
            for m in self._procs.values():
                if m.proc is not None and m.proc.returncode is None:
                    _kill_group(m.proc.pid, signal.SIGKILL)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for m in self._procs.values():
            self.ports.release(m.port)
        log.info("supervisor_closed", processes=len(self._procs))

    # -- registration -------------------------------------------------------------------

    def _place(self, spec: ProcessSpec) -> tuple[str, int]:
        host, warning = resolve_bind_host(spec, self.settings.bind)
        if warning:
            log.warning("process_public_bind", name=spec.name, host=host, warning=warning)
        port = self.ports.reserve(host, spec.port) if spec.port else self.ports.allocate(host)
        return host, port

    def _register(self, spec: ProcessSpec) -> _Managed:
        child_env(self._base_env, spec, self._devices)  # validate devices before anything runs
        host, port = self._place(spec)
        m = _Managed(spec=spec, host=host, port=port, ring=LogRing(self.settings.log_lines))
        m.since = self._clock.time()
        self._procs[spec.name] = m
        self._tasks[spec.name] = asyncio.get_running_loop().create_task(
            self._supervise(m), name=f"supervise-{spec.name}"
        )
        return m

    def _respec(self, m: _Managed, spec: ProcessSpec) -> _Managed:
        child_env(self._base_env, spec, self._devices)
        if (spec.host, spec.port) != (m.spec.host, m.spec.port):
            self.ports.release(m.port)
            m.host, m.port = self._place(spec)
        m.spec = spec
        return m

    async def _wait(
        self, m: _Managed, done: Callable[[lc.Supervision], bool], timeout_s: float
    ) -> ProcessStatus:
        deadline = self._clock.monotonic() + timeout_s
        seen = self.changes.version
        while not done(m.sup):
            left = deadline - self._clock.monotonic()
            if left <= 0:
                raise DeadlineError(
                    f"process {m.spec.name!r} did not settle within {timeout_s:g}s "
                    f"(state {m.sup.state.value}: {m.sup.message})"
                )
            seen = await self.changes.wait(seen, min(left, 1.0))
        return self._status(m)

    # -- the supervising loop -----------------------------------------------------------

    async def _supervise(self, m: _Managed) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                while not (m.closing and not m.sup.state.alive):
                    event = await m.events.get()
                    self._apply(m, event, group)
                if m.timer is not None:
                    m.timer.cancel()
        except Exception:
            log.exception("supervise_failed", name=m.spec.name)
            m.sup = replace(m.sup, state=ProcessState.FAILED, message="supervisor error")
            if m.proc is not None and m.proc.returncode is None:
                _kill_group(m.proc.pid, signal.SIGKILL)
            self.changes.bump()

    def _apply(self, m: _Managed, event: lc.Event, group: asyncio.TaskGroup) -> None:
        before = m.sup
        m.sup, actions = lc.step(before, event, self._clock.monotonic(), self.settings.restart)
        if m.sup != before:
            if m.sup.state is not before.state:
                m.since = self._clock.time()
                log.info(
                    "process_state",
                    name=m.spec.name,
                    state=m.sup.state.value,
                    message=m.sup.message,
                    pid=m.pid,
                )
            self.changes.bump()
        for action in actions:
            match action:
                case lc.Spawn():
                    group.create_task(self._run_child(m, m.sup.generation))
                case lc.Terminate(grace_s=grace):
                    group.create_task(self._terminate(m, grace))
                case lc.ScheduleRestart(delay_s=delay, generation=gen):
                    m.timer = group.create_task(self._timer(m, delay, gen))

    async def _timer(self, m: _Managed, delay: float, generation: int) -> None:
        await self._clock.sleep(delay)
        m.events.put_nowait(lc.BackoffElapsed(generation))

    async def _terminate(self, m: _Managed, grace: float) -> None:
        proc = m.proc
        if proc is None or proc.returncode is not None:
            return
        _kill_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(m.exited.wait()), grace)
        except TimeoutError:
            log.warning("process_kill", name=m.spec.name, pid=proc.pid, grace_s=grace)
            _kill_group(proc.pid, signal.SIGKILL)

    # -- one run of the child -----------------------------------------------------------

    def _command(self, m: _Managed) -> tuple[list[str], dict[str, str]]:
        if m.spec.kind is ProcessKind.ENGINE_HOST:
            m.binary = self._python
            argv = build_command(m.spec, Path(self._python), m.host, m.port)
            base = {**self._base_env, **self._engine_env}
            return argv, child_env(base, m.spec, self._devices)
        binary = self._binaries(_BINARY_OF[m.spec.kind])
        m.binary = str(binary)
        argv = build_command(m.spec, binary, m.host, m.port, line_buffer=self._line_buffer)
        return argv, child_env(self._base_env, m.spec, self._devices)

    async def _run_child(self, m: _Managed, generation: int) -> None:
        try:
            argv, env = self._command(m)
            argv = _with_parent_death_signal(argv)
            m.exited.clear()
            m.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except (TightwadError, OSError) as exc:
            reason = exc.message if isinstance(exc, TightwadError) else f"cannot start: {exc}"
            m.ring.append(self._clock.time(), "stderr", f"[tightwad] {reason}")
            m.events.put_nowait(lc.SpawnFailed(reason))
            return
        proc = m.proc
        log.info("process_spawned", name=m.spec.name, pid=proc.pid, argv=argv)
        self.changes.bump()
        code = await self._watch(m, proc)
        m.exited.set()
        m.events.put_nowait(lc.Exited(code))

    async def _watch(self, m: _Managed, proc: asyncio.subprocess.Process) -> int:
        assert proc.stdout is not None and proc.stderr is not None
        async with asyncio.TaskGroup() as group:
            pumps = [
                group.create_task(self._pump(m, proc.stdout, "stdout")),
                group.create_task(self._pump(m, proc.stderr, "stderr")),
            ]
            prober = group.create_task(self._probe_loop(m))
            code = await proc.wait()
            prober.cancel()
            _kill_group(proc.pid, signal.SIGKILL)  # leftovers of its group
            _done, pending = await asyncio.wait(pumps, timeout=_PUMP_DRAIN_S)
            for task in pending:
                task.cancel()
        return code

    async def _pump(self, m: _Managed, stream: asyncio.StreamReader, name: str) -> None:
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line longer than the stream limit
                raw = await stream.read(65536)
            if not raw:
                return
            m.ring.append(self._clock.time(), name, raw.decode("utf-8", "replace").rstrip("\n"))

    async def _probe(self, m: _Managed, ever_healthy: bool) -> str:
        timeout = self.settings.probe_timeout_s
        if m.spec.kind is ProcessKind.RPC_SERVER:
            if ever_healthy:  # a client may hold the server: connections would wait unserved
                return listening(m.host, m.port)
            version = await rpc_hello(m.host, m.port, timeout)
            m.protocol_version = version
            return f"rpc protocol {version}"
        if m.spec.kind is ProcessKind.ENGINE_HOST:
            return await grpc_health(
                m.host, m.port, ENGINE_SERVICE, timeout, credentials=self._probe_credentials
            )
        return await http_health(m.host, m.port, timeout)

    async def _probe_loop(self, m: _Managed) -> None:
        s = self.settings
        limit = s.start_timeout(m.spec.kind)
        deadline = self._clock.monotonic() + limit
        healthy, ever, misses = False, False, 0
        while True:
            try:
                detail = await self._probe(m, ever)
            except ProbeError as exc:
                misses += 1
                if healthy and misses >= s.unhealthy_after:
                    healthy = False
                    m.events.put_nowait(lc.Unhealthy(str(exc)))
                if not ever and self._clock.monotonic() > deadline:
                    m.events.put_nowait(lc.StartTimedOut(limit))
                    return
            else:
                misses = 0
                if not healthy:
                    healthy = ever = True
                    m.events.put_nowait(lc.Healthy(detail))
            await self._clock.sleep(s.probe_interval_s if healthy else s.starting_probe_interval_s)


_SETPRIV = shutil.which("setpriv")


def _with_parent_death_signal(argv: list[str]) -> list[str]:
    """Have the kernel SIGKILL the child if the agent itself dies (even by SIGKILL), so no
    rpc-server or engine host outlives it. Uses util-linux ``setpriv --pdeathsig`` where present
    (``preexec_fn`` is unsafe in a process with threads, as the agent's engine has)."""
    if _SETPRIV is None or sys.platform != "linux":
        return argv
    return [_SETPRIV, "--pdeathsig", "KILL", "--", *argv]
