"""``${VAR}`` expansion: set, unset (error with path and line), default, ``$$`` escape."""

from __future__ import annotations

from pathlib import Path

import pytest

from tightwad.config import load_config
from tightwad.config._env import expand
from tightwad.errors import ConfigError

ENV = {"HOST": "10.0.0.7", "EMPTY": "", "PORT": "9001"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${HOST}", "10.0.0.7"),
        ("http://${HOST}:${PORT}/v1", "http://10.0.0.7:9001/v1"),
        ("${MISSING:-fallback}", "fallback"),
        ("${EMPTY:-fallback}", "fallback"),
        ("${HOST:-fallback}", "10.0.0.7"),
        ("${MISSING:-}", ""),
        ("$${HOST}", "${HOST}"),
        ("pa$$word", "pa$word"),
        ("pa$word", "pa$word"),
        ("cost: 5$", "cost: 5$"),
        ("${MISSING:-a:-b}", "a:-b"),
    ],
)
def test_expand(text: str, expected: str) -> None:
    assert expand(text, ENV) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("${MISSING}", "environment variable MISSING is not set"),
        ("${HOST", "unterminated '${'"),
        ("${1BAD}", "is not a variable reference"),
        ("${}", "is not a variable reference"),
    ],
)
def test_expand_errors(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("$", r"\$").replace("{", r"\{")):
        expand(text, ENV)


def test_set_variable_expands_and_plain_scalars_are_retyped(tmp_path: Path) -> None:
    text = "gateway:\n  host: ${HOST}\n  port: ${PORT}\n  api_key: '${PORT}'\n"
    config = load_config(_path(tmp_path, text), env=ENV)
    assert (config.gateway.host, config.gateway.port) == ("10.0.0.7", 9001)
    assert config.gateway.api_key == "9001"  # quoted: stays a string


def test_default_is_used_when_unset(tmp_path: Path) -> None:
    config = load_config(_path(tmp_path, "gateway:\n  port: ${NOPE:-8099}\n"), env={})
    assert config.gateway.port == 8099


def test_escape_keeps_a_literal_dollar(tmp_path: Path) -> None:
    text = 'gateway:\n  api_key: "pa$$${NOPE:-x}"\n'
    assert load_config(_path(tmp_path, text), env={}).gateway.api_key == "pa$x"


def test_unset_variable_is_an_error_with_path_and_line(tmp_path: Path) -> None:
    text = "proxy:\n  draft:\n    url: http://${DRAFT_HOST}:8081\n    model_name: d\n"
    with pytest.raises(ConfigError) as caught:
        load_config(_path(tmp_path, text), env={})
    err = caught.value
    assert str(err) == (
        "proxy.draft.url (line 3): environment variable DRAFT_HOST is not set "
        "(write ${DRAFT_HOST:-default} for a default)"
    )


def test_expanded_value_is_still_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_path(tmp_path, "gateway:\n  port: ${PORT}\n"), env={"PORT": "99999"})
    assert (caught.value.key_path, caught.value.line) == ("gateway.port", 2)


def test_anchor_is_expanded_once(tmp_path: Path) -> None:
    text = 'cluster:\n  name: &n "a$${X}"\n  token: *n\n'
    config = load_config(_path(tmp_path, text), env={"X": "boom"})
    assert (config.cluster.name, config.cluster.token) == ("a${X}", "a${X}")


def test_keys_are_not_expanded(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_path(tmp_path, "${SECTION}:\n  name: x\n"), env={"SECTION": "cluster"})
    assert caught.value.key_path == "${SECTION}"


def _path(tmp_path: Path, text: str) -> Path:
    file = tmp_path / "cluster.yaml"
    file.write_text(text)
    return file
