"""Tools and tool-call history reach the model's own chat template (Qwen2.5's takes tools)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tightwad.engine.contract import Message
from tightwad.engine.engine_config import EngineConfig
from tightwad.engine.llama_engine import Engine
from tightwad.errors import InvalidRequestError

pytestmark = pytest.mark.engine

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


async def test_tools_json_is_the_templates_tools_variable(qwen_draft_path: Path) -> None:
    engine = await Engine.load(
        EngineConfig("q", qwen_draft_path, ctx_size=512, max_sessions=1, gpu_layers=0)
    )
    try:
        msgs = [Message("user", "Weather in Paris?")]
        plain, _ = await engine.render_chat(msgs, add_generation_prompt=True)
        text, tokens = await engine.render_chat(
            msgs, add_generation_prompt=True, tools_json=json.dumps(TOOLS)
        )
        assert "get_weather" in text and "get_weather" not in plain
        assert "<tools>" in text and len(tokens) > len(plain) // 4
        with pytest.raises(InvalidRequestError, match="tools"):
            await engine.render_chat(msgs, add_generation_prompt=True, tools_json="{")
    finally:
        await engine.close()
