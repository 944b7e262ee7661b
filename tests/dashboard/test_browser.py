"""The dashboard in a real browser over a real gateway on SmolLM2-135M (issue 16).

The gateway serves two n-gram routes on one engine: one always drafts (adaptive off), so a
repetitive reply has accepted draft tokens and target corrections to colour; the other is
calibrated at start (its verify costs by width, its drafting verdict). Checked: the page loads
with no console error; the route table shows the live route; a playground chat streams text coloured
by origin with round boundaries and shows the reply's stats; the tokens-per-second chart and
the verify-cost chart fill after requests through the OpenAI API; with an API key the page
shows nothing until the key is entered, and a wrong key is refused. Screenshots of each view
land in docs/img/ with TIGHTWAD_SCREENSHOTS=1 (a temporary folder otherwise).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tightwad.agent.server import AgentServer, AgentSettings
from tightwad.engine.engine_config import EngineConfig
from tightwad.gateway.api import GatewaySettings
from tightwad.gateway.engine_client import EngineClient
from tightwad.gateway.loop import RouteSpec
from tightwad.gateway.server import GatewayServer

pytestmark = [pytest.mark.engine, pytest.mark.slow]

ROUTE = "smollm"
AUTO = "smollm-auto"
KEY = "sk-dashboard-test"
DASH = "\u2013"  # what the page shows for a number it does not have
REPEAT = "Repeat exactly, four times: alpha beta gamma delta epsilon"


@pytest.fixture
async def agent(smollm_path: Path) -> AsyncIterator[AgentServer]:
    # Continuous batching on (whatever the default): the route row shows its occupancy.
    cfg = EngineConfig(model_id=ROUTE, path=smollm_path, ctx_size=2048, max_sessions=8, threads=2,
                       batch_steps=True)  # fmt: skip
    server = AgentServer(AgentSettings(listen="127.0.0.1:0", engines=(cfg,)))
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace=0.5)


@pytest.fixture
async def gateway(agent: AgentServer) -> AsyncIterator[Callable[..., Any]]:
    servers: list[GatewayServer] = []

    async def start(api_key: str | None = None, **kwargs: Any) -> GatewayServer:
        target = EngineClient(agent.address, ROUTE)
        # Always drafts (colours to see); calibrated and adaptive (verify costs, a verdict).
        always = RouteSpec(name=ROUTE, target=target, draft_mode="ngram", adaptive=False)
        auto = RouteSpec(name=AUTO, target=target, draft_mode="ngram")
        gw = GatewayServer([always, auto], GatewaySettings(api_key=api_key), port=0, **kwargs)
        await gw.start()
        servers.append(gw)
        return gw

    try:
        yield start
    finally:
        for gw in servers:
            await gw.stop()


async def _chat(url: str, key: str = "unused", n: int = 3, route: str = ROUTE) -> None:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    try:
        for _ in range(n):
            await client.chat.completions.create(
                model=route, messages=[{"role": "user", "content": REPEAT}], max_tokens=48,
                temperature=0,
            )  # fmt: skip
    finally:
        await client.close()


async def _cell(row: Any, col: str) -> str:
    return str(await row.locator(f'[data-col="{col}"]').inner_text()).strip()


async def _snapshot(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(url + "/dashboard/api/snapshot") as r:
        assert r.status == 200
        return dict(await r.json())


async def _number(page: Any, selector: str, attribute: str) -> float:
    return float(await page.get_attribute(selector, attribute) or 0)


async def test_page_routes_playground_and_charts_live(gateway: Any, browser: Any) -> None:
    gw = await gateway()
    b = await browser()
    page = b.page
    await page.goto(gw.url + "/")
    row = page.locator(f'#route-table tr[data-route="{ROUTE}"]')
    await row.wait_for()
    assert await page.locator("#live").inner_text() == "live"
    cells = await row.locator("td").all_inner_texts()
    assert cells[0].startswith(ROUTE) and await _cell(row, "mode") == "ngram", cells
    assert "smollm" in (await _cell(row, "target")).lower(), cells
    # Drafting on, and why (the loop has measured nothing yet: adaptive off, no calibration).
    assert (await _cell(row, "drafting")).startswith("on"), cells
    assert await _cell(row, "rounds") == DASH  # nothing verified yet
    await b.screenshot("dashboard-routes.png", full_page=False)

    # The playground: a streamed reply, every group of tokens coloured by where it came from.
    await page.locator("#chat-message").fill(REPEAT)
    await page.locator("#chat-max-tokens").fill("48")
    await page.locator("#chat-send").click()
    await page.locator('#chat-stats [data-stat="finish"]').wait_for(timeout=120_000)
    spans = page.locator("#chat-log .msg.assistant .tok")
    origins = await spans.evaluate_all("els => els.map(e => e.classList[1])")
    text = "".join(await spans.all_inner_texts())
    assert "beta" in text.lower(), text
    assert set(origins) <= {"draft", "target", "plain", "forced"}
    assert "draft" in origins and "target" in origins, origins
    rounds = await spans.evaluate_all("els => els.map(e => Number(e.dataset.round))")
    assert max(rounds) >= 1 and page.locator(".tok.round-start") is not None
    assert await page.locator("#chat-log .tok.round-start").count() >= 1
    accepted = await page.locator('#chat-stats [data-stat="accepted"] dd').inner_text()
    assert int(accepted) > 0
    # Colours differ by origin (the style sheet applies).
    colours = await page.evaluate(
        """() => ['draft','target'].map(o => getComputedStyle(
            document.querySelector('#chat-log .tok.' + o)).backgroundColor)"""
    )
    assert colours[0] != colours[1], colours
    await b.element("dashboard-playground.png", "#playground")

    # Requests through the OpenAI API fill the route's chart (pushed live, no reload).
    chart = f'#route-charts [data-chart="{ROUTE}"] svg'
    await page.locator(chart).wait_for()
    before = await _number(page, chart, "data-sum")
    await _chat(gw.url)
    await page.wait_for_function(
        """([sel, before]) => Number(document.querySelector(sel).dataset.sum) > before""",
        arg=[chart, before], timeout=20_000,
    )  # fmt: skip
    acceptance = await _cell(row, "acceptance")
    assert acceptance.endswith("%"), acceptance  # shown once drafts were verified
    # The API's verify rounds (the metrics' per-route counter) are on the route's row, and
    # equal what the gateway reports, with the mean accepted length 1 + accepted / rounds.
    await page.wait_for_function(
        "sel => Number(document.querySelector(sel)?.dataset.rounds) > 0",
        arg=f'#route-table tr[data-route="{ROUTE}"] [data-col="rounds"]',
    )
    snap = await _snapshot(gw.url)
    totals = next(r for r in snap["routes"] if r["name"] == ROUTE)["totals"]
    shown = int(await row.locator('[data-col="rounds"]').get_attribute("data-rounds") or 0)
    assert 0 < shown <= totals["rounds"], (shown, totals)
    assert float(await _cell(row, "mean_accepted")) > 1.0
    # Batch occupancy: the requests running on the route now (when the loop reports them) and
    # the engine's shared decodes.
    batch = next(r for r in snap["routes"] if r["name"] == ROUTE)["batch"]
    cell = f'#route-table tr[data-route="{ROUTE}"] [data-col="batch"]'
    if batch["live_runs"] is not None:  # the requests are over: the page shows none running
        await page.wait_for_function(
            "sel => document.querySelector(sel).textContent.startsWith('0 running')", arg=cell
        )
    # The engine batches: the page reads its occupancy (the shared decodes it ran).
    await page.wait_for_function(
        "sel => document.querySelector(sel).textContent.includes('tokens per step')", arg=cell
    )
    batch = next(r for r in (await _snapshot(gw.url))["routes"] if r["name"] == ROUTE)["batch"]
    assert batch["batching"] is True and batch["decodes"] > 0, batch
    assert batch["sessions_per_step"] >= 1.0 and batch["tokens_per_step"] >= 1.0, batch
    verify = f'#verify-charts [data-chart="{AUTO}"] svg'
    await page.locator(verify).wait_for()
    assert await _number(page, verify, "data-points") >= 2
    # Once the calibrated route served, its verdict gives the measured numbers as the reason.
    await _chat(gw.url, n=1, route=AUTO)
    why = f'#route-table tr[data-route="{AUTO}"] [data-col="drafting"] .why'
    await page.wait_for_function(
        "sel => document.querySelector(sel).textContent.includes('plain step')", arg=why
    )
    await b.element("dashboard-charts.png", "#routes")
    await b.element("dashboard-verify.png", "#verify")
    assert b.console_errors() == []

    # Phone-sized and dark: the same page, readable.
    phone = await browser(width=390, height=844, dark=True)
    await phone.page.goto(gw.url + "/")
    await phone.page.locator(f'#route-table tr[data-route="{ROUTE}"]').wait_for()
    width = await phone.page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390 + 1, f"the page scrolls sideways on a phone: {width}px"
    await phone.screenshot("dashboard-phone-dark.png", full_page=True)
    assert phone.console_errors() == []


async def test_with_an_api_key_the_page_shows_nothing_until_the_key(
    gateway: Any, browser: Any
) -> None:
    gw = await gateway(api_key=KEY)
    async with aiohttp.ClientSession() as http:
        for path in ("/dashboard/api/snapshot", "/dashboard/api/live"):
            async with http.get(gw.url + path) as r:
                assert r.status == 401, path
        async with http.post(gw.url + "/dashboard/api/chat", json={}) as r:
            assert r.status == 401
        async with http.get(gw.url + "/") as r:  # the page itself holds no data
            assert r.status == 200 and "text/html" in r.headers["Content-Type"]
    b = await browser()
    page = b.page
    await page.goto(gw.url + "/")
    await page.locator("#login").wait_for(state="visible")
    assert await page.locator("#main").is_hidden()
    assert await page.locator("#route-table tr[data-route]").count() == 0
    await page.locator("#login-key").fill("sk-wrong")
    await page.locator("#login-submit").click()
    await page.locator("#login-error").wait_for(state="visible")
    assert "refused" in await page.locator("#login-error").inner_text()
    assert await page.locator("#main").is_hidden()
    await b.screenshot("dashboard-login.png")
    await page.locator("#login-key").fill(KEY)
    await page.locator("#login-submit").click()
    await page.locator(f'#route-table tr[data-route="{ROUTE}"]').wait_for()
    await page.wait_for_function("document.querySelector('#live').textContent === 'live'")
    # Kept for the session: a reload does not ask again.
    await page.reload()
    await page.locator(f'#route-table tr[data-route="{ROUTE}"]').wait_for()
    assert await page.locator("#login").is_hidden()
    # Only the refused fetches of the wrong key (and none other) were errors.
    assert all("401" in e for e in b.console_errors()), b.console_errors()
    await asyncio.sleep(0)
