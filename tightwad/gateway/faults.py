"""Faults look like faults: a route that is known but not serving answers 503, never 404.

- :class:`RouteUnavailableError`: a 503 ``service_unavailable`` naming the route's state, with
  how long to wait (``retry_after_s``);
- :class:`UnavailableRoute`: the backend that stands in the route table for a route the
  controller still has a deployment for but does not publish (re-planning, starting,
  degraded, failed): ``/v1/models`` keeps listing it, a request gets the 503;
- :func:`fault_middleware`: every :class:`~tightwad.errors.UnavailableError` answered before
  the first byte carries ``Retry-After`` (the error's estimate, else
  :data:`DEFAULT_RETRY_AFTER_S`); ``/v1/models`` and ``/v1/models/{id}`` show each route's
  state in a ``tightwad`` field (``{"state": ..., "ready": ...}``).

A stream already running when its engine fails ends with the API's SSE error event (the
error's OpenAI body), then ``[DONE]``-less end of stream: the client sees why it stopped.
404 ``model_not_found`` stays for names never configured or removed on purpose (a deployment
stopped, a route taken out of the file).
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

from aiohttp import web

from tightwad.errors import UnavailableError
from tightwad.gateway.types import Backend, GenerationEvent, GenerationRequest, RouteInfo

__all__ = [
    "DEFAULT_RETRY_AFTER_S",
    "RouteUnavailableError",
    "UnavailableRoute",
    "fault_middleware",
    "route_state",
]

#: Retry-After when nobody estimated better: a re-placed engine loads a small model in seconds
DEFAULT_RETRY_AFTER_S = 5.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RouteUnavailableError(UnavailableError):
    """A known route that does not serve right now (503 with Retry-After)."""

    def __init__(self, route: str, state: str, retry_after_s: float, detail: str = "") -> None:
        why = f": {detail}" if detail else ""
        super().__init__(
            f"The model `{route}` is temporarily unavailable (state: {state}{why}); "
            f"retry after {math.ceil(retry_after_s)} s."
        )
        self.route = route
        self.state = state
        self.retry_after_s = retry_after_s


class UnavailableRoute:
    """Stands in the route table for a route that is coming back (see the module doc)."""

    def __init__(
        self,
        name: str,
        state: str,
        *,
        detail: str = "",
        retry_after_s: float = DEFAULT_RETRY_AFTER_S,
    ) -> None:
        self.name = name
        self.state = state
        self.detail = detail
        self.retry_after_s = retry_after_s

    def info(self) -> RouteInfo:
        return RouteInfo(
            name=self.name,
            target="",
            draft_mode="none",
            draft=None,
            ready=False,
            n_ctx=0,
            can_verify=False,
            details={"state": self.state, "detail": self.detail},
        )

    def error(self) -> RouteUnavailableError:
        return RouteUnavailableError(self.name, self.state, self.retry_after_s, self.detail)

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        return self._refuse()

    async def _refuse(self) -> AsyncIterator[GenerationEvent]:
        raise self.error()
        yield  # pragma: no cover - makes this an async generator

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


def route_state(backend: Backend) -> dict[str, object]:
    """The ``tightwad`` field of a model object: its state and whether it serves."""
    if isinstance(backend, UnavailableRoute):
        return {"state": backend.state, "ready": False, "retry_after_s": backend.retry_after_s}
    try:
        ready = bool(backend.info().ready)
    except Exception:
        ready = False
    return {"state": "serving" if ready else "not_ready", "ready": ready}


def _retry_after(exc: UnavailableError) -> str:
    seconds = getattr(exc, "retry_after_s", None) or DEFAULT_RETRY_AFTER_S
    return str(max(1, math.ceil(seconds)))


def fault_middleware(routes: Mapping[str, Backend]) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The middleware over ``routes`` (the live route table); innermost, so the API's own
    error and auth middlewares still see every answer."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except UnavailableError as exc:
            answer = web.json_response(exc.openai_body(), status=exc.http_status)
            answer.headers["Retry-After"] = _retry_after(exc)
            return answer
        if request.method == "GET" and request.path.startswith("/v1/models"):
            return _with_states(response, routes)
        return response

    return middleware


def _with_states(response: web.StreamResponse, routes: Mapping[str, Backend]) -> web.StreamResponse:
    if not isinstance(response, web.Response) or response.status != 200 or not response.body:
        return response
    try:
        doc = json.loads(bytes(response.body))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return response
    objects = doc.get("data") if doc.get("object") == "list" else [doc]
    for obj in objects or ():
        backend = routes.get(str(obj.get("id")))
        if backend is not None:
            obj["tightwad"] = route_state(backend)
    answer = web.json_response(doc, status=response.status)
    for key, value in response.headers.items():
        if key.lower() not in ("content-type", "content-length"):
            answer.headers[key] = value
    return answer
