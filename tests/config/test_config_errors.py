"""Bad cluster files: each names the exact key path, the YAML line, and the reason."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tightwad.config import config_from_mapping, load_config
from tightwad.errors import ConfigError

_PROXY = """\
proxy:
  draft: {url: "http://10.0.0.2:8081", model_name: small}
  target: {url: "http://10.0.0.3:8080", model_name: big}
"""

# (case id, yaml text, expected key path, expected line, reason fragment)
CASES = [
    ("syntax", "proxy:\n  host: [1, 2\n  port: 3\n", "", 3, "YAML syntax error"),
    ("empty", "", "", 1, "the file is empty"),
    ("comments-only", "# nothing here\n", "", 1, "the file is empty"),
    ("top-level-list", "- proxy\n- models\n", "", 1, "must be a mapping of sections"),
    ("two-documents", "version: 1\n---\nversion: 1\n", "", 2, "YAML syntax error"),
    ("unknown-section", "proxi:\n  port: 1\n", "proxi", 1, "did you mean 'proxy'?"),
    (
        "unknown-nested-key",
        "workers:\n  - host: 10.0.0.5\n    gpus:\n      - name: a\n        vram_gb: 8\n"
        "        rpc_prot: 50052\n",
        "workers[0].gpus[0].rpc_prot",
        6,
        "unknown key 'rpc_prot'; did you mean 'rpc_port'?",
    ),
    (
        "port-wrong-type",
        "coordinator:\n  port: eighty\n",
        "coordinator.port",
        2,
        "expected a port number, got string 'eighty'",
    ),
    (
        "rpc-port-out-of-range",
        "workers:\n  - host: 10.0.0.5\n    gpus: [{name: a, vram_gb: 8, rpc_port: 50052}]\n"
        "  - host: 10.0.0.6\n    gpus:\n      - name: b\n        vram_gb: 8\n"
        "        rpc_port: 70000\n",
        "workers[1].gpus[0].rpc_port",
        8,
        "port must be between 1 and 65535, got 70000",
    ),
    (
        "negative-vram",
        "coordinator:\n  gpus:\n    - {name: a, vram_gb: 8}\n    - name: b\n      vram_gb: -4\n",
        "coordinator.gpus[1].vram_gb",
        5,
        "must not be negative, got -4",
    ),
    (
        "negative-size",
        "gateway:\n  max_body_bytes: -1\n",
        "gateway.max_body_bytes",
        2,
        "size must not be negative",
    ),
    (
        "bad-size-text",
        "gateway:\n  max_body_bytes: lots\n",
        "gateway.max_body_bytes",
        2,
        "expected a size such as 1048576 or '8MiB'",
    ),
    (
        "duplicate-model-name",
        "models:\n  a: {path: /a.gguf}\n  b: {path: /b.gguf}\n  a: {path: /c.gguf}\n",
        "models.a",
        4,
        "duplicate key (first defined on line 2)",
    ),
    (
        "two-default-models",
        "models:\n  a:\n    path: /a.gguf\n    default: true\n  b:\n    path: /b.gguf\n"
        "    default: true\n",
        "models.b.default",
        7,
        "only one model can be the default; models.a already is",
    ),
    (
        "bad-draft-backend",
        _PROXY.replace("model_name: small}", "model_name: small, backend: vllm}"),
        "proxy.draft.backend",
        2,
        "must be one of llamacpp, ollama, openai; got 'vllm'",
    ),
    (
        "backend-typo",
        _PROXY.replace("model_name: big}", "model_name: big, backend: olama}"),
        "proxy.target.backend",
        3,
        "did you mean 'ollama'?",
    ),
    (
        "url-scheme",
        _PROXY.replace("http://10.0.0.3:8080", "ftp://10.0.0.3:8080"),
        "proxy.target.url",
        3,
        "URL scheme must be http or https, got 'ftp'",
    ),
    (
        "url-without-scheme",
        _PROXY.replace('"http://10.0.0.2:8081"', "10.0.0.2"),
        "proxy.draft.url",
        2,
        "URL scheme must be http or https, got none",
    ),
    (
        "url-port-out-of-range",
        _PROXY.replace("http://10.0.0.2:8081", "http://10.0.0.2:99999"),
        "proxy.draft.url",
        2,
        "URL port must be between 1 and 65535",
    ),
    (
        "missing-required-key",
        "proxy:\n  port: 8088\n  draft:\n    model_name: small\n"
        "  target: {url: 'http://h:1', model_name: big}\n",
        "proxy.draft.url",
        3,
        "is required",
    ),
    (
        "duplicate-rpc-port-same-host",
        "workers:\n  - host: 10.0.0.5\n    gpus: [{name: a, vram_gb: 8, rpc_port: 50052}]\n"
        "  - host: 10.0.0.5\n    gpus:\n      - {name: b, vram_gb: 8, rpc_port: 50052}\n",
        "workers[1].gpus[0].rpc_port",
        6,
        "rpc port 50052 on host 10.0.0.5 is already used by workers[0].gpus[0]",
    ),
    (
        "route-unknown-model",
        "models:\n  qwen3-32b: {path: /q.gguf}\nroutes:\n  - name: chat\n    target: qwen3-23b\n",
        "routes[0].target",
        5,
        "unknown model 'qwen3-23b'; did you mean 'qwen3-32b'? (models: qwen3-32b)",
    ),
    (
        "route-unknown-draft-model",
        "models:\n  big: {path: /b.gguf}\nroutes:\n  - name: chat\n    target: big\n"
        "    draft_model: tiny\n",
        "routes[0].draft_model",
        6,
        "unknown model 'tiny'",
    ),
    (
        "route-http-target-as-string",
        "routes:\n  - name: chat\n    target: http://10.0.0.3:8080\n",
        "routes[0].target",
        3,
        "an HTTP server is written as a mapping",
    ),
    (
        "route-draft-model-missing",
        "models:\n  big: {path: /b.gguf}\nroutes:\n  - name: chat\n    target: big\n"
        "    draft: model\n",
        "routes[0].draft_model",
        6,
        "is required when draft is 'model'",
    ),
    (
        "route-bad-draft-mode",
        "models:\n  big: {path: /b.gguf}\nroutes:\n  - name: chat\n    target: big\n"
        "    draft: ngrams\n",
        "routes[0].draft",
        6,
        "must be one of model, ngram, prediction, hybrid, none; got 'ngrams'; did you mean",
    ),
    (
        "duplicate-route-name",
        "models:\n  big: {path: /b.gguf}\nroutes:\n  - {name: chat, target: big}\n"
        "  - name: chat\n    target: big\n",
        "routes[1].name",
        5,
        "duplicate route name 'chat' (also routes[0])",
    ),
    (
        "rpc-server-on-all-interfaces",
        "workers:\n  - host: 10.0.0.5\n    rpc_bind: 0.0.0.0\n"
        "    gpus: [{name: a, vram_gb: 8, rpc_port: 50052}]\n",
        "workers[0].rpc_bind",
        3,
        "rpc-server would listen on 0.0.0.0 (all interfaces); llama.cpp RPC has no auth",
    ),
    (
        "rpc-server-on-public-ip",
        "workers:\n  - host: 8.8.8.8\n    gpus: [{name: a, vram_gb: 8, rpc_port: 50052}]\n",
        "workers[0].host",
        2,
        "(a public address)",
    ),
    (
        "worker-outside-private-network",
        "cluster:\n  private_network: 10.0.0.0/24\nworkers:\n  - host: 10.0.1.5\n",
        "workers[0].host",
        4,
        "10.0.1.5 is outside cluster.private_network 10.0.0.0/24",
    ),
    (
        "heartbeat-timeout-not-above-interval",
        "controller:\n  heartbeat_interval_s: 5\n  heartbeat_timeout_s: 5\n",
        "controller.heartbeat_timeout_s",
        3,
        "must be greater than heartbeat_interval_s (5)",
    ),
    ("unsupported-version", "version: 2\n", "version", 1, "unsupported version 2"),
    (
        "bool-for-int",
        "engine:\n  ctx_size: true\n",
        "engine.ctx_size",
        2,
        "expected an integer, got boolean true",
    ),
    (
        "number-for-string",
        "cluster:\n  name: 42\n",
        "cluster.name",
        2,
        "expected a string, got integer 42 (quote it)",
    ),
    (
        "section-not-a-mapping",
        "gateway: 8088\n",
        "gateway",
        1,
        "expected a mapping, got integer 8088",
    ),
    (
        "list-expected",
        "workers:\n  host: 10.0.0.5\n",
        "workers",
        1,
        "expected a list, got a mapping",
    ),
    (
        "non-string-key",
        "models:\n  8080: {path: /a.gguf}\n",
        "models.8080",
        2,
        "keys must be strings, got integer 8080",
    ),
    (
        "bad-network",
        "gateway:\n  metrics_allow: [127.0.0.0/8, lan]\n",
        "gateway.metrics_allow[1]",
        2,
        "expected a network such as 10.0.0.0/24, got 'lan'",
    ),
    (
        "env-unset",
        "cluster:\n  name: lab\n  token: ${TIGHTWAD_TEST_UNSET_TOKEN}\n",
        "cluster.token",
        3,
        "environment variable TIGHTWAD_TEST_UNSET_TOKEN is not set",
    ),
    (
        "ollama-target-without-model-name",
        "routes:\n  - name: chat\n    target:\n      url: http://10.0.0.7:11434\n"
        "      backend: ollama\n",
        "routes[0].target.model_name",
        3,
        "is required",
    ),
    (
        "ollama-url-without-scheme",
        "routes:\n  - name: chat\n    target: {url: '10.0.0.7:11434', model_name: qwen3:8b,"
        " backend: ollama}\n",
        "routes[0].target.url",
        3,
        "URL scheme must be http or https",
    ),
    (
        "upstream-private-target-blocked",
        "upstreams:\n  allow_private: false\nroutes:\n  - name: chat\n    target:\n"
        "      url: http://127.0.0.1:11434\n      model_name: qwen3:8b\n      backend: ollama\n",
        "routes[0].target.url",
        6,
        "http://127.0.0.1:11434: 127.0.0.1 is a private address, and private addresses are "
        "blocked (upstreams.allow_private: false)",
    ),
    (
        "upstream-scheme-not-allowed",
        _PROXY + "upstreams:\n  allowed_schemes: [https]\n",
        "proxy.draft.url",
        2,
        "scheme 'http' is not allowed (only https: upstreams.allowed_schemes)",
    ),
    (
        "upstream-public-drafter-blocked",
        "upstreams: {allow_public: false}\nroutes:\n  - name: chat\n"
        "    target: {url: 'http://10.0.0.7:11434', model_name: big, backend: ollama}\n"
        "    draft_model: {url: 'https://8.8.8.8/v1', model_name: small, backend: openai}\n",
        "routes[0].draft_model.url",
        5,
        "8.8.8.8 is a public address, and only private addresses are allowed",
    ),
    (
        "upstream-unknown-scheme",
        "upstreams:\n  allowed_schemes: [https, ftp]\n",
        "upstreams.allowed_schemes[1]",
        2,
        "must be one of http, https; got 'ftp'",
    ),
    (
        "upstream-no-scheme",
        "upstreams:\n  allowed_schemes: []\n",
        "upstreams.allowed_schemes",
        2,
        "must allow at least one of http, https",
    ),
    (
        "upstream-nothing-reachable",
        "upstreams:\n  allow_private: false\n  allow_public: false\n",
        "upstreams.allow_public",
        3,
        "cannot be false when allow_private is false too",
    ),
    (
        "upstream-key-typo",
        "upstreams:\n  allow_privat: false\n",
        "upstreams.allow_privat",
        2,
        "did you mean 'allow_private'?",
    ),
    (
        "upstream-not-boolean",
        "upstreams:\n  allow_private: no-thanks\n",
        "upstreams.allow_private",
        2,
        "expected true or false",
    ),
]


@pytest.mark.parametrize(
    ("text", "path", "line", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_file_names_path_line_and_reason(
    tmp_path: Path, text: str, path: str, line: int, reason: str
) -> None:
    file = tmp_path / "cluster.yaml"
    file.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(file, env={})
    err = caught.value
    assert (err.key_path, err.line) == (path, line)
    assert reason in err.reason
    assert str(err) == f"{path or '<root>'} (line {line}): {err.reason}"
    assert err.file == str(file)


def test_unknown_key_without_close_match_lists_known_keys(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("engine:\n  zzz: 1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(file, env={})
    assert caught.value.reason.startswith("unknown key 'zzz'; known keys: threads, ctx_size")


def test_line_points_at_explicit_key_overriding_a_merge(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text(
        textwrap.dedent(
            """\
            models:
              base: &base {path: /a.gguf, ctx_size: 4096}
              other:
                <<: *base
                ctx_size: 0
            """
        )
    )
    with pytest.raises(ConfigError) as caught:
        load_config(file, env={})
    assert (caught.value.key_path, caught.value.line) == ("models.other.ctx_size", 5)


def test_mapping_errors_carry_path_but_no_line() -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_mapping({"workers": [{"host": "10.0.0.5", "gpus": [{"name": "a"}]}]})
    err = caught.value
    assert (err.key_path, err.line, err.reason) == (
        "workers[0].gpus[0].vram_gb",
        None,
        "is required",
    )
    assert str(err) == "workers[0].gpus[0].vram_gb: is required"
