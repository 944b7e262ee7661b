"""The engine host: one Engine, possibly pooled over ggml-rpc-servers, in its own process.

    python -m tightwad.agent.engine_host --listen HOST:PORT --model PATH [--model-id ID]
        [--ctx-size N] [--threads N] [--max-sessions N] [--batch-size N] [--gpu-layers auto|N]
        [--devices RPC[h:p],...] [--tensor-split a,b,...] [--[no-]batch-steps]
        [--open-wait-s S] [--prefill-chunk N] [--log-level LEVEL]

(also ``tightwad-agent --engine-only ...``). The agent's Supervisor runs it as a
``PROCESS_KIND_ENGINE_HOST`` child: llama.cpp's RPC backend calls ``GGML_ABORT`` when a remote
rpc-server dies mid-decode, so a pooled engine must not share a process with the agent. Here a
dead worker kills only this child; its supervisor restarts it (with backoff, or reports a crash
loop), and the controller re-plans.

Guarantees:

- The model is loaded (and every RPC endpoint probed) before the gRPC server listens, so the
  health of ``tightwad.v1.EngineService`` is SERVING only once the engine can answer.
- The cluster token comes from ``$TIGHTWAD_ENGINE_TOKEN`` (never the command line, which
  every local user can read); without it the Engine service is open. The cluster's mutual TLS
  files come from ``$TIGHTWAD_ENGINE_TLS_{CA,CERT,KEY}`` (set by the agent when
  ``cluster.tls`` is configured): then it serves TLS only, requiring a cluster certificate.
- A watchdog ends the process (exit status :data:`EXIT_RPC_PEER_LOST`) as soon as the TCP
  connection to one of its rpc-servers is gone (read from ``/proc/self/net``, no traffic of its
  own), rather than waiting for the next decode to abort: the supervisor then restarts it
  against the live servers. It leaves with ``os._exit``: freeing the engine would send frees
  to the dead server, which llama.cpp answers with an abort. It also ends when its parent
  (the agent) is gone, so a killed agent leaves no engine behind (exit status
  :data:`EXIT_ORPHANED`).
- SIGTERM/SIGINT: health NOT_SERVING, calls drained within the grace period, engine closed,
  exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import signal
import socket
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

from tightwad.agent.server import AgentServer, AgentSettings, tls_from_env
from tightwad.config import TlsConfig
from tightwad.engine.engine_config import EngineConfig
from tightwad.engine.offload import placement_line
from tightwad.errors import TightwadError
from tightwad.logs import configure_logging, get_logger

__all__ = [
    "EXIT_ORPHANED",
    "EXIT_RPC_PEER_LOST",
    "TOKEN_ENV",
    "EngineHostSettings",
    "build_parser",
    "lost_peers",
    "main",
    "parse_rpc_devices",
    "serve",
    "settings_from_args",
]

log = get_logger("tightwad.agent.engine_host")

TOKEN_ENV = "TIGHTWAD_ENGINE_TOKEN"
EXIT_RPC_PEER_LOST = 75  # EX_TEMPFAIL: restart me against live rpc-servers
EXIT_ORPHANED = 70
_WATCH_INTERVAL_S = 0.5
_TCP_ESTABLISHED = "01"
_ENGINE = {f.name: f.default for f in fields(EngineConfig)}


@dataclass(frozen=True, slots=True)
class EngineHostSettings:
    listen: str
    engine: EngineConfig
    token: str | None = None
    stop_grace_s: float = 5.0
    watch_interval_s: float = _WATCH_INTERVAL_S
    tls: TlsConfig | None = None


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas: {text!r}") from (
            None
        )


def _gpu_layers(text: str) -> int | Literal["auto"]:
    if text == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'auto' or an integer >= -1, got {text!r}"
        ) from None
    if value < -1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an integer >= -1, got {value}")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _devices(text: str) -> tuple[str, ...]:
    return tuple(d.strip() for d in text.split(",") if d.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tightwad-engine-host",
        description="Serve one model (possibly pooled over ggml-rpc-servers) over gRPC.",
    )
    p.add_argument("--listen", required=True, help="gRPC listen address HOST:PORT")
    p.add_argument("--model", type=Path, required=True, help="GGUF file")
    p.add_argument("--model-id", help="model id the engine answers to (default: file stem)")
    p.add_argument("--ctx-size", type=int, default=4096, help="context per session")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: llama.cpp decides)")
    p.add_argument("--max-sessions", type=int, default=4, help="sessions at once")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument(
        "--gpu-layers",
        type=_gpu_layers,
        default="auto",
        help="layers off the CPU: auto (as many as fit on the GPUs ggml sees; the default), "
        "a number, -1 all",
    )
    p.add_argument(
        "--devices",
        type=_devices,
        default=(),
        help="ggml devices in order, RPC[host:port] for an rpc-server (comma separated)",
    )
    p.add_argument("--tensor-split", type=_floats, default=(), help="share per device, a,b,...")
    p.add_argument("--no-flash-attn", action="store_true", help="disable flash attention")
    p.add_argument(
        "--batch-steps",
        action=argparse.BooleanOptionalAction,
        default=_ENGINE["batch_steps"],
        help="one forward pass for the pending work of all sessions (engine.batch_steps)",
    )
    p.add_argument(
        "--open-wait-s",
        type=_positive_seconds,
        default=_ENGINE["open_wait_s"],
        help="how long a new session waits for a free one before 429 (engine.open_wait_s)",
    )
    p.add_argument(
        "--prefill-chunk",
        type=_positive_int,
        default=_ENGINE["prefill_chunk"],
        help="prompt positions prefilled per step, and the cached-prefix alignment",
    )
    p.add_argument("--log-level", default="info")
    return p


def settings_from_args(ns: argparse.Namespace, env: dict[str, str]) -> EngineHostSettings:
    model = Path(ns.model).expanduser()
    if ns.prefill_chunk > ns.batch_size:
        raise argparse.ArgumentTypeError(
            f"--prefill-chunk {ns.prefill_chunk} is larger than --batch-size {ns.batch_size} "
            "(a chunk is decoded in one batch)"
        )
    if ns.tensor_split and len(ns.tensor_split) != len(ns.devices):
        raise argparse.ArgumentTypeError(
            f"--tensor-split has {len(ns.tensor_split)} values for {len(ns.devices)} device(s)"
        )
    engine = EngineConfig(
        model_id=ns.model_id or model.stem,
        path=model,
        ctx_size=ns.ctx_size,
        max_sessions=ns.max_sessions,
        threads=ns.threads,
        gpu_layers=ns.gpu_layers,
        batch_size=ns.batch_size,
        flash_attn=not ns.no_flash_attn,
        devices=ns.devices,
        tensor_split=ns.tensor_split,
        batch_steps=ns.batch_steps,
        open_wait_s=ns.open_wait_s,
        prefill_chunk=ns.prefill_chunk,
    )
    return EngineHostSettings(
        listen=ns.listen, engine=engine, token=env.get(TOKEN_ENV) or None, tls=tls_from_env(env)
    )


# --- the watchdog --------------------------------------------------------------------------


def parse_rpc_devices(devices: Iterable[str]) -> list[tuple[str, int]]:
    """``RPC[host:port]`` entries as (host, port); other devices are skipped."""
    out = []
    for name in devices:
        if name.startswith("RPC[") and name.endswith("]"):
            host, _, port = name[4:-1].rpartition(":")
            out.append((host.strip("[]"), int(port)))
    return out


def _resolve(host: str) -> set[str]:
    infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    return {str(ipaddress.ip_address(str(info[4][0]).split("%")[0])) for info in infos}


def _decode_address(hex_address: str) -> tuple[str, int]:
    """An address of /proc/net/tcp{,6}: host-order 32-bit words of hex, then the port."""
    ip_hex, port_hex = hex_address.split(":")
    raw = bytes.fromhex(ip_hex)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(words)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped), int(port_hex, 16)
    return str(ip), int(port_hex, 16)


def _own_socket_inodes() -> set[str]:
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _established_remotes() -> set[tuple[str, int]]:
    """(ip, port) of every ESTABLISHED TCP connection of this process."""
    mine = _own_socket_inodes()
    remotes = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == _TCP_ESTABLISHED and fields[9] in mine:
                remotes.add(_decode_address(fields[2]))
    return remotes


def lost_peers(peers: Sequence[tuple[set[str], int, str]]) -> list[str]:
    """Names of the peers (resolved ips, port, name) with no ESTABLISHED connection of ours."""
    remotes = _established_remotes()
    return [name for ips, port, name in peers if not any((ip, port) in remotes for ip in ips)]


async def _watch(settings: EngineHostSettings, parent: int) -> int:
    """Returns an exit status when the engine host must go; runs until then."""

    def resolve_peers() -> tuple[list[tuple[set[str], int, str]], bool]:
        peers = [
            (_resolve(host), port, f"{host}:{port}")
            for host, port in parse_rpc_devices(settings.engine.devices)
        ]
        return peers, os.path.exists("/proc/self/net/tcp")

    peers, can_see = await asyncio.to_thread(resolve_peers)
    if peers and not can_see:
        log.warning("engine_host_watchdog_off", reason="no /proc/self/net/tcp on this system")
    while True:
        await asyncio.sleep(settings.watch_interval_s)
        if os.getppid() != parent:
            log.error("engine_host_orphaned", parent=parent)
            return EXIT_ORPHANED
        if peers and can_see:
            lost = await asyncio.to_thread(lost_peers, peers)
            if lost:
                log.error(
                    "engine_host_rpc_peer_lost",
                    peers=lost,
                    reason="the connection to the rpc-server is closed: its tensors are gone",
                )
                return EXIT_RPC_PEER_LOST


# --- serving -------------------------------------------------------------------------------


async def serve(settings: EngineHostSettings) -> int:
    """Load, serve until a signal or the watchdog, stop. Returns the exit status."""
    parent = os.getppid()
    server = AgentServer(
        AgentSettings(
            listen=settings.listen,
            token=settings.token,
            engines=(settings.engine,),
            node_service=False,
            stop_grace_s=settings.stop_grace_s,
            tls=settings.tls,
        )
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    status = 0
    try:
        address = await server.start()
        engine = server.registry.get(settings.engine.model_id)
        info = await engine.info()
        layers = ", ".join(f"{name}={n}" for name, n in info.devices) or "CPU"
        print(
            f"tightwad-engine-host serving {settings.engine.model_id} on {address} ({layers})",
            flush=True,
        )
        print(f"placement: {placement_line(settings.engine, info.devices)}", flush=True)
        watch = asyncio.create_task(_watch(settings, parent), name="engine-host-watchdog")
        stopped = asyncio.create_task(stop.wait(), name="engine-host-signal")
        done, _ = await asyncio.wait({watch, stopped}, return_when=asyncio.FIRST_COMPLETED)
        for task in (watch, stopped):
            task.cancel()
        await asyncio.gather(watch, stopped, return_exceptions=True)
        if watch in done and not watch.cancelled() and watch.exception() is None:
            status = watch.result()
            # Freeing tensors on a dead rpc-server aborts inside llama.cpp: leave at once,
            # without closing the engine (the kernel frees everything of this process).
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    finally:
        await server.stop(grace=settings.stop_grace_s)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    configure_logging(ns.log_level)
    try:
        settings = settings_from_args(ns, dict(os.environ))
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    except TightwadError as exc:  # TLS environment set by half
        print(f"tightwad-engine-host: {exc}", file=sys.stderr, flush=True)
        return 2
    try:
        return asyncio.run(serve(settings))
    except TightwadError as exc:
        print(f"tightwad-engine-host: {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
