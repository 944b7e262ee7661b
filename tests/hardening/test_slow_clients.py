"""Slow-loris clients against a live gateway: the connection is cut, the server stays up.

aiohttp arms its keep-alive timer when a connection opens, and bytes of an unfinished request
head do not re-arm it: a client dribbling its headers is closed once ``keepalive_timeout``
passes. The production runner must set it (see the report: ``GatewayServer`` uses aiohttp's
default of 3630 s); here it is set to 1.5 s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from gateway.fakes import FakeBackend

from tightwad.gateway.api import GatewaySettings

from .support import LiveGateway, start_gateway

HEADER_TIMEOUT_S = 1.5


@pytest.fixture
async def live() -> AsyncIterator[LiveGateway]:
    gw = await start_gateway(
        {"fake": FakeBackend()},
        GatewaySettings(body_timeout_s=HEADER_TIMEOUT_S),
        keepalive_timeout=HEADER_TIMEOUT_S,
        lingering_time=1.0,  # GatewayServer's runner uses 2 s
    )
    yield gw
    await gw.close()


async def _dribble(port: int, data: bytes, interval: float, budget: float) -> float | None:
    """Send ``data`` one byte per ``interval``; seconds until the server closed, or None."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    try:
        for byte in data:
            if time.monotonic() - started > budget:
                return None
            writer.write(bytes([byte]))
            try:
                await writer.drain()
                closed = await asyncio.wait_for(reader.read(1024), interval)
            except TimeoutError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                return time.monotonic() - started
            if closed == b"" or reader.at_eof():
                return time.monotonic() - started
        return None
    finally:
        writer.close()


async def test_slow_headers_are_cut_off(live: LiveGateway) -> None:
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + b"X-Pad: "
        + b"a" * 200
    )
    closed_after = await _dribble(live.port, head, interval=0.1, budget=10.0)
    assert closed_after is not None, "the server kept a slow-loris connection open"
    assert closed_after < HEADER_TIMEOUT_S + 2.0
    # ...and it still serves everyone else.
    async with live.session.get(f"{live.url}/healthz") as resp:
        assert resp.status == 200


async def test_many_slow_clients_do_not_starve_the_server(live: LiveGateway) -> None:
    head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 200
    lorises = [
        asyncio.create_task(_dribble(live.port, head, interval=0.2, budget=8.0)) for _ in range(50)
    ]
    await asyncio.sleep(0.3)
    async with live.session.get(f"{live.url}/healthz") as resp:
        assert resp.status == 200
    results = await asyncio.gather(*lorises)
    assert all(r is not None and r < HEADER_TIMEOUT_S + 3.0 for r in results), results


async def test_slow_body_is_cut_off(live: LiveGateway) -> None:
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: 4000\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
    try:
        writer.write(head)
        await writer.drain()
        closed_after, answer = await _dribble_on(reader, writer, b"{" + b" " * 3998, budget=5.0)
        # Then the server closes (after aiohttp's lingering read of what is still sent).
        answer += await asyncio.wait_for(reader.read(), 4.0)
    finally:
        writer.close()
    assert closed_after is not None
    assert closed_after < HEADER_TIMEOUT_S + 2.0
    assert answer.startswith(b"HTTP/1.1 408")
    assert b'"code":"request_timeout"' in answer.replace(b" ", b"")


async def _dribble_on(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes, budget: float
) -> tuple[float | None, bytes]:
    """Dribble ``data``; (seconds until the server answered or closed, what it sent)."""
    started = time.monotonic()
    for byte in data:
        if time.monotonic() - started > budget:
            return None, b""
        writer.write(bytes([byte]))
        await writer.drain()
        try:
            answer = await asyncio.wait_for(reader.read(1024), 0.1)
        except TimeoutError:
            continue
        if answer or reader.at_eof():
            return time.monotonic() - started, answer
    return None, b""
