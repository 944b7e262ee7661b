"""The one HTTP client of the adapters: JSON requests and streamed lines over aiohttp.

Guarantees: every request has a deadline; errors of aiohttp and of the server are translated
here into :mod:`tightwad.errors` (unreachable or 5xx -> UnavailableError, 4xx ->
InvalidRequestError / NotFoundError, too slow -> DeadlineError), with the server named in the
message; a stream that is abandoned (task cancelled, generator closed) closes its connection,
which is how a server learns to stop generating.

With a :class:`~tightwad.url_policy.UrlPolicy`, every connection goes through the policy's
connector (each resolved and each dialled address re-checked: no DNS rebinding, no redirect to
a forbidden host or scheme); a refusal is an UnavailableError that names the URL and the rule.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp

from tightwad.errors import (
    DeadlineError,
    InvalidRequestError,
    NotFoundError,
    TightwadError,
    UnavailableError,
)
from tightwad.url_policy import BlockedAddressError, UrlPolicy

__all__ = ["HttpClient"]

_STALE = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


class HttpClient:
    """A connection pool to one server (base URL), with an optional bearer token."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        stream_idle_s: float = 120.0,
        what: str = "server",
        policy: UrlPolicy | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.what = what
        self._policy = policy
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._stream_timeout = aiohttp.ClientTimeout(total=None, sock_read=stream_idle_s)
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # Below the 5 s idle timeout of common servers (cpp-httplib, uvicorn), so a
            # pooled connection is never one the server has just closed.
            pool: dict[str, Any] = {"limit": 32, "keepalive_timeout": 2.0}
            if self._policy is not None:
                self._session = self._policy.session(headers=self._headers, connector_kwargs=pool)
            else:
                self._session = aiohttp.ClientSession(
                    headers=self._headers, connector=aiohttp.TCPConnector(**pool)
                )
        return self._session

    def _failed(self, path: str, exc: BaseException) -> UnavailableError:
        """The UnavailableError for a failed connection; a policy refusal says so."""
        cause = getattr(exc, "os_error", None)
        if isinstance(cause, BlockedAddressError):
            return UnavailableError(
                f"{self._name(path)} refused by the upstream URL policy: {cause.strerror}"
            )
        if isinstance(exc, aiohttp.InvalidUrlClientError):
            return UnavailableError(
                f"{self._name(path)} refused by the upstream URL policy: {exc.description}"
            )
        return UnavailableError(f"{self._name(path)} failed: {exc!r}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _name(self, path: str) -> str:
        return f"{self.what} at {self.base_url}{path}"

    async def _raise_for(self, resp: aiohttp.ClientResponse, path: str) -> None:
        if resp.status < 400:
            return
        text = await resp.text(errors="replace")
        detail = _error_message(text)
        where = self._name(path)
        if resp.status == 404:
            raise NotFoundError(f"{where}: not found ({detail})")
        if resp.status in (400, 422):
            raise InvalidRequestError(f"{where} refused the request: {detail}")
        raise UnavailableError(f"{where} answered HTTP {resp.status}: {detail}")

    async def get_json(self, path: str) -> Any:
        return await self._request("GET", path, None)

    async def post_json(self, path: str, body: Mapping[str, Any]) -> Any:
        return await self._request("POST", path, body)

    async def _request(self, method: str, path: str, body: Mapping[str, Any] | None) -> Any:
        for attempt in range(2):
            try:
                async with self._http().request(
                    method, self.base_url + path, json=body, timeout=self._timeout
                ) as resp:
                    await self._raise_for(resp, path)
                    return await resp.json(content_type=None)
            except TightwadError:
                raise
            except TimeoutError as exc:
                raise DeadlineError(f"{self._name(path)} did not answer in time") from exc
            except _STALE as exc:
                if attempt == 0 and not _blocked(exc):
                    continue  # a pooled connection the server had closed: retry once
                raise self._failed(path, exc) from exc
            except (aiohttp.ClientError, ValueError) as exc:
                raise self._failed(path, exc) from exc
        raise AssertionError("unreachable")

    async def stream_lines(self, path: str, body: Mapping[str, Any]) -> AsyncIterator[bytes]:
        """POST ``body`` and yield each non-empty line of the streamed answer (SSE ``data:``
        lines and JSON lines alike); leaving the loop closes the connection."""
        started = False
        for attempt in range(2):
            try:
                async with self._http().post(
                    self.base_url + path, json=body, timeout=self._stream_timeout
                ) as resp:
                    await self._raise_for(resp, path)
                    started = True
                    async for raw in resp.content:
                        line = raw.strip()
                        if line:
                            yield line
                return
            except TightwadError:
                raise
            except TimeoutError as exc:
                raise DeadlineError(f"{self._name(path)} stalled mid-stream") from exc
            except _STALE as exc:
                if attempt == 0 and not started and not _blocked(exc):
                    continue  # a pooled connection the server had closed: retry once
                raise self._failed(path, exc) from exc
            except aiohttp.ClientError as exc:
                raise self._failed(path, exc) from exc

    async def stream_json(self, path: str, body: Mapping[str, Any]) -> AsyncIterator[Any]:
        """Like :meth:`stream_lines`, decoding each line as JSON (an SSE ``data:`` prefix is
        stripped; ``[DONE]`` ends the stream)."""
        async for line in self.stream_lines(path, body):
            if line.startswith(b"data:"):
                line = line[5:].strip()
            elif line.startswith((b"event:", b"id:", b":")):
                continue
            if line == b"[DONE]":
                return
            try:
                yield json.loads(line)
            except ValueError as exc:
                raise UnavailableError(
                    f"{self._name(path)} streamed a line that is not JSON: {line[:200]!r}"
                ) from exc


def _blocked(exc: BaseException) -> bool:
    return isinstance(getattr(exc, "os_error", None), BlockedAddressError)


def _error_message(text: str) -> str:
    """The ``error.message`` of an OpenAI/llama.cpp-style error body, else the text."""
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()[:500] or "no detail"
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and err.get("message"):
        return str(err["message"])
    if isinstance(err, str):
        return err
    return text.strip()[:500]
