"""What ``tightwad up`` prints when it serves: the dashboard's URL next to the ``curl``."""

from __future__ import annotations

from tightwad.cli.up import banner

URL = "http://127.0.0.1:8088"


def test_the_banner_gives_the_dashboard_url_next_to_the_curl() -> None:
    lines = banner(URL, "smollm2-135m", "ngram", api_key=False).splitlines()
    assert lines[0] == f"Tightwad is serving 'smollm2-135m' at {URL}/v1 (drafting: ngram)"
    curl = next(i for i, line in enumerate(lines) if line.strip().startswith("curl"))
    dash = next(i for i, line in enumerate(lines) if line.startswith("Dashboard: "))
    assert dash == curl + 1
    assert lines[dash] == f"Dashboard: {URL}/ in a browser"
    assert "Authorization" not in lines[curl]


def test_with_a_key_the_banner_says_the_dashboard_asks_for_it() -> None:
    text = banner(URL, "m", "none", api_key=True)
    dash = next(line for line in text.splitlines() if line.startswith("Dashboard: "))
    assert dash.startswith(f"Dashboard: {URL}/ ") and "API key" in dash
    assert "Authorization: Bearer $TIGHTWAD_API_KEY" in text
