"""How inventory runs the vendor tools: an injectable async ``CommandRunner``.

Parsers never run anything; probes ask a ``CommandRunner`` for a tool's output. A missing
binary is a normal answer (``found=False``), not an exception, and so is a timeout. Tests and
support bundles use ``ReplayRunner``, which answers from recorded outputs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["CommandResult", "CommandRunner", "ReplayRunner", "SubprocessRunner"]


@dataclass(frozen=True, slots=True)
class CommandResult:
    """What running one command gave. ``returncode`` is ``None`` when it never finished."""

    found: bool
    returncode: int | None
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.found and self.returncode == 0 and not self.timed_out

    @property
    def output(self) -> str:
        """stdout and stderr together, for error messages and tools that mix them."""
        return "\n".join(part for part in (self.stdout, self.stderr) if part)

    @classmethod
    def not_found(cls) -> CommandResult:
        return cls(found=False, returncode=None)

    @classmethod
    def success(cls, stdout: str, stderr: str = "") -> CommandResult:
        return cls(found=True, returncode=0, stdout=stdout, stderr=stderr)

    @classmethod
    def failure(cls, output: str, returncode: int = 1) -> CommandResult:
        return cls(found=True, returncode=returncode, stdout=output)


class CommandRunner(Protocol):
    async def run(self, argv: Sequence[str], *, timeout_s: float) -> CommandResult:
        """Run ``argv``; never raise for a missing binary, a failure or a timeout."""
        ...


class SubprocessRunner:
    """Runs commands as child processes with ``LC_ALL=C`` (stable number formats)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = {**os.environ, "LC_ALL": "C", **(env or {})}

    async def run(self, argv: Sequence[str], *, timeout_s: float) -> CommandResult:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._env,
            )
        except (FileNotFoundError, NotADirectoryError):
            return CommandResult.not_found()
        except PermissionError as exc:
            return CommandResult(found=True, returncode=None, stderr=str(exc))
        try:
            async with asyncio.timeout(timeout_s):
                out, err = await proc.communicate()
        except TimeoutError:
            await _kill(proc)
            return CommandResult(found=True, returncode=None, timed_out=True)
        except asyncio.CancelledError:
            await _kill(proc)
            raise
        return CommandResult(
            found=True,
            returncode=proc.returncode,
            stdout=out.decode("utf-8", errors="replace"),
            stderr=err.decode("utf-8", errors="replace"),
        )


async def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    await proc.wait()


class ReplayRunner:
    """Answers from recorded outputs keyed by the full command line; others are 'not found'.

    ``calls`` records every command asked for, so tests can assert which tools ran.
    """

    def __init__(self, answers: Mapping[str, CommandResult]) -> None:
        self._answers = dict(answers)
        self.calls: list[str] = []

    async def run(self, argv: Sequence[str], *, timeout_s: float) -> CommandResult:
        line = " ".join(argv)
        self.calls.append(line)
        return self._answers.get(line, CommandResult.not_found())
