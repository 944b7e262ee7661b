"""Cluster state in SQLite: nodes, devices, model files, deployments, placements, events.

Guarantees:

- one connection, the single writer, used from one thread (the controller's event loop;
  ``check_same_thread`` enforces it); WAL journal, ``synchronous=NORMAL``, foreign keys on;
- versioned migrations: ``MIGRATIONS[i]`` takes the schema from version ``i`` to ``i + 1``,
  each applied once in its own transaction and recorded in ``schema_version``; opening an
  up-to-date database applies nothing; a database newer than this code is refused;
- every write is one transaction: a crash leaves the previous state or the new one;
- a restart reloads everything (``load_nodes``, ``load_deployments``, ``events_since``).

Values are stored as JSON built from the domain dataclasses (never protobuf).
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tightwad.controller.domain import (
    Deployment,
    DeploymentSpec,
    DeploymentState,
    EngineView,
    Event,
    EventLevel,
    NodeRecord,
    ProcessKind,
    ProcessView,
    RouteInfo,
    ServeMode,
)
from tightwad.controller.ids import DeploymentId, DeviceId, NodeId
from tightwad.controller.placement import Assignment, Constraints, Placement
from tightwad.engine.device_facts import Backend, DeviceInfo, HostFacts, Vendor
from tightwad.engine.model_facts import ModelFacts
from tightwad.errors import ConfigError

__all__ = ["MIGRATIONS", "Store"]

MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1: the initial schema
    """
    CREATE TABLE nodes (
        node_id TEXT PRIMARY KEY,
        address TEXT NOT NULL,
        host TEXT NOT NULL,
        processes TEXT NOT NULL DEFAULT '[]',
        engines TEXT NOT NULL DEFAULT '[]',
        last_seen REAL NOT NULL DEFAULT 0,
        draining INTEGER NOT NULL DEFAULT 0,
        message TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE devices (
        node_id TEXT NOT NULL REFERENCES nodes(node_id) ON DELETE CASCADE,
        device_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        info TEXT NOT NULL,
        PRIMARY KEY (node_id, device_id)
    );
    CREATE TABLE model_files (
        node_id TEXT NOT NULL REFERENCES nodes(node_id) ON DELETE CASCADE,
        path TEXT NOT NULL,
        facts TEXT NOT NULL,
        PRIMARY KEY (node_id, path)
    );
    CREATE TABLE deployments (
        deployment_id TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        state TEXT NOT NULL,
        message TEXT NOT NULL DEFAULT '',
        route TEXT,
        updated REAL NOT NULL,
        generation INTEGER NOT NULL DEFAULT 1,
        model_path TEXT NOT NULL DEFAULT '',
        loaded_generation INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE placements (
        deployment_id TEXT PRIMARY KEY REFERENCES deployments(deployment_id)
            ON DELETE CASCADE,
        placement TEXT NOT NULL
    );
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time REAL NOT NULL,
        level TEXT NOT NULL,
        kind TEXT NOT NULL,
        node_id TEXT NOT NULL DEFAULT '',
        deployment_id TEXT NOT NULL DEFAULT '',
        message TEXT NOT NULL,
        fields TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX events_deployment ON events(deployment_id, id);
    """,
)


class Store:
    """The controller's SQLite database. ``Store.open(path)``; ``":memory:"`` for tests."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @classmethod
    def open(cls, path: Path | str) -> Store:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(str(path), isolation_level=None)
        except sqlite3.Error as exc:
            raise ConfigError("controller.state_path", f"cannot open {path}: {exc}") from exc
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        store = cls(conn)
        store.migrate()
        return store

    def close(self) -> None:
        self._conn.close()

    # --- migrations ----------------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        row = self._conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name='schema_version'"
        ).fetchone()
        if row is None:
            return 0
        got = self._conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(got[0] or 0)

    def migrate(self, migrations: Sequence[str] = MIGRATIONS) -> list[int]:
        """Apply the missing migrations in order; the versions applied (empty if none)."""
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
            "applied REAL NOT NULL DEFAULT (strftime('%s','now')))"
        )
        current = self.schema_version
        if current > len(migrations):
            raise ConfigError(
                "controller.state_path",
                f"state database has schema version {current}, newer than this controller "
                f"({len(migrations)}); upgrade the controller",
            )
        applied = []
        for version in range(current + 1, len(migrations) + 1):
            with self._tx() as conn:
                for statement in _statements(migrations[version - 1]):
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version(version) VALUES (?)", (version,))
            applied.append(version)
        return applied

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # --- nodes ---------------------------------------------------------------------------

    def save_node(self, node: NodeRecord) -> None:
        """Insert or replace a node with its devices and model files."""
        with self._tx() as c:
            c.execute(
                "INSERT INTO nodes(node_id, address, host, processes, engines, last_seen, "
                "draining, message) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(node_id) DO UPDATE SET "
                "address=excluded.address, host=excluded.host, processes=excluded.processes, "
                "engines=excluded.engines, last_seen=excluded.last_seen, "
                "draining=excluded.draining, message=excluded.message",
                (
                    node.node_id,
                    node.address,
                    _dump(node.host),
                    _dump(list(node.processes)),
                    _dump(list(node.engines)),
                    node.last_seen,
                    int(node.draining),
                    node.message,
                ),
            )
            c.execute("DELETE FROM devices WHERE node_id=?", (node.node_id,))
            c.executemany(
                "INSERT INTO devices(node_id, device_id, position, info) VALUES (?,?,?,?)",
                [(node.node_id, d.id, i, _dump(d)) for i, d in enumerate(node.devices)],
            )
            c.execute("DELETE FROM model_files WHERE node_id=?", (node.node_id,))
            c.executemany(
                "INSERT INTO model_files(node_id, path, facts) VALUES (?,?,?)",
                [(node.node_id, m.path, _dump(m)) for m in node.models],
            )

    def touch_node(self, node_id: NodeId, last_seen: float) -> None:
        with self._tx() as c:
            c.execute("UPDATE nodes SET last_seen=? WHERE node_id=?", (last_seen, node_id))

    def delete_node(self, node_id: NodeId) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM nodes WHERE node_id=?", (node_id,))

    def load_nodes(self) -> list[NodeRecord]:
        """Every node, ``connected=False`` (agents re-attach after a restart)."""
        devices: dict[str, list[DeviceInfo]] = {}
        for node_id, info in self._conn.execute(
            "SELECT node_id, info FROM devices ORDER BY node_id, position"
        ):
            devices.setdefault(node_id, []).append(_device(json.loads(info)))
        models: dict[str, list[ModelFacts]] = {}
        for node_id, facts in self._conn.execute(
            "SELECT node_id, facts FROM model_files ORDER BY node_id, path"
        ):
            models.setdefault(node_id, []).append(_model(json.loads(facts)))
        out = []
        for row in self._conn.execute(
            "SELECT node_id, address, host, processes, engines, last_seen, draining, message "
            "FROM nodes ORDER BY node_id"
        ):
            node_id, address, host, procs, engines, last_seen, draining, message = row
            out.append(
                NodeRecord(
                    node_id=NodeId(node_id),
                    address=address,
                    host=HostFacts(**json.loads(host)),
                    devices=tuple(devices.get(node_id, ())),
                    models=tuple(models.get(node_id, ())),
                    processes=tuple(_process(p) for p in json.loads(procs)),
                    engines=tuple(_engine(e) for e in json.loads(engines)),
                    last_seen=last_seen,
                    connected=False,
                    draining=bool(draining),
                    message=message,
                )
            )
        return out

    # --- deployments ---------------------------------------------------------------------

    def save_deployment(self, dep: Deployment) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO deployments(deployment_id, spec, state, message, route, updated, "
                "generation, model_path, loaded_generation) VALUES (?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT(deployment_id) DO UPDATE SET spec=excluded.spec, "
                "state=excluded.state, message=excluded.message, route=excluded.route, "
                "updated=excluded.updated, generation=excluded.generation, "
                "model_path=excluded.model_path, loaded_generation=excluded.loaded_generation",
                (
                    dep.deployment_id,
                    _dump(dep.spec),
                    dep.state.value,
                    dep.message,
                    _dump(dep.route) if dep.route else None,
                    dep.updated,
                    dep.generation,
                    dep.model_path,
                    dep.loaded_generation,
                ),
            )
            if dep.placement is None:
                c.execute("DELETE FROM placements WHERE deployment_id=?", (dep.deployment_id,))
            else:
                c.execute(
                    "INSERT INTO placements(deployment_id, placement) VALUES (?,?) "
                    "ON CONFLICT(deployment_id) DO UPDATE SET placement=excluded.placement",
                    (dep.deployment_id, _dump(dep.placement)),
                )

    def delete_deployment(self, deployment_id: DeploymentId) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM deployments WHERE deployment_id=?", (deployment_id,))

    def load_deployments(self) -> list[Deployment]:
        placements = {
            dep_id: _placement(json.loads(text))
            for dep_id, text in self._conn.execute(
                "SELECT deployment_id, placement FROM placements"
            )
        }
        out = []
        for row in self._conn.execute(
            "SELECT deployment_id, spec, state, message, route, updated, generation, model_path, "
            "loaded_generation FROM deployments ORDER BY deployment_id"
        ):
            dep_id, spec, state, message, route, updated, generation, model_path, loaded = row
            out.append(
                Deployment(
                    deployment_id=DeploymentId(dep_id),
                    spec=_spec(json.loads(spec)),
                    placement=placements.get(dep_id),
                    state=DeploymentState(state),
                    message=message,
                    route=RouteInfo(**json.loads(route)) if route else None,
                    updated=updated,
                    generation=generation,
                    model_path=model_path,
                    loaded_generation=loaded,
                )
            )
        return out

    # --- events --------------------------------------------------------------------------

    def append_event(
        self,
        time: float,
        level: EventLevel,
        kind: str,
        message: str,
        *,
        node_id: str = "",
        deployment_id: str = "",
        fields: Mapping[str, str] | None = None,
    ) -> Event:
        with self._tx() as c:
            cur = c.execute(
                "INSERT INTO events(time, level, kind, node_id, deployment_id, message, fields) "
                "VALUES (?,?,?,?,?,?,?)",
                (
                    time,
                    level.value,
                    kind,
                    node_id,
                    deployment_id,
                    message,
                    json.dumps(dict(fields or {}), sort_keys=True),
                ),
            )
            event_id = int(cur.lastrowid or 0)
        return Event(
            event_id, time, level, kind, message, node_id, deployment_id, dict(fields or {})
        )

    def events_since(self, since: int = 0, limit: int = 10_000) -> list[Event]:
        """Events with ``event_id > since``, oldest first."""
        return [
            Event(
                row[0],
                row[1],
                EventLevel(row[2]),
                row[3],
                row[6],
                row[4],
                row[5],
                json.loads(row[7]),
            )
            for row in self._conn.execute(
                "SELECT id, time, level, kind, node_id, deployment_id, message, fields "
                "FROM events WHERE id > ? ORDER BY id LIMIT ?",
                (since, limit),
            )
        ]

    def last_event_id(self) -> int:
        row = self._conn.execute("SELECT MAX(id) FROM events").fetchone()
        return int(row[0] or 0)


