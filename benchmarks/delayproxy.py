"""A userspace TCP proxy that adds a fixed one-way delay in each direction: what the ``pool``
scenario puts between the coordinator and each ``ggml-rpc-server`` when the kernel has no
``sch_netem`` (``tc qdisc ... netem`` answers "Specified qdisc kind is unknown").

    python -m benchmarks.delayproxy --listen HOST:PORT --to HOST:PORT --delay-ms D

prints ``READY host:port`` once it listens, then forwards until SIGTERM/SIGINT.

Guarantees: every chunk read from one side is written to the other side ``delay`` seconds after
it was read (never earlier), in the order it was read, byte for byte; an EOF is forwarded after
the data before it, with the same delay; ``TCP_NODELAY`` on both legs (llama.cpp's RPC protocol
is request/response with small messages). With ``delay = 0`` it forwards at once (a bare relay
hop, which the scenario still records). Reading never waits on writing, so a delay does not cut
throughput to one chunk per delay; the queue between them is unbounded, fine for the RPC
traffic of one benchmark (the sender waits for answers).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import Sequence

__all__ = ["DelayProxy", "main", "split_address"]

_CHUNK = 1 << 16


def split_address(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) as (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float) -> None:
    """Copy ``reader`` to ``writer``, each chunk ``delay_s`` after it was read, in order."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def read() -> None:
        try:
            while chunk := await reader.read(_CHUNK):
                queue.put_nowait((loop.time() + delay_s, chunk))
        except (ConnectionError, OSError):
            pass
        queue.put_nowait((loop.time() + delay_s, b""))  # EOF, after the data before it

    async def write() -> None:
        while True:
            due, chunk = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not chunk:
                with contextlib.suppress(OSError):
                    if writer.can_write_eof():
                        writer.write_eof()
                return
            writer.write(chunk)
            await writer.drain()

    reading = asyncio.create_task(read())
    try:
        await write()
    except (ConnectionError, OSError):
        pass
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading


class DelayProxy:
    """Listens on ``listen``; each connection is relayed to ``target`` with ``delay_s`` added
    in each direction. ``start()`` returns the bound ``(host, port)``; ``stop()`` closes the
    listener and every relayed connection."""

    def __init__(
        self, listen: tuple[str, int], target: tuple[str, int], delay_s: float = 0.0
    ) -> None:
        if delay_s < 0:
            raise ValueError(f"delay must be >= 0, got {delay_s}")
        self.listen = listen
        self.target = target
        self.delay_s = delay_s
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._accept, *self.listen)
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def _accept(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        t_writer = None
        try:
            t_reader, t_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.target), timeout=10.0
            )
            _nodelay(c_writer)
            _nodelay(t_writer)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(_pipe(c_reader, t_writer, self.delay_s))
                tg.create_task(_pipe(t_reader, c_writer, self.delay_s))
        except (ConnectionError, OSError, TimeoutError):
            pass
        finally:
            for w in (c_writer, t_writer):
                if w is not None:
                    w.close()
            self._tasks.discard(task)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


async def _serve(listen: tuple[str, int], target: tuple[str, int], delay_s: float) -> None:
    proxy = DelayProxy(listen, target, delay_s)
    host, port = await proxy.start()
    print(f"READY {host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await proxy.stop()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.delayproxy", description=__doc__)
    p.add_argument("--listen", type=split_address, required=True, help="HOST:PORT (port 0: any)")
    p.add_argument("--to", type=split_address, required=True, help="HOST:PORT to relay to")
    p.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay, each direction")
    args = p.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency of tightwad
        asyncio.run(_serve(args.listen, args.to, args.delay_ms / 1000.0))
    else:
        uvloop.run(_serve(args.listen, args.to, args.delay_ms / 1000.0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
