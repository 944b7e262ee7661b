"""Simulated agents for the ``controller`` scenario: many lightweight asyncio gRPC clients in one
process, each speaking the real ``controller.proto`` Register stream exactly as an agent's
``ControllerLink`` does (``tightwad/agent/server.py``): hello (node id, join token, address,
inventory, protocol version) -> Welcome (heartbeat interval) -> a Heartbeat with the inventory
every interval, each acknowledged by the controller. No engines, no Node service.

    python -m benchmarks.simagents --controller HOST:PORT --token T --agents N --first I --out F

prints ``REGISTERED n`` once all ``n`` agents got their Welcome, then beats until SIGTERM/SIGINT
and writes ``F``: JSON ``{"samples": [[unix time sent, round trip ms], ...], "errors": [...],
"agents": n}``. Each stream has its own FIFO of send times (acks come back in order on a
stream), so a round trip is heartbeat written -> its ack read, on this process's clock.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import random
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc

from tightwad.controller.registry import PROTOCOL_VERSION
from tightwad.engine.device_facts import Backend, DeviceInfo, HostFacts, Vendor
from tightwad.engine.facts_wire import device_to_proto, host_to_proto
from tightwad.rpc import client_channel
from tightwad.v1 import agent_pb2, controller_pb2, controller_pb2_grpc

__all__ = ["fake_inventory", "main"]

GiB = 1 << 30


def fake_inventory(index: int) -> agent_pb2.Inventory:
    """A plausible host: 8 cores, 32 GiB, one CPU device and one 24 GiB GPU."""
    host = HostFacts(
        hostname=f"sim-{index:04d}",
        os="Linux 6.8",
        arch="x86_64",
        cpu_cores=8,
        ram_total_bytes=32 * GiB,
        ram_available_bytes=28 * GiB,
        cpu_model="Simulated CPU",
        agent_version="0.1.0",
        llama_cpp_version="b0000",
        rpc_protocol_version="3.0.0",
    )
    devices = [
        DeviceInfo(f"cpu-sim-{index}", 0, "CPU", Vendor.CPU, Backend.CPU, 32 * GiB, 28 * GiB),
        DeviceInfo(
            f"GPU-sim-{index:04d}",
            0,
            "Simulated GPU",
            Vendor.NVIDIA,
            Backend.CUDA,
            24 * GiB,
            23 * GiB,
            pci_bus_id=f"0000:{index % 256:02x}:00.0",
            ggml_name="CUDA0",
        ),
    ]
    return agent_pb2.Inventory(
        host=host_to_proto(host), devices=[device_to_proto(d) for d in devices]
    )


class SimAgent:
    def __init__(
        self, index: int, controller: str, token: str | None, inventory_every_beat: bool
    ) -> None:
        self.index = index
        self.node_id = f"sim-{index:04d}"
        self.controller = controller
        self.token = token
        self.inventory = fake_inventory(index)
        self.inventory_every_beat = inventory_every_beat
        self.samples: list[tuple[float, float]] = []
        self.welcomed = asyncio.Event()

    async def run(self, errors: list[str]) -> None:
        outbox: asyncio.Queue[controller_pb2.RegisterRequest] = asyncio.Queue()
        sent: collections.deque[tuple[float, float]] = collections.deque()
        outbox.put_nowait(
            controller_pb2.RegisterRequest(
                hello=controller_pb2.AgentHello(
                    node_id=self.node_id,
                    join_token=self.token or "",
                    address=f"127.0.0.1:{20000 + self.index}",
                    inventory=self.inventory,
                    protocol_version=PROTOCOL_VERSION,
                )
            )
        )

        async def requests() -> AsyncIterator[controller_pb2.RegisterRequest]:
            while True:
                req = await outbox.get()
                if req.HasField("heartbeat"):
                    sent.append((time.time(), time.perf_counter()))
                yield req

        try:
            async with client_channel(self.controller, token=self.token) as channel:
                call = controller_pb2_grpc.ControllerServiceStub(channel).Register(requests())
                first = await asyncio.wait_for(call.read(), timeout=60.0)
                if first is grpc.aio.EOF or not first.HasField("welcome"):
                    raise RuntimeError("no welcome")
                interval = max(first.welcome.heartbeat_interval_ms / 1000.0, 0.05)
                self.welcomed.set()
                beat = asyncio.create_task(self._beat(outbox, interval))
                try:
                    while True:
                        msg = await call.read()
                        if msg is grpc.aio.EOF:
                            raise RuntimeError("controller ended the stream")
                        if msg.HasField("heartbeat_ack_time") and sent:
                            wall, t0 = sent.popleft()
                            self.samples.append((wall, (time.perf_counter() - t0) * 1000.0))
                finally:
                    beat.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await beat
                    call.cancel()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            errors.append(f"{self.node_id}: {exc!r}")
            self.welcomed.set()

    async def _beat(
        self, outbox: asyncio.Queue[controller_pb2.RegisterRequest], interval: float
    ) -> None:
        await asyncio.sleep(random.uniform(0, interval))  # agents do not beat in lockstep
        while True:
            hb = controller_pb2.Heartbeat(time=time.time())
            if self.inventory_every_beat:
                hb.inventory.CopyFrom(self.inventory)
            outbox.put_nowait(controller_pb2.RegisterRequest(heartbeat=hb))
            await asyncio.sleep(interval)


async def _serve(args: argparse.Namespace) -> None:
    agents = [
        SimAgent(args.first + i, args.controller, args.token, not args.bare_heartbeats)
        for i in range(args.agents)
    ]
    errors: list[str] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks = []
    for a in agents:
        tasks.append(asyncio.create_task(a.run(errors)))
        await asyncio.sleep(args.ramp_s / max(1, len(agents)))
    await asyncio.wait_for(asyncio.gather(*(a.welcomed.wait() for a in agents)), 300)
    print(f"REGISTERED {len(agents) - len(errors)}", flush=True)
    await stop.wait()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    samples = [s for a in agents for s in a.samples]
    text = json.dumps({"agents": len(agents), "samples": samples, "errors": errors[:50]})
    await asyncio.to_thread(Path(args.out).write_text, text)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.simagents", description=__doc__)
    p.add_argument("--controller", required=True, help="HOST:PORT")
    p.add_argument("--token", default=None)
    p.add_argument("--agents", type=int, default=250)
    p.add_argument("--first", type=int, default=0, help="index of the first agent (node ids)")
    p.add_argument("--ramp-s", type=float, default=5.0, help="spread the registrations over this")
    p.add_argument("--bare-heartbeats", action="store_true", help="heartbeats without inventory")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(_serve(args))
    else:
        uvloop.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
