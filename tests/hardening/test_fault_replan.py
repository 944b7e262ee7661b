"""The host serving a deployment goes away and comes back (issue 19): while the controller
re-plans, the route it withdrew is *unavailable*, not absent. A real ``tightwad-controller``
process, a real agent serving SmolLM2-135M (in-process, over the real Register stream) and a
gateway following the controller's routes; a request every 0.3 s records what the client sees:
200 or 503 with ``Retry-After`` and an OpenAI error naming the state, never 404; /v1/models
keeps listing the model with its state; the same gateway serves again once the agent is back.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from gateway.test_gateway_watch_routes import (
    ControllerProcess,
    _deploy,
    _has_model,
    _until,
    stack,
)

from tightwad.agent.server import AgentServer
from tightwad.gateway.server import GatewayServer

__all__ = ["stack"]  # the fixture this test uses

pytestmark = [pytest.mark.cluster, pytest.mark.engine, pytest.mark.slow]

BODY = {"model": "smollm", "prompt": "The capital of France is", "max_tokens": 4}


async def _ask(http: aiohttp.ClientSession, url: str) -> tuple[int, str, str]:
    """(status, Retry-After, error message) of one completion request."""
    async with http.post(f"{url}/v1/completions", json=BODY) as r:
        body = await r.json()
        message = body.get("error", {}).get("message", "") if r.status != 200 else ""
        return r.status, r.headers.get("Retry-After", ""), message


async def test_a_withdrawn_route_is_503_with_retry_after_until_it_serves_again(
    stack: tuple[ControllerProcess, AgentServer, GatewayServer],
) -> None:
    controller, agent, gateway = stack
    url = gateway.url
    await _until("agent attached", lambda: agent.link and agent.link.attached.is_set(), 30.0)
    async with aiohttp.ClientSession() as http:
        await _deploy(controller.address)
        await _until("route listed", lambda: _has_model(http, url), 120.0)
        assert (await _ask(http, url))[0] == 200

        t0 = time.monotonic()
        await agent.stop(grace=0.5)  # the host goes away: its engine with it
        seen: list[tuple[float, int]] = []
        states: set[str] = set()
        back: AgentServer | None = None
        try:
            while time.monotonic() - t0 < 150.0:
                status, retry_after, message = await _ask(http, url)
                seen.append((round(time.monotonic() - t0, 1), status))
                assert status in (200, 503), (status, message, seen)
                if status == 503:
                    assert int(retry_after) >= 1, (retry_after, message)
                async with http.get(f"{url}/v1/models") as r:
                    models = {m["id"]: m for m in (await r.json())["data"]}
                assert "smollm" in models, seen  # listed throughout
                states.add(str(models["smollm"]["tightwad"]["state"]))
                withdrawn = any(s != "serving" for s in states)
                if back is None and (withdrawn or len(seen) > 40):
                    back = AgentServer(agent.settings)  # the host comes back
                    await back.start()
                if back is not None and status == 200 and any(c != 200 for _, c in seen):
                    break
                await asyncio.sleep(0.3)
            else:
                raise AssertionError(f"never served again: {seen}")
            first_error = next(t for t, s in seen if s != 200)
            last_error = max(t for t, s in seen if s != 200)
            print(
                f"host lost at 0.0 s: first error {first_error} s, last error {last_error} s, "
                f"served again {seen[-1][0]} s; states seen {sorted(states)}; codes {seen}"
            )
            assert 404 not in [s for _, s in seen]
        finally:
            if back is not None:
                await back.stop(grace=1.0)
