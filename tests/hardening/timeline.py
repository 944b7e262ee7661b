"""What a client sees through a fault, probe by probe: :class:`Prober` sends one small request
every ``period_s`` from before a kill until the service answers again, recording (seconds since
the kill, status code or error kind), and checks the client's side of issue 19: only 200 or
503 (``Retry-After``, an OpenAI error body) — a dead gateway's port refused — never a 404 for a
configured route, serving again within a (generous) bound. :meth:`Prober.report` is the one
``TIMELINE`` line each kill test prints for the issue's closing note.

Each probe opens a fresh connection (``force_close``), so a killed gateway shows as
``refused``, not as a kept-alive socket that broke.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import aiohttp
import pytest

#: time to serve again after a kill (or a restart the test does): a bound, not a speed target
SERVE_AGAIN_S = 90.0

#: error kinds (besides HTTP status codes) a probe can end with
REFUSED, DISCONNECTED, TIMEOUT = "refused", "disconnected", "timeout"


@dataclass(frozen=True)
class Probe:
    sent: float  # seconds since the kill (negative: before it)
    at: float  # when the answer (or the error) came
    outcome: int | str  # the HTTP status, or an error kind
    retry_after: str = ""
    error: Mapping[str, object] | None = None  # the OpenAI error object of a non-200
    text: str = ""  # the answer's text of a 200
    listed: str | None = None  # the route's state in /v1/models ("absent" if missing)


@dataclass
class Prober:
    """Probe ``url`` every ``period_s`` (one at a time); :meth:`kill` marks the fault."""

    url: str
    body: Mapping[str, object]
    api_key: str | None = None
    path: str = "/v1/chat/completions"
    period_s: float = 0.5
    timeout_s: float = 60.0
    list_model: str | None = None  # also GET /v1/models and record this route's state
    probes: list[Probe] = field(default_factory=list)
    killed_at: float | None = None
    _task: asyncio.Task[None] | None = None

    # -- running -------------------------------------------------------------------------

    async def __aenter__(self) -> Prober:
        self._task = asyncio.create_task(self._run())
        await self.wait_for(lambda p: p.outcome == 200, "a first 200 before the fault")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def kill(self) -> None:
        """Mark the moment of the fault (call it right before the kill)."""
        self.killed_at = time.monotonic()

    def _now(self) -> float:
        """Seconds since the kill; -1 before it."""
        return -1.0 if self.killed_at is None else time.monotonic() - self.killed_at

    async def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(
            timeout=timeout, connector=connector, headers=headers
        ) as http:
            while True:
                start = time.monotonic()
                self.probes.append(await self._probe(http))
                await asyncio.sleep(max(0.0, self.period_s - (time.monotonic() - start)))

    async def _probe(self, http: aiohttp.ClientSession) -> Probe:
        sent = self._now()
        try:
            async with http.post(f"{self.url}{self.path}", json=self.body) as r:
                body = await r.json(content_type=None)
                status, retry_after = r.status, r.headers.get("Retry-After", "")
        except aiohttp.ClientConnectorError as exc:
            refused = getattr(exc.os_error, "errno", None) == errno.ECONNREFUSED
            return Probe(sent, self._now(), REFUSED if refused else type(exc).__name__)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            return Probe(sent, self._now(), DISCONNECTED)
        except TimeoutError:
            return Probe(sent, self._now(), TIMEOUT)
        listed = await self._listed(http) if self.list_model else None
        if status != 200:
            error = body.get("error") if isinstance(body, dict) else None
            return Probe(sent, self._now(), status, retry_after, error or {}, listed=listed)
        choice = body["choices"][0]
        text = choice["message"]["content"] if "message" in choice else choice["text"]
        return Probe(sent, self._now(), 200, text=text or "", listed=listed)

    async def _listed(self, http: aiohttp.ClientSession) -> str:
        try:
            async with http.get(f"{self.url}/v1/models") as r:
                models = {m["id"]: m for m in (await r.json())["data"]}
        except (aiohttp.ClientError, TimeoutError) as exc:
            return type(exc).__name__
        if self.list_model not in models:
            return "absent"
        return str(models[self.list_model].get("tightwad", {}).get("state", "listed"))

    async def wait_for(self, done, what: str, timeout_s: float = SERVE_AGAIN_S) -> None:  # type: ignore[no-untyped-def]
        """Until a probe recorded after the last wait satisfies ``done``."""
        start = len(self.probes)
        async with asyncio.timeout(timeout_s):
            while not any(done(p) for p in self.probes[start:]):
                assert self._task is not None and not self._task.done(), self._task
                await asyncio.sleep(0.05)

    async def serving_again(self, *, errors: bool = True, timeout_s: float = SERVE_AGAIN_S):  # type: ignore[no-untyped-def]
        """Until a 200 to a probe sent after the kill (and, with ``errors``, after an error);
        fails (with what was seen) past ``timeout_s`` from the kill."""
        assert self.killed_at is not None, "kill() was not called"
        left = timeout_s - self._now()
        try:
            async with asyncio.timeout(max(left, 0.0)):
                while self.recovered(errors) is None:
                    assert self._task is not None and not self._task.done(), self._task
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(
                f"not serving again {timeout_s:.0f} s after the kill: {self.codes()}"
            ) from None

    # -- what was seen -------------------------------------------------------------------

    def after(self) -> list[Probe]:
        return [p for p in self.probes if p.sent >= 0 or p.at >= 0]

    def errors(self) -> list[Probe]:
        return [p for p in self.after() if p.outcome != 200]

    def recovered(self, errors: bool = True) -> Probe | None:
        """The first 200 sent after the kill and after the last error so far."""
        errs = self.errors()
        if errors and not errs:
            return None
        last = errs[-1].at if errs else 0.0
        return next((p for p in self.after() if p.outcome == 200 and p.sent >= last), None)

    def codes(self) -> str:
        """Runs of outcomes in order, e.g. ``200x4 503x12 200x1``."""
        runs = itertools.groupby(p.outcome for p in self.probes)
        return " ".join(f"{k}x{len(list(g))}" for k, g in runs)

    def check(self, allowed: Collection[int | str] = (200, 503), *, errors: bool = True) -> None:
        """Every outcome is allowed (a 503 with Retry-After >= 1 and an OpenAI error body),
        none is a 404, errors came (if ``errors``) and then a 200 within the bound."""
        seen = self.codes()
        assert 404 not in {p.outcome for p in self.probes}, f"a 404 for a configured route: {seen}"
        for p in self.probes:
            assert p.outcome in allowed, (p, seen)
            if p.outcome == 503:
                assert p.retry_after.isdigit() and int(p.retry_after) >= 1, (p, seen)
                assert p.error and p.error.get("message") and p.error.get("type"), (p, seen)
        if errors:
            assert self.errors(), f"the client never saw the fault: {seen}"
        else:
            assert not self.errors(), f"the client saw errors: {seen}"
        back = self.recovered(errors)
        assert back is not None, f"never served again: {seen}"
        assert back.at < SERVE_AGAIN_S, (back, seen)

    def report(self, kill: str) -> str:
        """The ``TIMELINE`` line (printed, and returned)."""
        errs, back = self.errors(), self.recovered(bool(self.errors()))
        first = f"{errs[0].at:.1f} s" if errs else "none"
        last = f"{errs[-1].at:.1f} s" if errs else "none"
        again = f"{back.at:.1f} s" if back else "never"
        line = (
            f"TIMELINE {kill}: first error {first}, last error {last}, serving again {again}; "
            f"codes {self.codes()}"
        )
        print(line)
        return line


#: The marks of every fault test: leaks in this process (in-process gateways and agents) are
#: errors (the ``no_asyncio_leaks`` fixture of conftest.py, ResourceWarning, unraisables).
LEAKS_ARE_ERRORS = [
    pytest.mark.usefixtures("no_asyncio_leaks"),
    pytest.mark.filterwarnings("error::ResourceWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]
