"""Supervised processes: domain <-> protobuf (``ProcessSpec``, ``ProcessStatus``, log lines).

``last_exit_code`` is ``None`` in the domain until a child has exited; the wire has no
"unset", so it says 0 there. Exit by signal N is ``-N`` on both sides.
"""

from __future__ import annotations

from tightwad.agent.processes.domain import (
    LogLine,
    ProcessKind,
    ProcessSpec,
    ProcessState,
    ProcessStatus,
)
from tightwad.errors import InvalidRequestError
from tightwad.v1 import agent_pb2

__all__ = ["log_line_to_proto", "spec_from_proto", "spec_to_proto", "status_to_proto"]

_KINDS = {
    ProcessKind.RPC_SERVER: agent_pb2.PROCESS_KIND_RPC_SERVER,
    ProcessKind.LLAMA_SERVER: agent_pb2.PROCESS_KIND_LLAMA_SERVER,
    ProcessKind.ENGINE_HOST: agent_pb2.PROCESS_KIND_ENGINE_HOST,
}
_KINDS_BACK = {v: k for k, v in _KINDS.items()}
_STATES = {
    ProcessState.STARTING: agent_pb2.PROCESS_STATE_STARTING,
    ProcessState.RUNNING: agent_pb2.PROCESS_STATE_RUNNING,
    ProcessState.BACKOFF: agent_pb2.PROCESS_STATE_BACKOFF,
    ProcessState.CRASH_LOOP: agent_pb2.PROCESS_STATE_CRASH_LOOP,
    ProcessState.STOPPING: agent_pb2.PROCESS_STATE_STOPPING,
    ProcessState.STOPPED: agent_pb2.PROCESS_STATE_STOPPED,
    ProcessState.FAILED: agent_pb2.PROCESS_STATE_FAILED,
}


def spec_from_proto(msg: agent_pb2.ProcessSpec) -> ProcessSpec:
    kind = _KINDS_BACK.get(msg.kind)
    if kind is None:
        raise InvalidRequestError(
            "spec.kind must be PROCESS_KIND_RPC_SERVER, ..._LLAMA_SERVER or ..._ENGINE_HOST"
        )
    if msg.port > 65535:
        raise InvalidRequestError(f"spec.port {msg.port} is not a TCP port")
    return ProcessSpec(
        name=msg.name,
        kind=kind,
        device_ids=tuple(msg.device_ids),
        host=msg.host,
        port=msg.port,
        args=tuple(msg.args),
        env=dict(msg.env),
        allow_public_bind=msg.allow_public_bind,
    )


def spec_to_proto(spec: ProcessSpec) -> agent_pb2.ProcessSpec:
    return agent_pb2.ProcessSpec(
        name=spec.name,
        kind=_KINDS[spec.kind],
        device_ids=list(spec.device_ids),
        host=spec.host,
        port=spec.port,
        args=list(spec.args),
        env=dict(spec.env),
        allow_public_bind=spec.allow_public_bind,
    )


def status_to_proto(status: ProcessStatus) -> agent_pb2.ProcessStatus:
    return agent_pb2.ProcessStatus(
        name=status.name,
        spec=spec_to_proto(status.spec),
        state=_STATES[status.state],
        pid=status.pid,
        host=status.host,
        port=status.port,
        restarts=status.restarts,
        last_exit_code=status.last_exit_code or 0,
        message=status.message,
        healthy=status.healthy,
        since=status.since,
        binary=status.binary,
    )


def log_line_to_proto(name: str, line: LogLine) -> agent_pb2.StreamLogsResponse:
    return agent_pb2.StreamLogsResponse(
        name=name, line=line.line, time=line.time, stream=line.stream
    )
