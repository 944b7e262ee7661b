"""YAML text -> plain Python data plus a map from every key path to its line.

Guarantees: the result is what ``yaml.safe_load`` would give (merge keys and anchors
included), except that ``${VAR}`` references in string values are expanded first (see
``_env``) and duplicate keys are refused. Every failure is a :class:`ConfigError` carrying the
key path and the 1-based line. Key paths look like ``workers[1].gpus[0].rpc_port``; the line
of a mapping entry is the line of its key, the line of a list item is the line it starts on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import yaml

from tightwad.config._env import expand, has_reference
from tightwad.errors import ConfigError

__all__ = ["Document", "join", "parse_document"]

_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_MAX_PATHS = 100_000


def join(parent: str, key: object) -> str:
    """The key path of ``key`` under ``parent`` (an int key is a list index)."""
    if isinstance(key, int) and not isinstance(key, bool):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else str(key)


@dataclass(frozen=True, slots=True)
class Document:
    """Parsed data, the line of every key path, and the file it came from (if any)."""

    data: object
    lines: Mapping[str, int]
    file: str | None = None

    def line(self, path: str) -> int | None:
        return self.lines.get(path)

    def error(self, path: str, reason: str, *, line_of: str | None = None) -> ConfigError:
        """A ConfigError at ``path``, with the line of ``line_of`` (default: ``path``)."""
        line = self.line(path if line_of is None else line_of)
        return ConfigError(path, reason, line=line, file=self.file)


def parse_document(text: str, env: Mapping[str, str], file: str | None = None) -> Document:
    """Parse one YAML document; raise ConfigError on syntax errors or bad ``${}``."""
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:  # e.g. NUL or control characters (ReaderError)
        raise ConfigError("", f"the file is not valid YAML text: {exc}", None, file) from exc
    try:
        node = loader.get_single_node()
        if node is None:
            raise ConfigError("", "the file is empty (expected a mapping of sections)", 1, file)
        _prepare(node, "", env, loader, file, set())
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc, file) from exc
    except yaml.YAMLError as exc:
        raise ConfigError("", f"YAML error: {exc}", None, file) from exc
    except RecursionError as exc:
        raise ConfigError("", "the file is nested too deeply", None, file) from exc
    finally:
        loader.dispose()
    lines: dict[str, int] = {"": node.start_mark.line + 1}
    _record_lines(node, "", lines, set())
    return Document(data=data, lines=lines, file=file)


def _syntax_error(exc: yaml.MarkedYAMLError, file: str | None) -> ConfigError:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else None
    reason = " ".join(p for p in (exc.context, exc.problem) if p) or str(exc)
    return ConfigError("", f"YAML syntax error: {reason}", line, file)


def _prepare(
    node: yaml.Node,
    path: str,
    env: Mapping[str, str],
    loader: yaml.SafeLoader,
    file: str | None,
    seen: set[int],
) -> None:
    """Expand ``${}`` in scalars and refuse duplicate keys; visit each node once."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.ScalarNode):
        _expand_scalar(node, path, env, loader, file)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _prepare(item, join(path, index), env, loader, file, seen)
    elif isinstance(node, yaml.MappingNode):
        keys: dict[str, int] = {}
        for key_node, value_node in node.value:
            sub = join(path, key_node.value)
            if key_node.tag != _MERGE_TAG and isinstance(key_node, yaml.ScalarNode):
                _refuse_duplicate(keys, key_node, sub, file)
            _prepare(value_node, sub, env, loader, file, seen)


def _refuse_duplicate(
    keys: dict[str, int], key_node: yaml.Node, path: str, file: str | None
) -> None:
    line = key_node.start_mark.line + 1
    first = keys.setdefault(str(key_node.value), line)
    if first != line:
        raise ConfigError(path, f"duplicate key (first defined on line {first})", line, file)


def _expand_scalar(
    node: yaml.ScalarNode,
    path: str,
    env: Mapping[str, str],
    loader: yaml.SafeLoader,
    file: str | None,
) -> None:
    if node.tag != _STR_TAG or not has_reference(node.value):
        return
    try:
        node.value = expand(node.value, env)
    except ValueError as exc:
        raise ConfigError(path, str(exc), node.start_mark.line + 1, file) from exc
    if node.style is None:  # plain scalar: `port: ${PORT}` becomes an int like `port: 8080`
        node.tag = loader.resolve(yaml.ScalarNode, node.value, (True, False))  # type: ignore[no-untyped-call]


def _record_lines(node: yaml.Node, path: str, lines: dict[str, int], stack: set[int]) -> None:
    """Map every key path under ``node`` to its line (after merge keys were flattened).

    An aliased node is recorded under each path that reaches it; ``stack`` stops cycles and
    ``_MAX_PATHS`` stops alias bombs.
    """
    if id(node) in stack or len(lines) > _MAX_PATHS:
        return
    stack.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            sub = join(path, index)
            lines[sub] = item.start_mark.line + 1
            _record_lines(item, sub, lines, stack)
    elif isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            sub = join(path, key_node.value)
            lines[sub] = key_node.start_mark.line + 1  # last wins, like the constructed dict
            _record_lines(value_node, sub, lines, stack)
    stack.discard(id(node))
