"""reconcile(): the actions a sync decides for hand-built states."""

from __future__ import annotations

from dataclasses import replace

from tightwad.agent.inventory.domain import Backend, HostFacts
from tightwad.controller.domain import (
    Deployment,
    DeploymentSpec,
    DeploymentState,
    EngineView,
    NodeRecord,
    NodeState,
    ProcessKind,
    ProcessView,
    RouteInfo,
    ServeMode,
)
from tightwad.controller.ids import DeploymentId, DeviceId, NodeId
from tightwad.controller.placement import (
    Candidate,
    Constraints,
    PlacementOptions,
    PlacementRequest,
    plan_placement,
)
from tightwad.controller.reconcile import (
    LoadEngine,
    MarkState,
    Replan,
    StartLlamaServer,
    StartRpcServer,
    StopProcess,
    UnloadEngine,
    reconcile,
)
from tightwad.controller.registry import node_state

from .factories import GiB, MiB, device, facts

NOW = 1000.0
HOST = HostFacts("h", "linux", "x86_64", 4, 8 * GiB, 8 * GiB)
DEP = DeploymentId("dep-1")


def nodes(**procs: tuple[ProcessView, ...]) -> dict[NodeId, NodeRecord]:
    a = NodeRecord(
        NodeId("a"),
        "10.0.0.1:50061",
        HOST,
        devices=(
            device("cpu:a", 4 * GiB, backend=Backend.CPU),
            device("GPU-a", 1 * GiB, ggml_name="CUDA0"),
        ),
        processes=procs.get("a", ()),
        last_seen=NOW,
        connected=True,
    )
    b = NodeRecord(
        NodeId("b"),
        "10.0.0.2:50061",
        HOST,
        devices=(device("cpu:b", 4 * GiB, backend=Backend.CPU), device("GPU-b", 1 * GiB)),
        processes=procs.get("b", ()),
        last_seen=NOW,
        connected=True,
    )
    return {a.node_id: a, b.node_id: b}


def pooled(mode: ServeMode = ServeMode.ENGINE) -> Deployment:
    ns = nodes()
    cands = [Candidate(n.node_id, d, n.rpc_host, 50052) for n in ns.values() for d in n.devices]
    cons = Constraints(
        coordinator=NodeId("a"),
        pin_device_ids=frozenset({DeviceId("GPU-a"), DeviceId("GPU-b")}),
        exclude_device_ids=frozenset({DeviceId("cpu:b")}),
    )
    p = plan_placement(
        PlacementRequest("m", 1024, "f16", cons),
        facts(8, 50 * MiB),
        cands,
        PlacementOptions(margin_min_bytes=16 * MiB),
    )
    assert p.fits and p.devices == ("CUDA0", "RPC[10.0.0.2:50052]"), p
    return Deployment(
        DEP,
        DeploymentSpec("m", 1024, serve_mode=mode, constraints=cons),
        placement=p,
        model_path="/models/m.gguf",
    )


RPC_B = ProcessView(
    "rpc-GPU-b", ProcessKind.RPC_SERVER, "running", "10.0.0.2", 50052, True, ("GPU-b",)
)


def decide(deps: list[Deployment], ns: dict[NodeId, NodeRecord], now: float = NOW) -> list[object]:
    return list(reconcile(deps, ns, now, timeout_s=10.0))


def test_fresh_deployment_starts_rpc_servers_first() -> None:
    actions = decide([pooled()], nodes())
    assert actions == [
        MarkState(DEP, DeploymentState.STARTING, "starting rpc-servers"),
        StartRpcServer(DEP, NodeId("b"), DeviceId("GPU-b"), "rpc-GPU-b", "10.0.0.2", 50052),
    ]
    assert decide([pooled()], nodes()) == actions  # same world, same decision


def test_rpc_up_then_engine_load_with_rpc_device() -> None:
    dep = replace(pooled(), state=DeploymentState.STARTING, message="starting rpc-servers")
    [load] = decide([dep], nodes(b=(RPC_B,)))  # already STARTING: no new mark
    assert isinstance(load, LoadEngine)
    assert load.devices == ("CUDA0", "RPC[10.0.0.2:50052]") and load.path == "/models/m.gguf"
    assert load.n_gpu_layers == 9


