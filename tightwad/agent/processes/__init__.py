"""Supervised llama.cpp processes of one host: ``ggml-rpc-server`` per device and
``llama-server`` with the controller's arguments.

Public surface::

    Supervisor(binaries, devices=..., settings=..., clock=...)   # start/stop/restart/list/logs
    SupervisorSettings, BindPolicy, RestartPolicy                  # knobs
    ProcessSpec, ProcessStatus, ProcessKind, ProcessState, LogLine # domain values
    step(state, event, now, policy) -> (state, actions)            # the pure machine
    PortAllocator, rpc_hello, http_health                          # pieces, for tests and tools
"""

from tightwad.agent.processes.domain import (
    LogLine,
    ProcessKind,
    ProcessSpec,
    ProcessState,
    ProcessStatus,
)
from tightwad.agent.processes.launch import BindPolicy, build_command, device_env
from tightwad.agent.processes.lifecycle import RestartPolicy, Supervision, step
from tightwad.agent.processes.logring import LogRing
from tightwad.agent.processes.ports import PortAllocator, port_is_free
from tightwad.agent.processes.probes import ProbeError, http_health, rpc_hello
from tightwad.agent.processes.supervisor import Changes, Supervisor, SupervisorSettings

__all__ = [
    "BindPolicy",
    "Changes",
    "LogLine",
    "LogRing",
    "PortAllocator",
    "ProbeError",
    "ProcessKind",
    "ProcessSpec",
    "ProcessState",
    "ProcessStatus",
    "RestartPolicy",
    "Supervision",
    "Supervisor",
    "SupervisorSettings",
    "build_command",
    "device_env",
    "http_health",
    "port_is_free",
    "rpc_hello",
    "step",
]
