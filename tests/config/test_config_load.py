"""Loading cluster files: the seed's example unchanged, Tightwad's sections, resolution."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

import pytest

from tightwad.config import (
    ClusterConfig,
    Endpoint,
    EngineAddress,
    HttpUrl,
    ModelRef,
    Route,
    config_from_mapping,
    default_config,
    load_config,
    resolve_config_path,
)
from tightwad.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "configs" / "cluster.yaml"
EXAMPLE = REPO / "configs" / "tightwad.example.yaml"

# The seed project's other example (its "Unraid coordinator" file), in its own shape.
SEED_UNRAID = """\
coordinator:
  host: 0.0.0.0
  port: 8080
  backend: cuda
  gpus:
    - name: "Quadro P400"
      vram_gb: 0
workers:
  - host: 192.168.1.100
    ssh_user: youruser
    model_dir: "C:/Users/youruser/models"
    gpus:
      - name: "RTX 4070 Ti Super"
        vram_gb: 16
        rpc_port: 50052
  - host: 192.168.1.101
    ssh_user: youruser
    model_dir: ~/models
    gpus:
      - name: "RTX 2070"
        vram_gb: 8
        rpc_port: 50052
models:
  llama-3.3-70b:
    path: /mnt/user/models/Llama-3.3-70B-Instruct-Q4_K_M.gguf
    ctx_size: 8192
    predict: 4096
    flash_attn: true
    default: true
proxy:
  host: 0.0.0.0
  port: 8088
  max_draft_tokens: 32
  fallback_on_draft_failure: true
  draft:
    url: http://127.0.0.1:8081
    model_name: llama-3.2-3b
    backend: llamacpp
  target:
    url: http://127.0.0.1:8080
    model_name: llama-3.3-70b
    backend: llamacpp
binaries:
  coordinator: /usr/local/bin/llama-server
  rpc_server: rpc-server
