"""OpenAI's Responses API (``POST /v1/responses``) over the gateway's chat pipeline.

- :mod:`.request`: a Responses body into the gateway's chat request (stateless);
- :mod:`.render`: the pipeline's events into Responses events and objects;
- :mod:`.handler`: the aiohttp handler between them.
"""

from __future__ import annotations

from aiohttp import web

__all__ = ["add_routes"]


def add_routes(app: web.Application) -> None:
    """Register the Responses API's routes on the gateway's ``app`` (built by
    :func:`tightwad.gateway.api.create_app`)."""
    # Imported here: api.py imports this package, and the handler imports the pipeline.
    from tightwad.gateway.responses.handler import create_response

    app.router.add_post("/v1/responses", create_response)
