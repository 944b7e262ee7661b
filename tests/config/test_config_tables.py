"""One source for the schema's defaults: every table takes each key's default from its
section's dataclass (``_schema``), REQUIRED where the field has none."""

from __future__ import annotations

import dataclasses

import pytest

from tightwad.config import _schema as schema
from tightwad.config import _tables as tables
from tightwad.config._fields import REQUIRED, Field, integer, string, table

SECTIONS = [
    (tables.COORDINATOR, schema.CoordinatorConfig),
    (tables.WORKER, schema.WorkerConfig),
    (tables.ENDPOINT, schema.Endpoint),
    (tables.PROXY, schema.ProxyConfig),
    (tables.BINARIES, schema.BinariesConfig),
    (tables.TLS, schema.TlsConfig),
    (tables.CLUSTER, schema.ClusterSettings),
    (tables.CONTROLLER, schema.ControllerConfig),
    (tables.AGENT_HOST, schema.AgentHost),
    (tables.AGENTS, schema.AgentsConfig),
    (tables.ENGINE, schema.EngineConfig),
    (tables.gateway_table(None), schema.GatewayConfig),
]


def _default(f: dataclasses.Field[object]) -> object:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return REQUIRED


@pytest.mark.parametrize(("fields", "cls"), SECTIONS, ids=lambda x: getattr(x, "__name__", ""))
def test_each_key_defaults_to_its_dataclass_field(fields: dict[str, Field], cls: type) -> None:
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    for key, spec in fields.items():
        assert spec.default == _default(by_name[key]), f"{cls.__name__}.{key}"
    # every field of the section can be set from the file
    assert set(fields) == set(by_name)


def test_a_table_is_built_from_the_dataclass() -> None:
    @dataclasses.dataclass(frozen=True)
    class Section:
        name: str
        size: int = 3
        tags: tuple[str, ...] = dataclasses.field(default_factory=tuple)

    built = table(Section, {"size": integer(1), "name": string, "tags": string})
    assert list(built) == ["size", "name", "tags"]  # the order given: known-key hints use it
    assert [f.default for f in built.values()] == [3, REQUIRED, ()]
    with pytest.raises(KeyError):
        table(Section, {"colour": string})


def test_seed_proxy_and_engine_defaults_still_flow_into_other_sections() -> None:
    proxy = schema.ProxyConfig(
        draft=schema.Endpoint(schema.HttpUrl("http://d", "http", "d", 80), "d"),
        target=schema.Endpoint(schema.HttpUrl("http://t", "http", "t", 80), "t"),
        host="10.0.0.5",
        port=9000,
        auth_token="k",
    )
    gateway = tables.gateway_table(proxy)
    assert (gateway["host"].default, gateway["port"].default, gateway["api_key"].default) == (
        "10.0.0.5",
        9000,
        "k",
    )
    assert tables.model_table(schema.EngineConfig(ctx_size=1234))["ctx_size"].default == 1234
    route = tables.route_table(["m"])
    assert route["draft"].default is None and route["draft_model"].default is None
    assert route["max_draft_tokens"].default == schema.DEFAULT_MAX_DRAFT_TOKENS
