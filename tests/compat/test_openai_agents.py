"""The OpenAI Agents SDK (``openai-agents``) against a live gateway on Qwen2.5-Coder-1.5B: an
agent with a function tool, over the SDK's Chat Completions model and over its Responses
model (its default). Skipped where the package is not installed."""

from __future__ import annotations

import pytest

from .conftest import Live

agents = pytest.importorskip("agents")

pytestmark = [pytest.mark.engine, pytest.mark.slow]

CALLS: list[str] = []


@agents.function_tool
def get_weather(city: str) -> str:
    """Current weather of a city."""
    CALLS.append(city)
    return f"It is 21 degrees Celsius and sunny in {city}."


@pytest.fixture(autouse=True)
def _no_tracing() -> None:
    agents.set_tracing_disabled(True)  # traces would go to OpenAI's servers
    CALLS.clear()


@pytest.mark.parametrize("api", ["chat_completions", "responses"])
async def test_an_agent_calls_its_tool_and_answers(live: Live, api: str) -> None:
    client = live.async_openai()
    model_cls = (
        agents.OpenAIChatCompletionsModel
        if api == "chat_completions"
        else agents.OpenAIResponsesModel
    )
    agent = agents.Agent(
        name="weather",
        instructions="You are a helpful assistant. Use the tools, then answer from their results.",
        tools=[get_weather],
        model=model_cls(model=live.model, openai_client=client),
        model_settings=agents.ModelSettings(temperature=0, max_tokens=128, tool_choice="required"),
    )
    result = await agents.Runner.run(agent, "What is the weather in Paris?", max_turns=4)
    assert CALLS and "paris" in CALLS[0].lower()
    kinds = [item.type for item in result.new_items]
    assert "tool_call_item" in kinds and "tool_call_output_item" in kinds
    # The 1.5B model's wording varies: the run took a tool round trip (two model requests at
    # least) and ended with a non-empty text answer.
    assert len(result.raw_responses) >= 2
    assert isinstance(result.final_output, str) and result.final_output.strip()
    await client.close()
