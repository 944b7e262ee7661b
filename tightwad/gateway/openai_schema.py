"""Hand-written validation of OpenAI request bodies into :class:`GenerationRequest`.

Owns :func:`parse_json_object`, :func:`parse_chat` and :func:`parse_completion`. Guarantees:

- every refusal is an :class:`~tightwad.errors.InvalidRequestError` (400) naming the offending
  ``param`` the way a client wrote it (``messages[2].content[0].type``, ``stop``, ...);
- ``tools``, ``tool_choice``, ``parallel_tool_calls``, ``response_format``, assistant
  ``tool_calls`` and ``tool`` messages are checked by :mod:`tightwad.gateway.tools.request` and
  :mod:`tightwad.gateway.structured` (a bad schema is refused naming its path inside);
- a field we understand but cannot honour (image parts, audio output, web search,
  moderation, a prompt batch, ``best_of`` above ``n``) is an
  :class:`~tightwad.errors.UnsupportedParameterError` (code ``unsupported_parameter``);
- OpenAI's bookkeeping fields (``store``, ``metadata``, ``service_tier``,
  ``prompt_cache_key`` / ``_retention`` / ``_options``, ``safety_identifier``,
  ``reasoning_effort``, ``verbosity``) are checked as OpenAI checks them (types, enums,
  ``metadata`` needs ``store``) and change nothing else;
- ``n`` (1..128) above the gateway's ``max_choices`` is a 400;
- a field OpenAI does not define (and that is not one of our llama.cpp extensions ``top_k``,
  ``min_p``, ``repeat_penalty``, ``penalty_last_n``) is refused by name, as OpenAI does;
- an explicit JSON ``null`` means "not given", for every optional field;
- ``max_tokens`` / ``max_completion_tokens`` (the latter wins when both are set) never exceed
  the gateway's cap; when neither is given the gateway's default applies.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from tightwad.errors import InvalidRequestError, UnsupportedParameterError
from tightwad.gateway.openai_fields import (
    FLOAT32_MAX,
    INT32_MAX,
    INT64_MAX,
    INT64_MIN,
    boolean,
    integer,
    number,
    string,
    token_id,
    type_error,
)
from tightwad.gateway.structured import parse_response_format
from tightwad.gateway.tools.request import (
    check_tool_history,
    parse_tool_calls,
    parse_tool_choice,
    parse_tools,
)
from tightwad.gateway.types import ChatMessage, GenerationRequest
from tightwad.spec.sampling import SamplingConfig

__all__ = ["Endpoint", "Limits", "ParsedRequest", "parse_chat", "parse_completion"]

Endpoint = Literal["chat", "completion"]

_ROLES = frozenset({"system", "user", "assistant", "developer", "tool"})
_COMMON = frozenset(
    {
        "model", "stream", "stream_options", "max_tokens", "max_completion_tokens",
        "temperature", "top_p", "top_k", "min_p", "repeat_penalty", "penalty_last_n",
        "presence_penalty", "frequency_penalty", "logit_bias", "seed", "stop", "logprobs",
        "prediction", "user", "n",
    }
)  # fmt: skip
# Fields we know but only accept at their neutral value (JSON null always counts as absent):
# audio output, web search and moderation are services this server does not run.
_CHAT_NEUTRAL: Mapping[str, tuple[object, ...]] = {
    "functions": ([],),
    "function_call": ("none",),
    "audio": (),
    "modalities": (["text"],),
    "web_search_options": (),
    "moderation": (),
}
_COMPLETION_NEUTRAL: Mapping[str, tuple[object, ...]] = {"suffix": ("",)}
# OpenAI's fields that change nothing here (checked as OpenAI checks them, then ignored):
# nothing is stored, every prompt prefix is cached anyway, there is one service tier.
_CHAT_ACCEPTED: Mapping[str, tuple[str, ...] | None] = {
    "store": None,
    "metadata": None,
    "service_tier": ("auto", "default", "flex", "scale", "priority", "fast"),
    "prompt_cache_key": None,
    "prompt_cache_retention": ("in_memory", "24h"),
    "prompt_cache_options": None,
    "safety_identifier": None,
    "reasoning_effort": ("none", "minimal", "low", "medium", "high", "xhigh", "max"),
    "verbosity": ("low", "medium", "high"),
}
_CHAT_FIELDS = (
    _COMMON
    | {"messages", "top_logprobs", "tools", "tool_choice", "parallel_tool_calls"}
    | {"response_format"}
    | set(_CHAT_NEUTRAL)
    | set(_CHAT_ACCEPTED)
)
_COMPLETION_FIELDS = _COMMON | {"prompt", "echo", "best_of"} | set(_COMPLETION_NEUTRAL)


@dataclass(frozen=True, slots=True)
class Limits:
    """The gateway's bounds on a request (from its settings)."""

    max_tokens_cap: int = 4096
    default_max_tokens: int = 512
    # OpenAI's default when ``temperature`` is omitted.
    default_temperature: float = 1.0
    # The most choices (``n``) one request may ask for.
    max_choices: int = 8


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """A validated request: what to generate and how to deliver it."""

    endpoint: Endpoint
    request: GenerationRequest
    stream: bool
    include_usage: bool
    # Choices to generate (OpenAI ``n``), each its own run of ``request``.
    n: int = 1


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Decode a request body that must be one JSON object (NaN/Infinity refused)."""
    try:
        value = json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(
            "We could not parse the JSON body of your request. The body must be valid JSON."
        ) from exc
    except RecursionError as exc:
        raise InvalidRequestError("The JSON body of your request is nested too deeply.") from exc
    if not isinstance(value, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    try:
        # Strings must be valid Unicode text: a lone surrogate (legal in JSON escapes) can be
        # neither tokenized nor echoed back.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequestError(
            "The request contains a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text."
        ) from exc
    except RecursionError as exc:
        raise InvalidRequestError("The JSON body of your request is nested too deeply.") from exc
    return value


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def parse_chat(body: Mapping[str, Any], limits: Limits, request_id: str = "") -> ParsedRequest:
    """Validate a ``POST /v1/chat/completions`` body."""
    _check_fields(body, _CHAT_FIELDS, _CHAT_NEUTRAL)
    _check_accepted(body)
    parallel_tool_calls = boolean(body, "parallel_tool_calls", True)
    tools = parse_tools(body.get("tools"))
    tool_choice = parse_tool_choice(body.get("tool_choice"), tools)
    grammar = parse_response_format(body.get("response_format"))
    logprobs = boolean(body, "logprobs", False)
    top_logprobs = integer(body, "top_logprobs", 0, 20)
    if top_logprobs and not logprobs:
        raise InvalidRequestError(
            "logprobs must be set to true when top_logprobs is used.", param="top_logprobs"
        )
    messages = _messages(body.get("messages"))
    check_tool_history([(m.role, m.tool_calls, m.tool_call_id) for m in messages])
    return _finish(
        "chat",
        body,
        limits,
        request_id,
        messages=messages,
        logprobs=logprobs,
        top_logprobs=top_logprobs or 0,
        grammar=grammar,
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel_tool_calls,
    )


def parse_completion(
    body: Mapping[str, Any], limits: Limits, request_id: str = ""
) -> ParsedRequest:
    """Validate a ``POST /v1/completions`` body."""
    _check_fields(body, _COMPLETION_FIELDS, _COMPLETION_NEUTRAL)
    best_of = integer(body, "best_of", 0, 20)
    n = integer(body, "n", 1, 128) or 1
    if best_of is not None and best_of < n:
        raise InvalidRequestError("best_of must be greater than or equal to n.", param="best_of")
    if best_of is not None and best_of > n:
        raise UnsupportedParameterError(
            "best_of greater than n is not supported; ask for n choices instead.",
            param="best_of",
        )
    n_logprobs = integer(body, "logprobs", 0, 5)
    prompt, prompt_tokens = _prompt(body.get("prompt"))
    return _finish(
        "completion",
        body,
        limits,
        request_id,
        prompt=prompt,
        prompt_tokens=prompt_tokens,
        logprobs=n_logprobs is not None,
        top_logprobs=n_logprobs or 0,
        echo=boolean(body, "echo", False),
    )


def _finish(
    endpoint: Endpoint,
    body: Mapping[str, Any],
    limits: Limits,
    request_id: str,
    **specific: Any,
) -> ParsedRequest:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("you must provide a model parameter", param="model")
    n = integer(body, "n", 1, 128) or 1
    if n > limits.max_choices:
        raise InvalidRequestError(
            f"n is too large: {n}. This server generates at most {limits.max_choices} "
            "choices per request.",
            param="n",
        )
    string(body, "user")
    stream = boolean(body, "stream", False)
    request = GenerationRequest(
        model=model,
        sampling=_sampling(body, limits),
        seed=integer(body, "seed", INT64_MIN, INT64_MAX),
        max_tokens=_max_tokens(body, limits),
        stop=_stop(body.get("stop")),
        prediction=_prediction(body.get("prediction")),
        request_id=request_id,
        **specific,
    )
    return ParsedRequest(endpoint, request, stream, _include_usage(body, stream), n)


def _check_accepted(body: Mapping[str, Any]) -> None:
    """Check the fields of :data:`_CHAT_ACCEPTED` as OpenAI does (types, enums, metadata's
    bounds and its need of ``store``); they change nothing else."""
    for key, allowed in _CHAT_ACCEPTED.items():
        value = body.get(key)
        if value is None or allowed is None:
            continue
        if not isinstance(value, str):
            raise type_error(key, "a string", value)
        if value not in allowed:
            raise InvalidRequestError(
                f"Invalid value for '{key}': {value!r}. Supported values are: "
                + ", ".join(f"'{a}'" for a in allowed)
                + ".",
                param=key,
            )
    store = boolean(body, "store", False)
    for key in ("prompt_cache_key", "safety_identifier"):
        string(body, key)
    options = body.get("prompt_cache_options")
    if options is not None:
        _prompt_cache_options(options)
    metadata = body.get("metadata")
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise type_error("metadata", "an object", metadata)
    if len(metadata) > 16:
        raise InvalidRequestError(
            f"Invalid 'metadata': too many properties ({len(metadata)}); at most 16.",
            param="metadata",
        )
    for name, item in metadata.items():
        if len(name) > 64:
            raise InvalidRequestError(
                f"Invalid 'metadata': key {name[:16]!r}... is longer than 64 characters.",
                param="metadata",
            )
        if not isinstance(item, str):
            raise type_error(f"metadata.{name}", "a string", item)
        if len(item) > 512:
            raise InvalidRequestError(
                f"Invalid 'metadata.{name}': longer than 512 characters.",
                param=f"metadata.{name}",
            )
    if not store:
        raise InvalidRequestError(
            "The 'metadata' parameter is only allowed when 'store' is enabled.",
            param="metadata",
        )


def _prompt_cache_options(options: object) -> None:
    if not isinstance(options, dict):
        raise type_error("prompt_cache_options", "an object", options)
    enums = {"mode": ("implicit", "explicit"), "ttl": ("30m",)}
    for key, value in options.items():
        param = f"prompt_cache_options.{key}"
        if key not in enums:
            raise InvalidRequestError(f"Unrecognized argument in 'prompt_cache_options': {key}",
                                      param=param)  # fmt: skip
        if value not in enums[key]:
            raise InvalidRequestError(
                f"Invalid value for '{param}': {value!r}. Supported values are: "
                + ", ".join(f"'{a}'" for a in enums[key])
                + ".",
                param=param,
            )


def _check_fields(
    body: Mapping[str, Any],
    known: frozenset[str] | set[str],
    neutral: Mapping[str, tuple[object, ...]],
) -> None:
    for key, value in body.items():
        if key not in known:
            raise InvalidRequestError(f"Unrecognized request argument supplied: {key}", param=key)
        if key in neutral and value is not None and value not in neutral[key]:
            raise UnsupportedParameterError(f"'{key}' is not supported by this server.", param=key)


# ---------------------------------------------------------------------------------------------
# Sampling and limits.


def _sampling(body: Mapping[str, Any], limits: Limits) -> SamplingConfig:
    temperature = number(body, "temperature", 0.0, 2.0)
    values: dict[str, Any] = {
        "temperature": limits.default_temperature if temperature is None else temperature,
        "top_p": number(body, "top_p", 0.0, 1.0, lo_open=True),
        "top_k": integer(body, "top_k", 0, INT32_MAX),
        "min_p": number(body, "min_p", 0.0, 1.0),
        "repeat_penalty": number(body, "repeat_penalty", 0.0, FLOAT32_MAX, lo_open=True),
        "penalty_last_n": integer(body, "penalty_last_n", -1, INT32_MAX),
        "presence_penalty": number(body, "presence_penalty", -2.0, 2.0),
        "frequency_penalty": number(body, "frequency_penalty", -2.0, 2.0),
        "logit_bias": _logit_bias(body.get("logit_bias")),
    }
    given = {name: value for name, value in values.items() if value is not None}
    try:
        return SamplingConfig(**given)
    except ValueError as exc:
        param = str(exc).split(":", 1)[0]
        raise InvalidRequestError(f"Invalid sampling parameters: {exc}", param=param) from exc


def _logit_bias(value: object) -> dict[int, float] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise type_error("logit_bias", "an object", value)
    bias: dict[int, float] = {}
    for key, amount in value.items():
        if not (isinstance(key, str) and key.isascii() and key.isdigit()):
            raise InvalidRequestError(
                f"Invalid key in 'logit_bias': {key!r} is not a token id.", param="logit_bias"
            )
        if int(key) > INT32_MAX:
            raise InvalidRequestError(
                f"Invalid key in 'logit_bias': {key} is above the largest token id ({INT32_MAX}).",
                param="logit_bias",
            )
        if isinstance(amount, bool) or not isinstance(amount, int | float):
            raise type_error(f"logit_bias.{key}", "a number", amount)
        if not -100.0 <= float(amount) <= 100.0:
            raise InvalidRequestError(
                f"Invalid value in 'logit_bias': {amount} is outside [-100, 100].",
                param="logit_bias",
            )
        bias[int(key)] = float(amount)
    return bias


def _max_tokens(body: Mapping[str, Any], limits: Limits) -> int:
    chosen_key = "max_completion_tokens"
    chosen = integer(body, chosen_key, 1, None)
    plain = integer(body, "max_tokens", 1, None)
    if chosen is None:
        chosen_key, chosen = "max_tokens", plain
    if chosen is None:
        return min(limits.default_max_tokens, limits.max_tokens_cap)
    if chosen > limits.max_tokens_cap:
        raise InvalidRequestError(
            f"{chosen_key} is too large: {chosen}. This server supports at most "
            f"{limits.max_tokens_cap} completion tokens.",
            param=chosen_key,
        )
    return chosen


def _stop(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise type_error("stop", "a string or an array of strings", value)
    if len(value) > 4:
        raise InvalidRequestError("'stop' accepts at most 4 sequences.", param="stop")
    return tuple(item for item in value if item)


def _include_usage(body: Mapping[str, Any], stream: bool) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise InvalidRequestError(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    if not isinstance(options, dict):
        raise type_error("stream_options", "an object", options)
    for key in options:
        if key not in {"include_usage", "include_obfuscation"}:
            raise InvalidRequestError(
                f"Unrecognized argument in 'stream_options': {key}",
                param=f"stream_options.{key}",
            )
    boolean(options, "include_obfuscation", False, param="stream_options.include_obfuscation")
    return boolean(options, "include_usage", False, param="stream_options.include_usage")


# ---------------------------------------------------------------------------------------------
# Messages, prompts and predictions.


def _text_parts(value: object, param: str) -> str:
    """A string, or an array of ``{"type": "text", "text": ...}`` parts joined together."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise type_error(param, "a string or an array of content parts", value)
    texts: list[str] = []
    for j, part in enumerate(value):
        where = f"{param}[{j}]"
        if not isinstance(part, dict):
            raise type_error(where, "an object", part)
        kind = part.get("type")
        if kind != "text":
            if isinstance(kind, str):
                raise UnsupportedParameterError(
                    f"Content parts of type '{kind}' are not supported; only 'text' is.",
                    param=f"{where}.type",
                )
            raise type_error(f"{where}.type", "a string", kind)
        extra = set(part) - {"type", "text"}
        if extra:
            name = sorted(extra)[0]
            raise InvalidRequestError(
                f"Unrecognized argument in a text part: {name}", param=f"{where}.{name}"
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise type_error(f"{where}.text", "a string", text)
        texts.append(text)
    return "".join(texts)


def _messages(value: object) -> tuple[ChatMessage, ...]:
    if value is None:
        raise InvalidRequestError("Missing required parameter: 'messages'.", param="messages")
    if not isinstance(value, list):
        raise type_error("messages", "an array", value)
    if not value:
        raise InvalidRequestError(
            "Invalid 'messages': empty array. Expected an array with at least one message.",
            param="messages",
        )
    return tuple(_message(item, f"messages[{i}]") for i, item in enumerate(value))


def _message(value: object, param: str) -> ChatMessage:
    if not isinstance(value, dict):
        raise type_error(param, "an object", value)
    for key, item in value.items():
        if key in {"function_call", "audio"} and item is not None:
            raise UnsupportedParameterError(
                f"'{key}' in messages is not supported.", param=f"{param}.{key}"
            )
        if key not in {"role", "content", "name", "refusal", "tool_calls", "tool_call_id",
                       "function_call", "audio"}:  # fmt: skip
            raise InvalidRequestError(
                f"Unrecognized argument in a message: {key}", param=f"{param}.{key}"
            )
    role = value.get("role")
    if not isinstance(role, str):
        raise type_error(f"{param}.role", "a string", role)
    if role not in _ROLES:
        raise InvalidRequestError(
            f"Invalid value for role: '{role}'. Supported values are: "
            "'system', 'user', 'assistant', 'developer' and 'tool'.",
            param=f"{param}.role",
        )
    calls = value.get("tool_calls")
    if calls is not None and role != "assistant":
        raise InvalidRequestError(
            f"'{param}.tool_calls' is only allowed in assistant messages",
            param=f"{param}.tool_calls",
        )
    tool_calls = parse_tool_calls(calls, f"{param}.tool_calls") if calls is not None else ()
    call_id = value.get("tool_call_id")
    if call_id is not None and (role != "tool" or not isinstance(call_id, str)):
        raise InvalidRequestError(
            f"'{param}.tool_call_id' must be a string, and only in tool messages",
            param=f"{param}.tool_call_id",
        )
    content = value.get("content")
    if content is None and role == "assistant":
        content = ""
    name = string(value, "name") or ""
    return ChatMessage(
        role=role,
        content=_text_parts(content, f"{param}.content"),
        name=name,
        tool_calls=tool_calls,
        tool_call_id=call_id or "",
    )


def _prompt(value: object) -> tuple[str | None, tuple[int, ...] | None]:
    if value is None:
        raise InvalidRequestError("Missing required parameter: 'prompt'.", param="prompt")
    if isinstance(value, str):
        return _prompt_text(value), None
    if not isinstance(value, list) or not value:
        raise type_error("prompt", _PROMPT_TYPES, value)
    if all(_is_number(item) for item in value):
        return None, _token_ids(value)
    if len(value) > 1 and all(isinstance(item, str | list) for item in value):
        raise UnsupportedParameterError(
            "Batches of several prompts are not supported; send one prompt per request.",
            param="prompt",
        )
    only = value[0]
    if isinstance(only, str):
        return _prompt_text(only), None
    if isinstance(only, list) and only and all(_is_number(item) for item in only):
        return None, _token_ids(only)
    raise type_error("prompt", _PROMPT_TYPES, value)


_PROMPT_TYPES = "a string, an array of token ids or an array of strings"


def _prompt_text(text: str) -> str:
    if not text:
        raise InvalidRequestError("Invalid 'prompt': the prompt is empty.", param="prompt")
    return text


def _is_number(item: object) -> bool:
    return isinstance(item, int | float) and not isinstance(item, bool)


def _token_ids(items: list[Any]) -> tuple[int, ...]:
    """Token ids: integers (or integral floats, as JSON Schema counts integers) from 0 to
    2^31 - 1; whether the route's model has them is the engine's to say."""
    ids = []
    for i, item in enumerate(items):
        tok = token_id(item)
        if tok is None:
            raise InvalidRequestError(
                f"Invalid 'prompt[{i}]': {item} is not a token id (an integer from 0 to "
                f"{INT32_MAX}).",
                param="prompt",
            )
        ids.append(tok)
    return tuple(ids)


def _prediction(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise type_error("prediction", "an object", value)
    if value.get("type") != "content":
        raise InvalidRequestError(
            "Invalid value for 'prediction.type': only 'content' is supported.",
            param="prediction.type",
        )
    extra = set(value) - {"type", "content"}
    if extra:
        name = sorted(extra)[0]
        raise InvalidRequestError(
            f"Unrecognized argument in 'prediction': {name}", param=f"prediction.{name}"
        )
    return _text_parts(value.get("content"), "prediction.content")
