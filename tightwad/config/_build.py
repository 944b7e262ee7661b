"""From a parsed :class:`Document` to a validated :class:`ClusterConfig`.

Sections are read with the tables of ``_tables``, each after the sections it depends on
(engine -> models -> routes, proxy -> gateway); then the cross-section rules of ``_rules`` run
and collect warnings. Every error names the key path
and its line.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from tightwad.config._document import Document, join
from tightwad.config._fields import (
    Parser,
    describe,
    list_of,
    mapping,
    read_section,
    section,
    suggest,
)
from tightwad.config._rules import check, warnings_for
from tightwad.config._schema import (
    AgentsConfig,
    BinariesConfig,
    ClusterConfig,
    ClusterSettings,
    ConfigWarning,
    ControllerConfig,
    CoordinatorConfig,
    DraftMode,
    EngineConfig,
    GatewayConfig,
    ModelConfig,
    ProxyConfig,
    Route,
    WorkerConfig,
)
from tightwad.config._tables import (
    AGENTS,
    BINARIES,
    CLUSTER,
    CONTROLLER,
    COORDINATOR,
    ENGINE,
    PROXY,
    SECTIONS,
    SUPPORTED_VERSION,
    WORKER,
    gateway_table,
    model_table,
    route_table,
    upstreams,
    version,
)
from tightwad.url_policy import UrlPolicy

__all__ = ["build_config"]

# --- the builder ---------------------------------------------------------------------------


def build_config(doc: Document) -> ClusterConfig:
    """Validate ``doc`` and build the ClusterConfig, or raise ConfigError."""
    raw = _root(doc)
    read = _Reader(doc, raw)
    engine = read("engine", section(ENGINE, EngineConfig), EngineConfig())
    models = read("models", _models_parser(engine), MappingProxyType({}))
    proxy = read("proxy", section(PROXY, ProxyConfig), None)
    config = ClusterConfig(
        version=read("version", version, SUPPORTED_VERSION),
        cluster=read("cluster", section(CLUSTER, ClusterSettings), ClusterSettings()),
        controller=read("controller", section(CONTROLLER, ControllerConfig), ControllerConfig()),
        agents=read("agents", section(AGENTS, AgentsConfig), AgentsConfig()),
        gateway=section(gateway_table(proxy), GatewayConfig)(
            doc, "gateway", raw.get("gateway") or {}
        ),
        engine=engine,
        routes=read("routes", list_of(_route_parser(models)), ()),
        proxy=proxy,
        coordinator=read("coordinator", section(COORDINATOR, CoordinatorConfig), None),
        workers=read("workers", list_of(section(WORKER, WorkerConfig)), ()),
        models=models,
        binaries=read("binaries", section(BINARIES, BinariesConfig), BinariesConfig()),
        upstreams=read("upstreams", upstreams, UrlPolicy()),
        source=doc.file,
    )
    check(doc, config)
    return _with_warnings(config, warnings_for(doc, config, "gateway" in raw))


class _Reader:
    """Reads one top-level section if present (null counts as absent)."""

    def __init__(self, doc: Document, raw: Mapping[str, object]) -> None:
        self.doc = doc
        self.raw = raw

    def __call__(self, key: str, parse: Parser[Any], default: Any) -> Any:
        value = self.raw.get(key)
        return default if value is None else parse(self.doc, key, value)


def _root(doc: Document) -> dict[str, object]:
    if not isinstance(doc.data, dict):
        raise doc.error(
            "",
            f"the file must be a mapping of sections ({', '.join(SECTIONS)}), "
            f"got {describe(doc.data)}",
        )
    raw = mapping(doc, "", doc.data)
    for key in raw:
        if key not in SECTIONS:
            hint = suggest(key, SECTIONS) or f"; known sections: {', '.join(SECTIONS)}"
            raise doc.error(key, f"unknown key {key!r}{hint}")
    return raw


def _models_parser(engine: EngineConfig) -> Parser[Mapping[str, ModelConfig]]:
    table = model_table(engine)

    def parse(doc: Document, path: str, value: object) -> Mapping[str, ModelConfig]:
        raw = mapping(doc, path, value)
        return MappingProxyType(
            {
                name: ModelConfig(name=name, **read_section(doc, join(path, name), item, table))
                for name, item in raw.items()
            }
        )

    return parse


def _route_parser(models: Collection[str]) -> Parser[Route]:
    table = route_table(models)

    def parse(doc: Document, path: str, value: object) -> Route:
        fields = read_section(doc, path, value, table)
        first = fields.pop("draft_model")
        drafters = (first, *fields.pop("drafters")) if first else fields.pop("drafters")
        mode = fields.pop("draft") or (DraftMode.MODEL if drafters else DraftMode.NONE)
        _check_draft_mode(doc, path, mode, drafters)
        return Route(draft=mode, drafters=drafters, **fields)

    return parse


def _check_draft_mode(doc: Document, path: str, mode: str, drafters: tuple[object, ...]) -> None:
    mode = str(mode)  # the value, also in messages (a DraftMode's repr names the class)
    if mode in ("model", "hybrid") and not drafters:
        raise doc.error(
            join(path, "draft_model"),
            f"is required when draft is {mode!r}",
            line_of=join(path, "draft") if doc.line(join(path, "draft")) else path,
        )
    if mode not in ("model", "hybrid") and drafters:
        key = "draft_model" if doc.line(join(path, "draft_model")) else "drafters"
        raise doc.error(
            join(path, key), f"is only used when draft is 'model' or 'hybrid', not {mode!r}"
        )


def _with_warnings(config: ClusterConfig, warnings: list[ConfigWarning]) -> ClusterConfig:
    return replace(config, warnings=tuple(warnings))
