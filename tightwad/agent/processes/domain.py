"""Domain values of supervised processes: what to run (``ProcessSpec``), how it is doing
(``ProcessStatus``), and one captured log line (``LogLine``).

Protobuf messages are built from these only in :mod:`tightwad.agent.processes.process_wire`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from tightwad.engine.log_line import LogLine

__all__ = ["LogLine", "ProcessKind", "ProcessSpec", "ProcessState", "ProcessStatus"]

_EMPTY: Mapping[str, str] = MappingProxyType({})


class ProcessKind(enum.StrEnum):
    RPC_SERVER = "rpc_server"
    LLAMA_SERVER = "llama_server"
    # One Engine in its own Python process (tightwad.agent.engine_host).
    ENGINE_HOST = "engine_host"


class ProcessState(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    CRASH_LOOP = "crash_loop"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"

    @property
    def alive(self) -> bool:
        """A child process may exist in this state."""
        return self in (ProcessState.STARTING, ProcessState.RUNNING, ProcessState.STOPPING)


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """What to run. ``host`` empty = the agent's cluster address; ``port`` 0 = allocate one.

    ``args``: extra arguments (for llama-server: ``-m``, ``--rpc``, ``--device``, ...).
    ``env``: overrides on top of the backend preset. ``device_ids``: stable device ids
    (``GPU-...``, ``pci:...``) the process is pinned to.
    """

    name: str
    kind: ProcessKind
    device_ids: tuple[str, ...] = ()
    host: str = ""
    port: int = 0
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    allow_public_bind: bool = False


@dataclass(frozen=True, slots=True)
class ProcessStatus:
    """A supervised process as reported: ``since`` is Unix time of the last state change."""

    name: str
    spec: ProcessSpec
    state: ProcessState
    pid: int
    host: str
    port: int
    restarts: int
    last_exit_code: int | None
    message: str
    healthy: bool
    since: float
    binary: str
    protocol_version: str = ""
