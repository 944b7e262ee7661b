"""Pydantic AI against a live gateway on Qwen2.5-Coder-1.5B: a structured output (a pydantic
model, through its output tool) over the Chat Completions model, and a tool-using agent over
the Responses model. Skipped where the package is not installed."""

from __future__ import annotations

import pydantic
import pytest

from .conftest import Live

pydantic_ai = pytest.importorskip("pydantic_ai")

from pydantic_ai.messages import ModelResponse  # noqa: E402
from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel  # noqa: E402
from pydantic_ai.providers.openai import OpenAIProvider  # noqa: E402
from pydantic_ai.settings import ModelSettings  # noqa: E402

pytestmark = [pytest.mark.engine, pytest.mark.slow]

SETTINGS: ModelSettings = {"temperature": 0.0, "max_tokens": 128}


class Capital(pydantic.BaseModel):
    country: str
    capital: str


def provider(live: Live) -> OpenAIProvider:
    return OpenAIProvider(base_url=live.base_url, api_key=live.api_key)


async def test_structured_output_over_chat(live: Live) -> None:
    model = OpenAIChatModel(live.model, provider=provider(live))
    agent = pydantic_ai.Agent(model, output_type=Capital, model_settings=SETTINGS)
    result = await agent.run("What is the capital of Italy?")
    assert isinstance(result.output, Capital) and result.output.capital.lower() == "rome"


async def test_a_tool_over_responses(live: Live) -> None:
    model = OpenAIResponsesModel(live.model, provider=provider(live))
    cities: list[str] = []

    def settings(ctx: pydantic_ai.RunContext[None]) -> ModelSettings:
        # Force the tool until it has been called, then let the model answer in text (a static
        # "required" would forbid the final answer; pydantic-ai refuses it).
        return {**SETTINGS, "tool_choice": "auto" if cities else "required"}

    agent = pydantic_ai.Agent(
        model,
        instructions="You are a helpful assistant. Use the tools, then answer from their results.",
        model_settings=settings,
    )

    @agent.tool_plain
    def get_weather(city: str) -> str:
        """Current weather of a city."""
        cities.append(city)
        return f"It is 21 degrees Celsius and sunny in {city}."

    result = await agent.run("What is the weather in Paris?")
    assert cities and "paris" in cities[0].lower()
    # The wording of the 1.5B model's answer varies: a tool round trip (two model requests at
    # least) that ends in a non-empty text answer.
    responses = [m for m in result.all_messages() if isinstance(m, ModelResponse)]
    assert len(responses) >= 2
    assert isinstance(result.output, str) and result.output.strip()
