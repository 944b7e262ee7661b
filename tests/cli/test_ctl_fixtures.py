"""Shared set-up for the CLI tests (no tests here): a real ControllerServer on loopback with
two fake agents speaking the real Register stream (``tests/controller``'s ``cluster`` fixture
and ``FakeAgent``), heartbeating in the background, and a runner that calls the real entry
points (``tightwadctl``'s and ``tightwad``'s ``main``) in a worker thread, as a process would,
capturing what they print."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from controller.test_service import TOKEN, FakeAgent, cluster

from tightwad.cli import ctl, umbrella
from tightwad.controller.server import ControllerServer
from tightwad.logs import configure_logging

__all__ = ["TOKEN", "Cli", "Result", "cli", "cluster", "write_config"]

# The entry points configure logging once per process (when nothing has yet). In this test
# process do it here, on the real stderr: a per-test captured stream would be closed under
# the loggers that cached it.
with contextlib.redirect_stderr(sys.__stderr__):
    configure_logging("warning")


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def write_config(path: Path, *, port: int, token: str | None = TOKEN, extra: str = "") -> Path:
    """A cluster file naming the test controller, its token and two models."""
    token_line = f"  token: {token}\n" if token else ""
    path.write_text(
        f"cluster:\n  name: test\n{token_line}"
        f"controller:\n  host: 127.0.0.1\n  port: {port}\n"
        "models:\n"
        "  m:\n    path: /models/m.gguf\n    ctx_size: 1024\n    default: true\n"
        "  big:\n    path: /models/big.gguf\n" + extra,
        encoding="utf-8",
    )
    return path


@dataclass
class Cli:
    server: ControllerServer
    agents: list[FakeAgent]
    config: Path
    capsys: pytest.CaptureFixture[str]

    @property
    def address(self) -> str:
        return self.server.address

    async def _call(self, main: Callable[[list[str]], int], argv: Sequence[str]) -> Result:
        self.capsys.readouterr()
        code = await asyncio.to_thread(main, list(argv))
        captured = self.capsys.readouterr()
        return Result(code, captured.out, captured.err)

    async def ctl(self, *argv: str) -> Result:
        """``tightwadctl -c CONFIG ARGV`` (the config names this controller and its token)."""
        return await self._call(ctl.main, ["-c", str(self.config), *argv])

    async def ctl_raw(self, *argv: str) -> Result:
        return await self._call(ctl.main, list(argv))

    async def tightwad(self, *argv: str) -> Result:
        return await self._call(umbrella.main, list(argv))


async def _heartbeats(agents: Sequence[FakeAgent]) -> None:
    while True:
        for agent in agents:
            await agent.heartbeat()
        await asyncio.sleep(0.05)


@pytest.fixture
async def cli(
    cluster: tuple[ControllerServer, list[FakeAgent]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Cli]:
    """Both agents joined and heartbeating; a cluster file for the CLI under ``tmp_path``."""
    server, agents = cluster
    for name in ("TIGHTWAD_TOKEN", "TIGHTWAD_CONFIG", "TIGHTWAD_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    for agent in agents:
        await (await agent.register(server.address)).read()
    beat = asyncio.create_task(_heartbeats(agents))
    port = int(server.address.rsplit(":", 1)[1])
    try:
        yield Cli(server, agents, write_config(tmp_path / "cluster.yaml", port=port), capsys)
    finally:
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await beat
