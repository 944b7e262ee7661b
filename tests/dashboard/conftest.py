"""Fixtures of the dashboard's browser tests: a real gateway over a real SmolLM2-135M engine,
and a real browser (Playwright driving Debian's chromium; Playwright cannot download its own
browsers here) that records every console error and uncaught page error."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("TIGHTWAD_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
HAVE_CHROMIUM = Path(CHROMIUM).exists()
# The README's screenshots are refreshed with TIGHTWAD_SCREENSHOTS=1; a plain test run writes
# its screenshots to a temporary folder and leaves the checkout clean.
SCREENSHOTS = (
    Path(__file__).resolve().parents[2] / "docs" / "img"
    if os.environ.get("TIGHTWAD_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "tightwad-dashboard-screenshots"
)


@dataclass
class Browser:
    """One page of a real chromium, and what it complained about."""

    page: object
    errors: list[str] = field(default_factory=list)

    def console_errors(self) -> list[str]:
        return list(self.errors)

    async def screenshot(self, name: str, **kwargs: object) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / name
        await self.page.screenshot(path=str(path), **kwargs)  # type: ignore[attr-defined]
        return path

    async def element(self, name: str, selector: str) -> Path:
        """A screenshot of one view (the element, scrolled into sight)."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / name
        await self.page.locator(selector).screenshot(path=str(path))  # type: ignore[attr-defined]
        return path


@pytest.fixture
async def browser() -> AsyncIterator[Callable[..., object]]:
    """``page = await browser(width=1280, height=900, dark=False)``: a fresh page each call."""
    if not HAVE_CHROMIUM:
        pytest.fail(f"chromium not found at {CHROMIUM}: the test command installs it")
    from playwright.async_api import async_playwright

    pw = await async_playwright().start()
    chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    contexts = []

    async def new(width: int = 1280, height: int = 900, dark: bool = False) -> Browser:
        context = await chromium.new_context(
            viewport={"width": width, "height": height},
            color_scheme="dark" if dark else "light",
            device_scale_factor=1,
        )
        contexts.append(context)
        page = await context.new_page()
        b = Browser(page)
        page.on("console", lambda m: b.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: b.errors.append(f"pageerror: {exc}"))
        return b

    try:
        yield new
    finally:
        for context in contexts:
            await context.close()
        await chromium.close()
        await pw.stop()
