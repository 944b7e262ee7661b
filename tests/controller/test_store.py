"""The SQLite store: migrations, restart reload, event cursor."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tightwad.controller.domain import (
    Deployment,
    DeploymentSpec,
    DeploymentState,
    EngineView,
    EventLevel,
    NodeRecord,
    ProcessKind,
    ProcessView,
    RouteInfo,
    ServeMode,
)
from tightwad.controller.ids import DeploymentId, DeviceId, NodeId
from tightwad.controller.placement import Constraints, PlacementRequest, plan_placement
from tightwad.controller.store import MIGRATIONS, Store
from tightwad.engine.device_facts import Backend, HostFacts
from tightwad.errors import ConfigError

from .factories import GiB, cand, device, facts


def node(node_id: str = "a") -> NodeRecord:
    return NodeRecord(
        node_id=NodeId(node_id),
        address="10.0.0.1:50061",
        host=HostFacts(
            "host-a",
            "linux",
            "x86_64",
            8,
            32 * GiB,
            30 * GiB,
            llama_cpp_version="b6000",
            rpc_protocol_version="3.0.0",
        ),
        devices=(device("cpu:a", 30 * GiB, backend=Backend.CPU), device("GPU-1", 8 * GiB)),
        models=(facts(name="small"),),
        processes=(
            ProcessView(
                "rpc-GPU-1", ProcessKind.RPC_SERVER, "running", "10.0.0.1", 50052, True, ("GPU-1",)
            ),
        ),
        engines=(EngineView("small", True, ("CUDA0",)),),
        last_seen=123.5,
        connected=True,
    )


def deployment() -> Deployment:
    f = facts()
    cands = [
        cand("a", device("cpu:a", 30 * GiB, backend=Backend.CPU)),
        cand("a", device("GPU-1", 8 * GiB)),
    ]
    cons = Constraints(pin_device_ids=frozenset({DeviceId("GPU-1")}), coordinator=NodeId("a"))
    p = plan_placement(PlacementRequest("small", 2048, "q8_0", cons), f, cands)
    assert p.fits
    return Deployment(
        DeploymentId("dep-1"),
        DeploymentSpec("small", 2048, "q8_0", cons, ServeMode.LLAMA_SERVER),
        placement=p,
        state=DeploymentState.SERVING,
        route=RouteInfo("small", http_url="http://10.0.0.1:8080"),
        updated=99.0,
        model_path="/models/m.gguf",
    )


def test_migrate_from_empty_then_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "state" / "controller.db"
    store = Store.open(path)
    assert store.schema_version == len(MIGRATIONS)
    assert store.migrate() == []  # nothing left to apply
    store.close()
    again = Store.open(path)
    assert again.migrate() == []
    assert again.schema_version == len(MIGRATIONS)
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_later_migration_applies_once(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    Store.open(path).close()
    store = Store.open(path)
    extra = (*MIGRATIONS, "ALTER TABLE nodes ADD COLUMN zone TEXT NOT NULL DEFAULT ''")
    assert store.migrate(extra) == [len(MIGRATIONS) + 1]
    assert store.migrate(extra) == []
    store.save_node(node())
    assert store.load_nodes()[0].node_id == "a"


def test_newer_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    store = Store.open(path)
    store.migrate((*MIGRATIONS, "CREATE TABLE later (x INTEGER)"))
    store.close()
    with pytest.raises(ConfigError, match="newer than this controller"):
        Store.open(path)


def test_failed_migration_rolls_back(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "c.db")
    with pytest.raises(sqlite3.Error):
        store.migrate((*MIGRATIONS, "CREATE TABLE ok1 (x INTEGER); CREATE TABLE nodes (x)"))
    assert store.schema_version == len(MIGRATIONS)
    tables = {r[0] for r in store._conn.execute("SELECT name FROM sqlite_master")}
    assert "ok1" not in tables


def test_reopen_preserves_nodes_deployments_and_events(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    store = Store.open(path)
    store.save_node(node())
    dep = deployment()
    store.save_deployment(dep)
    e1 = store.append_event(1.0, EventLevel.INFO, "node_joined", "a joined", node_id="a")
    store.close()

    store = Store.open(path)
    [loaded] = store.load_nodes()
    assert loaded == node().__class__(**{**_asdict(node()), "connected": False})
    assert store.load_deployments() == [dep]
    assert store.events_since(0) == [e1]


def _asdict(n: NodeRecord) -> dict[str, object]:
    return {f: getattr(n, f) for f in n.__slots__}  # type: ignore[attr-defined]


def test_save_node_replaces_devices_and_models() -> None:
    store = Store.open(":memory:")
    store.save_node(node())
    slimmer = NodeRecord(NodeId("a"), "10.0.0.9:1", node().host, devices=(), models=())
    store.save_node(slimmer)
    [got] = store.load_nodes()
    assert got.devices == () and got.models == () and got.address == "10.0.0.9:1"
    store.delete_node(NodeId("a"))
    assert store.load_nodes() == []


def test_event_cursor() -> None:
    store = Store.open(":memory:")
    ids = [
        store.append_event(
            float(i), EventLevel.WARNING, "k", f"m{i}", fields={"i": str(i)}
        ).event_id
        for i in range(5)
    ]
    assert ids == sorted(ids) and len(set(ids)) == 5
    after = store.events_since(ids[1])
    assert [e.message for e in after] == ["m2", "m3", "m4"]
    assert after[0].fields == {"i": "2"}
    assert store.events_since(ids[-1]) == []
    assert store.last_event_id() == ids[-1]


def test_deleting_a_deployment_drops_its_placement() -> None:
    store = Store.open(":memory:")
    store.save_deployment(deployment())
    store.delete_deployment(DeploymentId("dep-1"))
    assert store.load_deployments() == []
    assert store._conn.execute("SELECT COUNT(*) FROM placements").fetchone()[0] == 0
