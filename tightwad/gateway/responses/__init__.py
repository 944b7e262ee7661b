"""OpenAI's Responses API (``POST /v1/responses``) over the gateway's chat pipeline."""

from __future__ import annotations

from aiohttp import web

__all__ = ["add_routes"]


def add_routes(app: web.Application) -> None:
    """Register the Responses API's routes on the gateway's ``app`` (built by
    :func:`tightwad.gateway.api.create_app`)."""
    del app  # the endpoint is being built (issue 17); until then /v1/responses is 404
