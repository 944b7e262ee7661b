"""LiteLLM's ``openai/`` provider against a live gateway on Qwen2.5-Coder-1.5B: completion,
stream and tools. Skipped where the package is not installed."""

from __future__ import annotations

import json
import os

import pytest

from .conftest import Live

# LiteLLM fetches its model price list from the network at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
litellm = pytest.importorskip("litellm")

pytestmark = [pytest.mark.engine, pytest.mark.slow]

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def kw(live: Live) -> dict[str, object]:
    return {
        "model": f"openai/{live.model}",
        "api_base": live.base_url,
        "api_key": live.api_key,
        "temperature": 0,
        "num_retries": 0,
    }


def test_completion(live: Live) -> None:
    r = litellm.completion(
        messages=[{"role": "user", "content": "What is the capital of France? One word."}],
        max_tokens=16,
        **kw(live),
    )
    assert "paris" in r.choices[0].message.content.lower()
    assert r.usage.completion_tokens > 0


def test_stream(live: Live) -> None:
    chunks = litellm.completion(
        messages=[{"role": "user", "content": "Count: 1, 2, 3, 4. Continue to 8."}],
        max_tokens=32,
        stream=True,
        **kw(live),
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "5" in text


def test_tools(live: Live) -> None:
    r = litellm.completion(
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[TOOL],
        tool_choice="required",
        max_tokens=96,
        **kw(live),
    )
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert "paris" in json.loads(call.function.arguments)["city"].lower()
