"""The HELLO handshake of a ``ggml-rpc-server``: its protocol version, within a deadline.

Wire format (ggml-rpc.cpp): request ``| cmd u8 = 14 (RPC_CMD_HELLO) | size u64 LE | payload |``,
response ``| size u64 LE | major u8 | minor u8 | patch u8 | ... |``. Protocol 7 sends
``conn_caps`` (24 zero bytes = plain TCP) and answers 28 bytes; protocols 2-6 send an empty
payload and answer 3 bytes. We try the current form first, then the old one.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct

__all__ = ["RPC_CMD_HELLO", "ProbeError", "rpc_hello"]

RPC_CMD_HELLO = 14
_CONN_CAPS_SIZE = 24
_MAX_HELLO_REPLY = 1024


class ProbeError(Exception):
    """A probe that did not pass; ``str()`` says why."""


async def _hello_once(host: str, port: int, payload: bytes, timeout_s: float) -> str:
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(struct.pack("<BQ", RPC_CMD_HELLO, len(payload)) + payload)
            await writer.drain()
            (size,) = struct.unpack("<Q", await reader.readexactly(8))
            if not 3 <= size <= _MAX_HELLO_REPLY:
                raise ProbeError(f"unexpected HELLO reply size {size}")
            body = await reader.readexactly(size)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    return f"{body[0]}.{body[1]}.{body[2]}"


async def rpc_hello(host: str, port: int, timeout_s: float = 2.0) -> str:
    """The protocol version (``"7.0.0"``) a ggml RPC server answers HELLO with."""
    last: Exception | None = None
    for payload in (bytes(_CONN_CAPS_SIZE), b""):
        try:
            return await _hello_once(host, port, payload, timeout_s)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ProbeError) as exc:
            last = exc
            if isinstance(exc, ConnectionRefusedError | TimeoutError):
                break
    raise ProbeError(f"rpc hello to {host}:{port} failed: {last!r}")
