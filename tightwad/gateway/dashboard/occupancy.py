"""How full each route's target engine's steps are, read from the engines for the dashboard.

Owns :class:`EngineOccupancy`. A route whose status entry does not carry the engine's batch
occupancy (``details["batch"]``) gets it here: :meth:`EngineOccupancy.refresh` asks each
distinct target engine (a route's ``spec.target`` with an async ``info()`` returning
``.batch``, i.e. :class:`~tightwad.gateway.engine_client.EngineClient`) for its ``Info`` and
keeps the :class:`~tightwad.engine.contract.BatchOccupancy` as a dict per route (a route that
reports ``details["batch"]`` itself, as the loop's routes do, is not asked). Guarantees:
one ``Info`` per engine per refresh however many routes share it; each call is bounded by
``timeout_s``; an engine that fails or is slow loses its entry (the page shows a dash), never
the refresh of the others; routes without such a target are skipped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from tightwad.logs import get_logger

__all__ = ["EngineOccupancy"]

log = get_logger(__name__)


def _reports_its_own(backend: object) -> bool:
    """Whether the route's status already carries ``details["batch"]`` (then it is not asked)."""
    try:
        details = backend.info().details  # type: ignore[attr-defined]
    except Exception:
        return False
    return isinstance(details, Mapping) and details.get("batch") is not None


def _target(backend: object) -> Any | None:
    target = getattr(getattr(backend, "spec", None), "target", None)
    if not callable(getattr(target, "info", None)) or _reports_its_own(backend):
        return None
    return target


class EngineOccupancy:
    """The latest batch occupancy of each route's target engine."""

    def __init__(self, *, timeout_s: float = 1.0) -> None:
        self.timeout_s = timeout_s
        self.latest: dict[str, dict[str, Any]] = {}

    async def _read(self, target: Any) -> dict[str, Any] | None:
        try:
            info = await asyncio.wait_for(target.info(), self.timeout_s)
        except Exception as exc:  # an engine away or slow: no numbers for it this time
            log.debug("dashboard_occupancy_failed", engine=getattr(target, "address", "?"),
                      error=repr(exc))  # fmt: skip
            return None
        batch = getattr(info, "batch", None)
        as_dict = getattr(batch, "as_dict", None)
        return dict(as_dict()) if callable(as_dict) else None

    async def refresh(self, routes: Mapping[str, object]) -> None:
        """Ask every distinct target engine of ``routes`` once; keep what each answered."""
        by_engine: dict[tuple[str, str], list[str]] = {}
        targets: dict[tuple[str, str], Any] = {}
        for name, backend in list(routes.items()):
            target = _target(backend)
            if target is None:
                continue
            key = (str(getattr(target, "address", id(target))), str(getattr(target, "model", "")))
            by_engine.setdefault(key, []).append(name)
            targets.setdefault(key, target)
        keys = list(targets)
        answers = await asyncio.gather(*(self._read(targets[k]) for k in keys))
        latest: dict[str, dict[str, Any]] = {}
        for key, answer in zip(keys, answers, strict=True):
            if answer is not None:
                for name in by_engine[key]:
                    latest[name] = answer
        self.latest = latest
