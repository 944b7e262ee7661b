"""Fixtures of the hardening tier: a cluster PKI on disk, and a capture of every log line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog

from tightwad.cli.certs import init_ca, issue_cert
from tightwad.config import TlsConfig


@dataclass
class Pki:
    """Two CAs: ``node``/``client`` are signed by the cluster CA, ``stranger`` by another."""

    node: TlsConfig
    client: TlsConfig
    stranger: TlsConfig


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    cluster = tmp_path_factory.mktemp("pki-cluster")
    other = tmp_path_factory.mktemp("pki-other")
    init_ca(cluster, name="cluster")
    init_ca(other, name="other")

    def tls(directory: Path, name: str) -> TlsConfig:
        files = issue_cert(directory, name, ["127.0.0.1", "localhost"])
        return TlsConfig(ca_file=files.ca, cert_file=files.cert, key_file=files.key)

    return Pki(
        node=tls(cluster, "node-a"), client=tls(cluster, "ctl"), stranger=tls(other, "mallory")
    )


@dataclass
class Logs:
    """Every structlog event (as JSON lines) and stdlib record emitted during a test."""

    buffer: io.StringIO
    caplog: pytest.LogCaptureFixture
    capsys: pytest.CaptureFixture[str]

    def text(self) -> str:
        out, err = self.capsys.readouterr()
        return "\n".join([self.buffer.getvalue(), self.caplog.text, out, err])

    def events(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.buffer.getvalue().splitlines() if line]


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> Iterator[Logs]:
    """Route structlog to an in-memory JSON sink (uncached) for the test; restore after."""
    saved = structlog.get_config()
    buffer = io.StringIO()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(default=repr),
        ],
        logger_factory=structlog.PrintLoggerFactory(file=buffer),
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        cache_logger_on_first_use=False,
    )
    caplog.set_level(logging.DEBUG)
    try:
        yield Logs(buffer, caplog, capsys)
    finally:
        structlog.configure(**saved)


#: what asyncio logs for a leaked task or an unretrieved exception
ASYNCIO_LEAKS = ("Task was destroyed but it is pending", "exception was never retrieved")


class _Leaks(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if any(sign in message for sign in ASYNCIO_LEAKS):
            self.seen.append(message)


@pytest.fixture
def no_asyncio_leaks() -> Iterator[None]:
    """Fail the test on any leaked task or unretrieved exception asyncio logs while it runs
    (in-process gateways and agents); garbage is collected first so destroyed tasks show."""
    import gc
    import warnings

    # Garbage of earlier tests in this process (a socket another test left) is theirs: collect
    # it now, its ResourceWarnings ignored, so that only this test's leaks count below.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    handler = _Leaks()
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    try:
        yield
        gc.collect()
    finally:
        logger.removeHandler(handler)
    assert not handler.seen, f"asyncio reported leaks: {handler.seen}"
