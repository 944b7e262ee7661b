"""``langchain-openai``'s ChatOpenAI against a live gateway on Qwen2.5-Coder-1.5B: invoke,
stream, ``bind_tools``, ``with_structured_output`` (its default, a JSON schema) and the same
chat model over the Responses API (``use_responses_api=True``)."""

from __future__ import annotations

import pydantic
import pytest
from langchain_core.messages import AIMessage
from langchain_openai import ChatOpenAI

from .conftest import Live

pytestmark = [pytest.mark.engine, pytest.mark.slow]


class GetWeather(pydantic.BaseModel):
    """Current weather of a city."""

    city: str = pydantic.Field(description="The city")


class Capital(pydantic.BaseModel):
    country: str
    capital: str


def chat(live: Live, max_tokens: int = 32, **kwargs: object) -> ChatOpenAI:
    return ChatOpenAI(
        model=live.model,
        base_url=live.base_url,
        api_key=live.api_key,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=max_tokens,  # type: ignore[call-arg]
        max_retries=0,
        **kwargs,  # type: ignore[arg-type]
    )


def test_invoke(live: Live) -> None:
    message = chat(live, 16).invoke("What is the capital of France? One word.")
    assert isinstance(message, AIMessage)
    assert "paris" in message.text.lower()
    assert message.usage_metadata is not None and message.usage_metadata["output_tokens"] > 0


def test_stream(live: Live) -> None:
    chunks = list(chat(live).stream("Count: 1, 2, 3, 4. Continue to 8."))
    assert len(chunks) > 2
    assert "5" in "".join(chunk.text for chunk in chunks)


def test_bind_tools(live: Live) -> None:
    model = chat(live, 96).bind_tools([GetWeather], tool_choice="GetWeather")
    message = model.invoke("What is the weather in Paris?")
    assert isinstance(message, AIMessage)
    assert message.tool_calls, message
    call = message.tool_calls[0]
    assert call["name"] == "GetWeather" and "paris" in call["args"]["city"].lower()


def test_with_structured_output(live: Live) -> None:
    model = chat(live, 64).with_structured_output(Capital)
    result = model.invoke("Give the capital of Italy as JSON.")
    assert isinstance(result, Capital) and result.capital.lower() == "rome"


def test_responses_api_invoke_and_stream(live: Live) -> None:
    model = chat(live, 16, use_responses_api=True)
    message = model.invoke("What is the capital of France? One word.")
    assert isinstance(message, AIMessage) and "paris" in message.text.lower()
    streamed = "".join(c.text for c in model.stream("What is the capital of France? One word."))
    assert streamed == message.text