"""


def test_seed_example_loads_with_its_values() -> None:
    config = load_config(SEED, env={})
    coordinator = config.coordinator
    assert coordinator is not None
    assert (coordinator.host, coordinator.port, coordinator.backend) == ("0.0.0.0", 8080, "hip")
    assert [(g.name, g.vram_gb) for g in coordinator.gpus] == [
        ("7900 XTX #0", 24.0),
        ("7900 XTX #1", 24.0),
    ]
    assert config.rpc_addresses == ("192.168.1.100:50052", "192.168.1.100:50053")
    assert config.total_vram_gb == 76
    assert config.tensor_split() == (0.32, 0.32, 0.21, 0.16)
    assert list(config.models) == ["qwen3-72b", "deepseek-r1-70b", "llama3.3-70b"]
    default = config.default_model()
    assert default is not None
    assert (default.name, default.path) == ("qwen3-72b", "/models/Qwen3-72B-Q4_K_M.gguf")
    assert (default.ctx_size, default.predict, default.flash_attn) == (8192, 4096, "on")
    assert (config.binaries.coordinator, config.binaries.rpc_server) == (
        "/usr/local/bin/llama-server",
        "rpc-server.exe",
    )
    assert config.source == str(SEED)


def test_seed_proxy_is_parsed_and_maps_to_a_route() -> None:
    config = load_config(SEED, env={})
    proxy = config.proxy
    assert proxy is not None
    assert (proxy.host, proxy.port, proxy.max_draft_tokens) == ("0.0.0.0", 8088, 8)
    assert proxy.fallback_on_draft_failure is True
    assert proxy.draft == Endpoint(
        HttpUrl("http://192.168.1.50:11434", "http", "192.168.1.50", 11434), "qwen3:8b", "ollama"
    )
    assert proxy.target.model_name == "qwen3:32b"
    routes = config.effective_routes()
    assert routes[0] == Route(
        name="qwen3:32b",
        target=proxy.target,
        draft="model",
        drafters=(proxy.draft,),
        max_draft_tokens=8,
    )
    assert [r.name for r in routes[1:]] == list(config.models)
    assert all(r.draft == "none" and isinstance(r.target, ModelRef) for r in routes[1:])
    # without a gateway section the gateway takes the proxy's address
    assert (config.gateway.host, config.gateway.port, config.gateway.api_key) == (
        "0.0.0.0",
        8088,
        None,
    )


def test_seed_example_warns_about_unauthenticated_public_listeners() -> None:
    warnings = load_config(SEED, env={}).warnings
    assert [(w.path, w.line) for w in warnings] == [("coordinator.host", 8), ("proxy.host", 52)]
    assert "0.0.0.0" in warnings[0].message


def test_seed_unraid_example_loads(tmp_path: Path) -> None:
    file = tmp_path / "cluster.yaml"
    file.write_text(SEED_UNRAID)
    config = load_config(file, env={})
    assert [w.ssh_user for w in config.workers] == ["youruser", "youruser"]
    assert config.workers[0].model_dir == "C:/Users/youruser/models"
    assert config.workers[1].model_dir == "~/models"  # a path on that worker: not expanded here
    assert config.all_gpus[0].vram_gb == 0
    # the same rpc port on two different hosts is fine
    assert config.rpc_addresses == ("192.168.1.100:50052", "192.168.1.101:50052")
    assert config.proxy is not None and config.proxy.max_draft_tokens == 32


def test_tightwad_example_loads_with_every_section() -> None:
    config = load_config(EXAMPLE, env={"TIGHTWAD_TOKEN": "s3cret"})
    assert config.cluster.name == "homelab"
    assert config.cluster.token == "s3cret"
    assert config.cluster.private_network == ipaddress.ip_network("192.168.1.0/24")
    assert config.controller.dial_address == "192.168.1.10:50051"
    assert config.gateway.max_body_bytes == 8 * 1024 * 1024
    assert config.gateway.api_key is None  # ${TIGHTWAD_API_KEY:-} expands to nothing
    assert config.engine.threads == 8
    assert config.models["qwen3-1.7b"].ctx_size == 8192  # from engine.ctx_size
    assert config.models["qwen3-32b"].flash_attn == "auto"
    chat, edit, remote = config.routes
    assert chat.draft_model == ModelRef("qwen3-1.7b")
    assert isinstance(chat.drafters[1], Endpoint) and chat.drafters[1].backend == "ollama"
    assert (chat.max_concurrency, edit.draft, edit.queue_size) == (2, "prediction", 8)
    assert remote.target == EngineAddress("192.168.1.100", 50071)
    assert config.effective_routes() == config.routes
    laptop = config.agents.resolve("laptop")
    assert (laptop.dial_address, laptop.host) == ("192.168.1.50:50062", "0.0.0.0")
    assert config.agents.resolve("desktop").model_dirs == (Path("/data/models"),)
    assert dict(config.coordinator.env if config.coordinator else {}) == {
        "GGML_CUDA_NO_PINNED": "1"
    }


def test_tightwad_example_needs_its_token() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(EXAMPLE, env={})
    assert (caught.value.key_path, caught.value.line) == ("cluster.token", 17)


def test_values_are_frozen() -> None:
    config = load_config(SEED, env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.gateway.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.models["x"] = config.models["qwen3-72b"]  # type: ignore[index]


def test_default_config_is_single_host_on_loopback() -> None:
    config = default_config()
    assert config == default_config()
    assert config.cluster.name == "local"
    assert (config.gateway.host, config.controller.host, config.agents.host) == ("127.0.0.1",) * 3
    assert config.agents.resolve("local").dial_address == "127.0.0.1:50061"
    assert config.effective_routes() == ()
    assert config.warnings == ()


def test_config_from_mapping_applies_the_file_rules() -> None:
    config = config_from_mapping(
        {
            "models": {"m": {"path": Path("/m.gguf"), "flash_attn": False}},
            "routes": [{"name": "chat", "target": "m", "draft": "ngram"}],
            "gateway": {"api_key": "${KEY:-k}", "max_body_bytes": "1 MB"},
        },
        env={},
    )
    assert config.models["m"].path == "/m.gguf"
    assert config.models["m"].flash_attn == "off"
    assert config.routes == (Route(name="chat", target=ModelRef("m"), draft="ngram"),)
    assert (config.gateway.max_body_bytes, config.gateway.api_key) == (1_000_000, "k")
    # values from code are not re-typed: a port given as text stays text and is refused
    with pytest.raises(ConfigError, match=r"gateway\.port: expected a port number"):
        config_from_mapping({"gateway": {"port": "${PORT:-9000}"}}, env={})


@pytest.mark.parametrize(
    ("text", "expected"),
    [(4096, 4096), ("8MiB", 8 * 2**20), ("8MB", 8_000_000), ("512k", 512 * 1024), ("2 GiB", 2**31)],
)
def test_sizes(text: object, expected: int) -> None:
    config = config_from_mapping({"gateway": {"max_body_bytes": text}}, env={})
    assert config.gateway.max_body_bytes == expected


def test_draft_mode_defaults_from_drafters() -> None:
    config = config_from_mapping(
        {
            "models": {"big": {"path": "/b"}, "small": {"path": "/s"}},
            "routes": [
                {"name": "a", "target": "big", "draft_model": "small"},
                {"name": "b", "target": "big"},
            ],
        },
        env={},
    )
    assert [(r.draft, r.draft_model) for r in config.routes] == [
        ("model", ModelRef("small")),
        ("none", None),
    ]


def test_backend_aliases_are_normalized() -> None:
    endpoint = {"url": "https://api.example.com/v1", "model_name": "m"}
    config = config_from_mapping(
        {
            "proxy": {
                "draft": {**endpoint, "backend": "llama-server"},
                "target": {**endpoint, "backend": "openai"},
            },
            "coordinator": {"backend": "rocm"},
        },
        env={},
    )
    assert config.proxy is not None
    assert (config.proxy.draft.backend, config.proxy.target.backend) == ("llamacpp", "openai")
    assert config.proxy.target.url.port == 443
    assert config.coordinator is not None and config.coordinator.backend == "hip"


# --- where the file comes from -------------------------------------------------------------


def _write(path: Path, name: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"cluster:\n  name: {name}\n")
    return path


def test_explicit_path_wins_over_env(tmp_path: Path) -> None:
    explicit = _write(tmp_path / "a.yaml", "explicit")
    from_env = _write(tmp_path / "b.yaml", "from-env")
    config = load_config(explicit, env={"TIGHTWAD_CONFIG": str(from_env)})
    assert config.cluster.name == "explicit"


def test_tightwad_config_env_var_is_used(tmp_path: Path) -> None:
    from_env = _write(tmp_path / "b.yaml", "from-env")
    assert load_config(env={"TIGHTWAD_CONFIG": str(from_env)}).cluster.name == "from-env"


def test_cwd_default_is_used_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path / "configs" / "cluster.yaml", "cwd")
    monkeypatch.chdir(tmp_path)
    assert load_config(env={}).cluster.name == "cwd"
    assert resolve_config_path(env={}) == Path("configs/cluster.yaml")


def test_nothing_found_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_config(env={})
    reason = caught.value.reason
    assert "-c PATH" in reason and "TIGHTWAD_CONFIG is not set" in reason
    assert str(tmp_path / "configs" / "cluster.yaml") in reason


def test_missing_file_from_env_names_the_variable(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(env={"TIGHTWAD_CONFIG": str(missing)})
    assert caught.value.reason == f"cannot read {missing} (from TIGHTWAD_CONFIG): no such file"
    assert caught.value.file == str(missing)


def test_cluster_config_equality_ignores_source(tmp_path: Path) -> None:
    a = load_config(_write(tmp_path / "a.yaml", "same"), env={})
    b = load_config(_write(tmp_path / "b.yaml", "same"), env={})
    assert a == b and a.source != b.source
    assert isinstance(a, ClusterConfig)
