"""Chat rendering with the model's own template, taken from GGUF metadata.

The template (``tokenizer.chat_template``) is Hugging Face-style Jinja; it runs in an immutable
sandbox with the globals such templates expect (``bos_token``, ``eos_token``,
``raise_exception``, ``strftime_now``). A template that raises or does not exist is reported as
an :class:`~tightwad.errors.InvalidRequestError` the caller can act on.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tightwad.engine.contract import Message
from tightwad.errors import InvalidRequestError

__all__ = ["ChatTemplate", "Message"]


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

    def render(
        self,
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool = True,
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        if not messages:
            raise InvalidRequestError("messages must not be empty", param="messages")
        payload = []
        for m in messages:
            entry: dict[str, Any] = {"role": m.role, "content": m.content}
            if m.name:
                entry["name"] = m.name
            payload.append(entry)
        try:
            return self._template.render(
                messages=payload,
                add_generation_prompt=add_generation_prompt,
                bos_token=self._bos,
                eos_token=self._eos,
                **(extra or {}),
            )
        except InvalidRequestError:
            raise
        except jinja2.TemplateError as exc:
            raise InvalidRequestError(f"chat template failed: {exc}") from exc


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False) -> str:
    import json

    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)
