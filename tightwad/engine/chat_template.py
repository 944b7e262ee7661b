"""Chat rendering with the model's own template, taken from GGUF metadata.

The template (``tokenizer.chat_template``) is Hugging Face-style Jinja; it runs in an immutable
sandbox with the globals such templates expect (``bos_token``, ``eos_token``,
``raise_exception``, ``strftime_now``). A template that raises or does not exist is reported as
an :class:`~tightwad.errors.InvalidRequestError` the caller can act on.

Tools reach the template the way Hugging Face's ``apply_chat_template`` passes them: ``tools``
is OpenAI's array of function tools, an assistant message carries ``tool_calls`` (OpenAI's
shape, with ``function.arguments`` as a dict: templates write it with ``| tojson``) and a
``tool`` message its ``tool_call_id``. :func:`tool_syntax_of` names the tool-call syntax a
template writes (``hermes``, ``llama3``, ``mistral``) or ``None`` when it cannot take tools.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tightwad.engine.contract import Message
from tightwad.errors import InvalidRequestError

__all__ = ["ChatTemplate", "Message", "tool_syntax_of"]


def _raise(message: str) -> None:
    raise InvalidRequestError(f"chat template refused the conversation: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


class ChatTemplate:
    """A compiled chat template. ``render(messages, add_generation_prompt)`` -> prompt text."""

    def __init__(self, source: str, *, bos_token: str, eos_token: str) -> None:
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = _strftime_now
        env.filters["tojson"] = _tojson
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise InvalidRequestError(f"the model's chat template does not parse: {exc}") from exc
        self.source = source
        self._bos = bos_token
        self._eos = eos_token

    @property
    def tool_syntax(self) -> str | None:
        """The tool-call syntax this template writes (see :func:`tool_syntax_of`)."""
        return tool_syntax_of(self.source)

    def render(
        self,
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        """The prompt text. ``tools`` (OpenAI's tools array) becomes the template's ``tools``
        variable; messages' ``tool_calls_json`` / ``tool_call_id`` their ``tool_calls`` /
        ``tool_call_id``. ``extra`` adds template variables (a ``tools`` there counts too)."""
        if not messages:
            raise InvalidRequestError("messages must not be empty", param="messages")
        payload = [_message_entry(i, m) for i, m in enumerate(messages)]
        variables: dict[str, Any] = dict(extra or {})
        if tools:
            variables["tools"] = [dict(t) for t in tools]
        try:
            return self._template.render(
                messages=payload,
                add_generation_prompt=add_generation_prompt,
                bos_token=self._bos,
                eos_token=self._eos,
                **variables,
            )
        except InvalidRequestError:
            raise
        except jinja2.TemplateError as exc:
            raise InvalidRequestError(f"chat template failed: {exc}") from exc


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False) -> str:
    import json

    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)


def _message_entry(index: int, m: Message) -> dict[str, Any]:
    entry: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.name:
        entry["name"] = m.name
    if m.tool_calls_json:
        entry["tool_calls"] = _tool_calls(index, m.tool_calls_json)
    if m.tool_call_id:
        entry["tool_call_id"] = m.tool_call_id
    return entry


def _tool_calls(index: int, text: str) -> list[dict[str, Any]]:
    """OpenAI's ``tool_calls`` array with each ``function.arguments`` parsed to a dict."""
    param = f"messages[{index}].tool_calls"
    try:
        calls = json.loads(text)
    except ValueError as exc:
        raise InvalidRequestError(f"'{param}' is not valid JSON: {exc}", param=param) from exc
    if not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls):
        raise InvalidRequestError(f"'{param}' must be an array of objects", param=param)
    out = []
    for j, call in enumerate(calls):
        fn = call.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise InvalidRequestError(
                f"'{param}[{j}].function' must be an object with a name",
                param=f"{param}[{j}].function",
            )
        args: Any = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError as exc:
                raise InvalidRequestError(
                    f"'{param}[{j}].function.arguments' is not valid JSON: {exc}",
                    param=f"{param}[{j}].function.arguments",
                ) from exc
        out.append({**call, "type": "function", "function": {**fn, "arguments": args}})
    return out


_TOOLS_VAR = re.compile(r"\btools\b")


def tool_syntax_of(source: str) -> str | None:
    """The tool-call syntax a template writes: ``hermes`` (``<tool_call>``), ``mistral``
    (``[TOOL_CALLS]``), ``llama3`` (``<|python_tag|>`` / ``"parameters"`` JSON after Llama 3
    headers), or ``None`` when the template has no ``tools`` variable or no syntax we know."""
    if not _TOOLS_VAR.search(source):
        return None
    if "<tool_call>" in source:
        return "hermes"
    if "[TOOL_CALLS]" in source:
        return "mistral"
    if "<|python_tag|>" in source or ("<|start_header_id|>" in source and "parameters" in source):
        return "llama3"
    return None