def test_llama_server_mode_passes_rpc_device_split_ngl() -> None:
    dep = replace(
        pooled(ServeMode.LLAMA_SERVER),
        state=DeploymentState.STARTING,
        message="starting llama-server",
    )
    [start] = decide([dep], nodes(b=(RPC_B,)))
    assert isinstance(start, StartLlamaServer)
    args = list(start.args)
    assert args[args.index("--rpc") + 1] == "10.0.0.2:50052"
    assert args[args.index("--device") + 1] == "CUDA0,RPC[10.0.0.2:50052]"
    assert args[args.index("-ngl") + 1] == "9"
    assert "--tensor-split" in args


def serving() -> tuple[Deployment, dict[NodeId, NodeRecord]]:
    ns = nodes(b=(RPC_B,))
    ns[NodeId("a")] = replace(ns[NodeId("a")], engines=(EngineView("m", True, ("CUDA0",)),))
    route = RouteInfo("m", engine_address="10.0.0.1:50061", can_verify=True)
    dep = replace(
        pooled(), state=DeploymentState.SERVING, message="serving", route=route, loaded_generation=1
    )
    return dep, ns


def test_everything_running_means_no_actions() -> None:
    dep, ns = serving()
    assert decide([dep], ns) == []


def test_restart_with_agents_reattaching_waits_then_no_actions() -> None:
    dep, ns = serving()
    detached = {k: replace(n, connected=False) for k, n in ns.items()}
    assert node_state(detached[NodeId("b")], NOW, 10.0) is NodeState.NOT_READY
    assert decide([dep], detached) == []  # no redeploy while agents re-attach
    assert decide([dep], ns) == []


def test_dead_rpc_server_degrades_and_replans() -> None:
    dep, ns = serving()
    dead = replace(RPC_B, state="crash_loop", healthy=False, message="exit 1")
    ns[NodeId("b")] = replace(ns[NodeId("b")], processes=(dead,))
    actions = decide([dep], ns)
    assert [type(a) for a in actions] == [MarkState, Replan]
    assert actions[0].state is DeploymentState.DEGRADED  # type: ignore[attr-defined]
    assert "rpc-GPU-b on node b is crash loop" in actions[0].message  # type: ignore[attr-defined]


def test_unreachable_node_degrades_and_replans() -> None:
    dep, ns = serving()
    ns[NodeId("b")] = replace(ns[NodeId("b")], last_seen=NOW - 60)
    actions = decide([dep], ns)
    assert actions[0] == MarkState(DEP, DeploymentState.DEGRADED, "node b is unreachable")
    assert actions[1] == Replan(DEP, "node b is unreachable")


def test_draining_node_triggers_replan() -> None:
    dep, ns = serving()
    ns[NodeId("b")] = replace(ns[NodeId("b")], draining=True)
    assert Replan(DEP, "node b is draining") in decide([dep], ns)


def test_new_generation_unloads_and_reloads() -> None:
    dep, ns = serving()
    bumped = replace(dep, generation=2, state=DeploymentState.STARTING, message="x")
    actions = decide([bumped], ns)
    assert [type(a) for a in actions] == [MarkState, UnloadEngine, LoadEngine] or [
        type(a) for a in actions
    ] == [UnloadEngine, LoadEngine]


def test_stop_unloads_then_marks_stopped_and_gc_stops_rpc() -> None:
    dep, ns = serving()
    stopping = replace(dep, state=DeploymentState.STOPPING)
    actions = decide([stopping], ns)
    assert actions == [
        UnloadEngine(DEP, NodeId("a"), "m"),
        MarkState(DEP, DeploymentState.STOPPED, "stopped"),
        StopProcess(None, NodeId("b"), "rpc-GPU-b", "no deployment needs it"),
    ]


def test_failed_deployment_waits_for_a_new_spec() -> None:
    dep, ns = serving()
    assert decide([replace(dep, state=DeploymentState.FAILED)], ns) == []
