"""A route's settings: one DraftMode, one default of max_draft_tokens, the loop settings a
route may set, and ``fallback_on_draft_failure`` (only true exists) refused with its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tightwad.config import (
    DEFAULT_MAX_DRAFT_TOKENS,
    DRAFT_MODES,
    ConfigError,
    DraftMode,
    check_main,
    config_from_mapping,
)
from tightwad.gateway.loop import RouteSpec


def _loop_default(name: str) -> object:
    return RouteSpec.__dataclass_fields__[name].default


def test_draft_mode_is_one_str_enum() -> None:
    assert [m.value for m in DRAFT_MODES] == ["model", "ngram", "prediction", "hybrid", "none"]
    assert DraftMode("ngram") == "ngram" and f"{DraftMode.HYBRID}" == "hybrid"
    route = config_from_mapping({"routes": [{"name": "r", "target": "grpc://h:1"}]}).routes[0]
    assert route.draft is DraftMode.NONE
    assert route.max_draft_tokens == DEFAULT_MAX_DRAFT_TOKENS == _loop_default("max_draft_tokens")


def test_loop_settings_are_read_from_the_route() -> None:
    route = config_from_mapping(
        {
            "routes": [
                {
                    "name": "r",
                    "target": "grpc://h:1",
                    "draft": "ngram",
                    "pipeline": True,
                    "ngram_max_n": 6,
                    "draft_timeout_s": 2.5,
                    "drafter_cooldown_s": 0,
                }
            ]
        }
    ).routes[0]
    tuning = route.tuning()
    assert tuning == {
        "pipeline": True,
        "ngram_max_n": 6,
        "draft_timeout_s": 2.5,
        "drafter_cooldown_s": 0,
    }
    assert all(name in RouteSpec.__dataclass_fields__ for name in tuning)


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        (
            "routes:\n  - name: r\n    target: grpc://h:1\n    fallback_on_draft_failure: false\n",
            "routes[0].fallback_on_draft_failure",
            4,
        ),
        (
            "proxy:\n  fallback_on_draft_failure: false\n"
            "  draft: {url: 'http://127.0.0.1:1', model_name: d}\n"
            "  target: {url: 'http://127.0.0.1:1', model_name: t}\n",
            "proxy.fallback_on_draft_failure",
            2,
        ),
    ],
)
def test_fallback_off_is_refused_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, key: str, line: int
) -> None:
    file = tmp_path / "c.yaml"
    file.write_text(text)
    assert check_main([str(file)], env={}) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{file}: {key} (line {line}): only true is supported")
    assert "never fails a request" in err


@pytest.mark.parametrize(
    ("entry", "key", "reason"),
    [
        ({"ngram_max_n": 0}, "ngram_max_n", "1"),
        ({"pipeline": "yes"}, "pipeline", "true or false"),
        ({"draft": "ngrams"}, "draft", "must be one of model, ngram, prediction, hybrid, none"),
        ({"max_concurrency": 0}, "max_concurrency", "1"),
    ],
)
def test_bad_route_values_name_key_and_reason(
    entry: dict[str, object], key: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_mapping({"routes": [{"name": "r", "target": "grpc://h:1", **entry}]})
    assert caught.value.key_path == f"routes[0].{key}"
    assert reason in caught.value.reason
