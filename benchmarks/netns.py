"""Network namespaces joined to this one by veth links, as "other hosts" for the ``pool``
scenario, and the ways to add latency on those links.

Pure parts (tests call them): :func:`plan_links` names the namespaces, veth ends and /30
addresses of one run; :func:`setup_commands`, :func:`teardown_commands` and
:func:`netem_commands` are the ``ip``/``tc`` argv lists that build, remove and delay them;
:func:`preflight` says why this machine cannot run them (not root, no ``ip``).

:class:`Namespaces` applies a plan and always removes it: on exit, on error, on cancellation
(Ctrl-C under ``asyncio.run``) — it also kills whatever still runs inside the namespaces. Every
name carries the owning process id (``twb<pid>w<i>``), so a namespace left by a run that was
SIGKILLed is recognised and removed by the next run (:func:`stale_namespaces`), and two runs
never touch each other's.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

__all__ = [
    "Link",
    "Namespaces",
    "netem_commands",
    "plan_links",
    "preflight",
    "setup_commands",
    "stale_namespaces",
    "teardown_commands",
]

_PREFIX = "twb"
_NAME = re.compile(rf"^{_PREFIX}(\d+)w(\d+)$")


@dataclass(frozen=True, slots=True)
class Link:
    """One namespace and the veth pair joining it to ours: ``host_if`` (here, ``host_ip``) and
    ``ns_if`` (inside, ``ns_ip``), a /30 of their own."""

    ns: str
    host_if: str
    ns_if: str
    host_ip: str
    ns_ip: str


def plan_links(count: int, owner_pid: int) -> list[Link]:
    """``count`` links for the run of process ``owner_pid``. Interface names stay within the
    kernel's 15 characters; addresses are 10.213.x.y/30, x and y from the pid and the index."""
    if not 1 <= count <= 60:
        raise ValueError(f"1..60 namespaces, got {count}")
    third = owner_pid % 250
    links = []
    for i in range(1, count + 1):
        tag = f"{_PREFIX}{owner_pid}w{i}"
        base = 4 * i
        links.append(
            Link(
                ns=tag,
                host_if=f"{tag}h"[-15:],
                ns_if=f"{tag}n"[-15:],
                host_ip=f"10.213.{third}.{base + 1}",
                ns_ip=f"10.213.{third}.{base + 2}",
            )
        )
    return links


def setup_commands(links: Sequence[Link]) -> list[list[str]]:
    out: list[list[str]] = []
    for link in links:
        out += [
            ["ip", "netns", "add", link.ns],
            ["ip", "link", "add", link.host_if, "type", "veth", "peer", "name", link.ns_if],
            ["ip", "link", "set", link.ns_if, "netns", link.ns],
            ["ip", "addr", "add", f"{link.host_ip}/30", "dev", link.host_if],
            ["ip", "link", "set", link.host_if, "up"],
            ["ip", "-n", link.ns, "addr", "add", f"{link.ns_ip}/30", "dev", link.ns_if],
            ["ip", "-n", link.ns, "link", "set", link.ns_if, "up"],
            ["ip", "-n", link.ns, "link", "set", "lo", "up"],
        ]
    return out


def teardown_commands(links: Sequence[Link]) -> list[list[str]]:
    """Deleting a namespace deletes its veth end and so the pair; the ``link del`` is for a
    setup that failed before the move into the namespace."""
    out: list[list[str]] = []
    for link in links:
        out += [["ip", "netns", "del", link.ns], ["ip", "link", "del", link.host_if]]
    return out


def netem_commands(links: Sequence[Link], delay_ms: float, op: str = "replace") -> list[list[str]]:
    """``tc netem`` delay of ``delay_ms`` on the egress of both veth ends: one-way delay per
    direction, round trip + 2 x ``delay_ms``."""
    if op not in ("add", "replace", "change", "del"):
        raise ValueError(op)
    tail = [] if op == "del" else ["netem", "delay", f"{delay_ms}ms"]
    out: list[list[str]] = []
    for link in links:
        out.append(["tc", "qdisc", op, "dev", link.host_if, "root", *tail])
        inside = ["ip", "netns", "exec", link.ns]
        out.append([*inside, "tc", "qdisc", op, "dev", link.ns_if, "root", *tail])  # fmt: skip
    return out


def preflight(
    euid: int | None = None, which: Callable[[str], str | None] = shutil.which
) -> list[str]:
    """Why namespaces cannot be made here (empty: they can)."""
    problems = []
    euid = os.geteuid() if euid is None else euid
    if euid != 0:
        problems.append(
            "network namespaces and veth links need root (run as root, or in a container "
            "with CAP_NET_ADMIN and CAP_SYS_ADMIN)"
        )
    if which("ip") is None:
        problems.append("no `ip` command (iproute2) on PATH")
    return problems


def stale_namespaces(names: Sequence[str], alive: Callable[[int], bool]) -> list[str]:
    """Our namespaces among ``names`` whose owning process is gone."""
    out = []
    for name in names:
        m = _NAME.match(name)
        if m and not alive(int(m.group(1))):
            out.append(name)
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.strip() or proc.returncode}")
    return proc


def _list_namespaces() -> list[str]:
    out = _run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _kill_inside(ns: str) -> None:
    pids = _run(["ip", "netns", "pids", ns], check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError, PermissionError):
            os.kill(int(pid), signal.SIGKILL)


class Namespaces:
    """Build ``plan_links(count, pid)`` on enter; on exit kill what runs inside and remove
    everything, whatever happened. Synchronous (a handful of ``ip`` calls)."""

    def __init__(self, count: int, owner_pid: int | None = None) -> None:
        self.links = plan_links(count, owner_pid or os.getpid())
        self.netem: bool | None = None

    def __enter__(self) -> Namespaces:
        for name in stale_namespaces(_list_namespaces(), _pid_alive):
            _kill_inside(name)
            _run(["ip", "netns", "del", name], check=False)
        try:
            for argv in setup_commands(self.links):
                _run(argv)
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        for link in self.links:
            _kill_inside(link.ns)
        for argv in teardown_commands(self.links):
            _run(argv, check=False)

    def probe_netem(self) -> tuple[bool, str]:
        """Whether ``tc netem`` works on these links (tried, then removed)."""
        if shutil.which("tc") is None:
            self.netem = False
            return False, "no `tc` command"
        probe = _run(netem_commands(self.links[:1], 0.0, "add")[0], check=False)
        if probe.returncode == 0:
            _run(netem_commands(self.links[:1], 0.0, "del")[0], check=False)
            self.netem = True
            return True, ""
        self.netem = False
        return False, probe.stderr.strip()

    def set_netem(self, delay_ms: float) -> None:
        for argv in netem_commands(self.links, delay_ms, "replace"):
            _run(argv)

    def exec_prefix(self, link: Link) -> list[str]:
        return ["ip", "netns", "exec", link.ns]

    def __iter__(self) -> Iterator[Link]:
        return iter(self.links)
