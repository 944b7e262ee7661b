"""reconcile(): the actions a sync decides for hand-built states."""

from __future__ import annotations

from dataclasses import replace

from tightwad.agent.engine_host import build_parser
from tightwad.controller.domain import (
    Deployment,
    DeploymentSpec,
    DeploymentState,
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
    EngineHostDefaults,
    MarkState,
    Replan,
    StartEngineHost,
    StartLlamaServer,
    StartRpcServer,
    StopProcess,
    reconcile,
)
from tightwad.controller.registry import node_state
from tightwad.engine.device_facts import Backend, HostFacts

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


def test_rpc_up_then_engine_host_with_rpc_device_split_ngl() -> None:
    dep = replace(pooled(), state=DeploymentState.STARTING, message="starting rpc-servers")
    [start] = decide([dep], nodes(b=(RPC_B,)))  # already STARTING: no new mark
    assert isinstance(start, StartEngineHost)
    assert (start.node_id, start.name, start.generation) == ("a", "engine-dep-1", 1)
    args = list(start.args)
    assert args[args.index("--model") + 1] == "/models/m.gguf"
    assert args[args.index("--model-id") + 1] == "m"
    assert args[args.index("--devices") + 1] == "CUDA0,RPC[10.0.0.2:50052]"
    assert args[args.index("--gpu-layers") + 1] == "9"
    assert len(args[args.index("--tensor-split") + 1].split(",")) == 2
    assert "--listen" not in args  # the agent allocates the port


def test_engine_host_gets_the_cluster_files_batching_settings() -> None:
    dep = replace(pooled(), state=DeploymentState.STARTING, message="starting rpc-servers")
    plain = EngineHostDefaults()
    tuned = EngineHostDefaults(batch_steps=False, open_wait_s=2.5, prefill_chunk=32)
    [start] = reconcile([dep], nodes(b=(RPC_B,)), NOW, timeout_s=10.0, engine=tuned)
    assert isinstance(start, StartEngineHost)
    ns = build_parser().parse_args([*start.args, "--listen", "127.0.0.1:0"])
    assert (ns.batch_steps, ns.open_wait_s, ns.prefill_chunk) == (False, 2.5, 32)
    # Unset, the engine host keeps the engine's own defaults (no flag is passed).
    [start] = reconcile([dep], nodes(b=(RPC_B,)), NOW, timeout_s=10.0, engine=plain)
    assert isinstance(start, StartEngineHost)
    assert not {"--batch-steps", "--no-batch-steps", "--open-wait-s", "--prefill-chunk"} & set(
        start.args
    )
    defaults = build_parser().parse_args([*start.args, "--listen", "127.0.0.1:0"])
    assert ns.batch_size == defaults.batch_size and (
        defaults.batch_steps,
        defaults.open_wait_s,
        defaults.prefill_chunk,
    ) != (False, 2.5, 32)


def test_rpc_server_restarting_before_the_load_is_waited_for() -> None:
    dep = replace(pooled(), state=DeploymentState.STARTING, message="starting rpc-servers")
    restarting = replace(RPC_B, state="backoff", healthy=False)
    assert decide([dep], nodes(b=(restarting,))) == []


def test_rpc_server_on_another_port_is_stopped_then_started_on_the_planned_one() -> None:
    dep = replace(pooled(), state=DeploymentState.STARTING, message="starting rpc-servers")
    moved = replace(RPC_B, port=50060)
    assert decide([dep], nodes(b=(moved,))) == [
        StopProcess(DEP, NodeId("b"), "rpc-GPU-b", "planned on port 50052"),
        StartRpcServer(DEP, NodeId("b"), DeviceId("GPU-b"), "rpc-GPU-b", "10.0.0.2", 50052),
    ]


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
    # llama-server numbers the --rpc servers' devices RPC0, RPC1, ... (not RPC[host:port]).
    assert args[args.index("--device") + 1] == "CUDA0,RPC0"
    assert args[args.index("-ngl") + 1] == "9"
    assert "--tensor-split" in args
    assert "--port" not in args and "--host" not in args  # the agent's to choose


ENGINE_A = ProcessView(
    "engine-dep-1", ProcessKind.ENGINE_HOST, "running", "10.0.0.1", 50100, True, pid=42
)


def serving() -> tuple[Deployment, dict[NodeId, NodeRecord]]:
    ns = nodes(a=(ENGINE_A,), b=(RPC_B,))
    route = RouteInfo("m", engine_address="10.0.0.1:50100", can_verify=True)
    dep = replace(
        pooled(), state=DeploymentState.SERVING, message="serving", route=route, loaded_generation=1
    )
    return dep, ns


def test_engine_host_healthy_means_serving_with_its_own_address() -> None:
    dep, ns = serving()
    starting = replace(dep, state=DeploymentState.STARTING, message="x", route=None)
    assert decide([starting], ns) == [
        MarkState(DEP, DeploymentState.SERVING, "serving", dep.route),
    ]


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


def test_rpc_server_restarting_after_the_load_degrades_and_reloads() -> None:
    """Its tensors died with it: the engine host must load again, not keep serving."""
    dep, ns = serving()
    restarting = replace(RPC_B, state="backoff", healthy=False, message="exited with code -9")
    ns[NodeId("b")] = replace(ns[NodeId("b")], processes=(restarting,))
    actions = decide([dep], ns)
    why = "rpc-server rpc-GPU-b on node b is backoff: exited with code -9"
    assert actions == [MarkState(DEP, DeploymentState.DEGRADED, why), Replan(DEP, why)]


def test_engine_host_restarting_is_reported_and_waited_for() -> None:
    dep, ns = serving()
    restarting = replace(ENGINE_A, state="backoff", healthy=False, message="exited with code 75")
    ns[NodeId("a")] = replace(ns[NodeId("a")], processes=(restarting,))
    assert decide([dep], ns) == [
        MarkState(
            DEP,
            DeploymentState.DEGRADED,
            "engine host engine-dep-1 on node a is restarting: exited with code 75",
        )
    ]


def test_engine_host_crash_loop_is_stopped_and_started_again() -> None:
    dep, ns = serving()
    looping = replace(ENGINE_A, state="crash_loop", healthy=False)
    ns[NodeId("a")] = replace(ns[NodeId("a")], processes=(looping,))
    actions = decide([dep], ns)
    assert [type(a) for a in actions] == [MarkState, StopProcess, StartEngineHost]
    assert actions[0].message == "engine host engine-dep-1 on node a is crash loop"  # type: ignore[attr-defined]


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


def test_new_generation_stops_and_restarts_the_engine_host() -> None:
    dep, ns = serving()
    bumped = replace(dep, generation=2, state=DeploymentState.STARTING, message="x")
    actions = decide([bumped], ns)
    assert actions[0] == StopProcess(DEP, NodeId("a"), "engine-dep-1", "reload")
    assert isinstance(actions[1], StartEngineHost) and actions[1].generation == 2


def test_stop_stops_the_engine_host_then_marks_stopped_and_gc_stops_rpc() -> None:
    dep, ns = serving()
    stopping = replace(dep, state=DeploymentState.STOPPING)
    actions = decide([stopping], ns)
    assert actions == [
        StopProcess(DEP, NodeId("a"), "engine-dep-1", "stopped"),
        MarkState(DEP, DeploymentState.STOPPED, "stopped"),
        StopProcess(None, NodeId("b"), "rpc-GPU-b", "no deployment needs it"),
    ]


def test_failed_deployment_waits_for_a_new_spec() -> None:
    dep, ns = serving()
    assert decide([replace(dep, state=DeploymentState.FAILED)], ns) == []