# --- JSON of domain values -----------------------------------------------------------------


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _default(value: object) -> Any:
    if isinstance(value, frozenset):
        return sorted(value)
    raise TypeError(f"cannot store {type(value).__name__}")


def _dump(value: Any) -> str:
    if isinstance(value, list):
        data: Any = [dataclasses.asdict(v) for v in value]
    else:
        data = dataclasses.asdict(value)
    return json.dumps(data, default=_default, sort_keys=True)


def _device(d: dict[str, Any]) -> DeviceInfo:
    d["vendor"] = Vendor(d["vendor"])
    d["backend"] = Backend(d["backend"])
    return DeviceInfo(**d)


def _model(d: dict[str, Any]) -> ModelFacts:
    d["layer_bytes"] = tuple(d["layer_bytes"])
    return ModelFacts(**d)


def _process(d: dict[str, Any]) -> ProcessView:
    d["kind"] = ProcessKind(d["kind"])
    d["device_ids"] = tuple(d["device_ids"])
    return ProcessView(**d)


def _engine(d: dict[str, Any]) -> EngineView:
    d["devices"] = tuple(d["devices"])
    return EngineView(**d)


def _constraints(d: dict[str, Any]) -> Constraints:
    return Constraints(
        pin_device_ids=frozenset(DeviceId(x) for x in d["pin_device_ids"]),
        exclude_device_ids=frozenset(DeviceId(x) for x in d["exclude_device_ids"]),
        exclude_node_ids=frozenset(NodeId(x) for x in d["exclude_node_ids"]),
        coordinator=NodeId(d["coordinator"]) if d["coordinator"] else None,
    )


def _spec(d: dict[str, Any]) -> DeploymentSpec:
    return DeploymentSpec(
        model=d["model"],
        ctx_size=d["ctx_size"],
        kv_type=d["kv_type"],
        constraints=_constraints(d["constraints"]),
        serve_mode=ServeMode(d["serve_mode"]),
    )


def _placement(d: dict[str, Any]) -> Placement:
    return Placement(
        model=d["model"],
        coordinator=NodeId(d["coordinator"]) if d["coordinator"] else None,
        assignments=tuple(Assignment(**a) for a in d["assignments"]),
        tensor_split=tuple(d["tensor_split"]),
        n_gpu_layers=d["n_gpu_layers"],
        fits=d["fits"],
        reason=d["reason"],
    )
