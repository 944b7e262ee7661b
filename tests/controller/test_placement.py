"""Placement: invariants on generated clusters (hypothesis) and preference tables."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tightwad.controller.ids import DeviceId, NodeId
from tightwad.controller.placement import (
    Candidate,
    Constraints,
    Placement,
    PlacementOptions,
    PlacementRequest,
    kv_bytes,
    layers_from_split,
    plan_placement,
)
from tightwad.engine.device_facts import Backend
from tightwad.engine.model_facts import ModelFacts, read_model_facts
from tightwad.errors import InvalidRequestError

from .factories import GiB, MiB, cand, device, facts

OPTS = PlacementOptions(margin_fraction=0.05, margin_min_bytes=64 * MiB)


def req(ctx: int = 4096, kv: str = "f16", **cons: object) -> PlacementRequest:
    return PlacementRequest("m", ctx, kv, Constraints(**cons))  # type: ignore[arg-type]


def check_invariants(p: Placement, f: ModelFacts, cands: list[Candidate]) -> None:
    """All layers once, contiguous in list order; output once; nothing over-committed;
    tensor_split/ngl reproduce the ranges under llama.cpp's own mapping."""
    assert p.fits, p.reason
    free = {(c.node_id, c.device_id): c.device.memory_free_bytes for c in cands}
    pos = 0
    for a in p.assignments:
        if a.n_layers:
            assert a.first_layer == pos
            pos += a.n_layers
        assert a.expected_bytes + a.margin_bytes <= free[(a.node_id, a.device_id)]
        assert a.free_bytes == free[(a.node_id, a.device_id)]
    assert pos == f.n_layers
    assert sum(a.holds_output for a in p.assignments) == 1
    assert sum(a.weight_bytes for a in p.assignments) == (
        sum(f.layer_bytes) + f.output_bytes + f.embedding_bytes
    )
    # llama.cpp's mapping of the split gives the same ranges.
    mapping = layers_from_split(p.tensor_split, f.n_layers, p.n_gpu_layers)
    gpu_rows = [a for a in p.assignments if not a.is_cpu]
    assert len(gpu_rows) == len(p.tensor_split) == len(p.devices)
    for a in p.assignments:
        want = None if a.is_cpu else gpu_rows.index(a)
        for layer in range(a.first_layer, a.first_layer + a.n_layers):
            assert mapping[layer] == want, (layer, mapping, p)
        if a.holds_output:
            assert mapping[f.n_layers] == want
    # the coordinator's devices come first, then RPC ones
    kinds = [a.is_rpc for a in p.assignments]
    assert kinds == sorted(kinds)
    assert all(a.node_id == p.coordinator for a in p.assignments if not a.is_rpc)


# --- generated clusters ----------------------------------------------------------------

backends = st.sampled_from([Backend.CUDA, Backend.ROCM, Backend.VULKAN, Backend.METAL])


@st.composite
def clusters(draw: st.DrawFn) -> list[Candidate]:
    n_nodes = draw(st.integers(1, 4))
    out: list[Candidate] = []
    for n in range(n_nodes):
        node = f"node-{n}"
        out.append(
            cand(node, device(f"cpu:{node}", draw(st.integers(0, 8)) * GiB, backend=Backend.CPU))
        )
        for g in range(draw(st.integers(0, 3))):
            free = draw(st.integers(0, 12 * 1024)) * MiB
            out.append(
                cand(
                    node,
                    device(
                        f"GPU-{n}-{g}",
                        free,
                        backend=draw(backends),
                        total=free + draw(st.integers(0, 4)) * GiB,
                        index=g,
                    ),
                    port=50052 + g,
                )
            )
    return out


models = st.builds(
    lambda n, sizes, emb, out, kv: facts(
        layers=tuple(s * MiB for s in sizes[:n]) or (MiB,),
        embedding=emb * MiB,
        output=out * MiB,
        kv_per_token=kv,
    ),
    st.integers(1, 48),
    st.lists(st.integers(1, 600), min_size=48, max_size=48),
    st.integers(0, 800),
    st.integers(0, 800),
    st.integers(0, 256 * 1024),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    clusters(), models, st.sampled_from([512, 2048, 8192]), st.sampled_from(["f16", "q8_0", "q4_0"])
)
def test_generated_clusters_never_overcommit_and_cover_every_layer(
    cands: list[Candidate], f: ModelFacts, ctx: int, kv: str
) -> None:
    p = plan_placement(req(ctx, kv), f, cands, OPTS)
    again = plan_placement(req(ctx, kv), f, list(reversed(cands)), OPTS)
    assert p == again  # deterministic, whatever the input order
    if p.fits:
        check_invariants(p, f, cands)
    else:
        assert "does not fit" in p.reason and "free" in p.reason
        assert p.assignments == ()
    total_free = sum(c.device.memory_free_bytes for c in cands)
    if total_free < sum(f.layer_bytes) + f.output_bytes + kv_bytes(f, ctx, kv):
        assert not p.fits


@settings(max_examples=60, deadline=None)
@given(clusters(), models, st.data())
def test_pins_are_used_and_exclusions_never(
    cands: list[Candidate], f: ModelFacts, data: st.DataObject
) -> None:
    ids = [c.device_id for c in cands]
    pin = data.draw(st.sampled_from(ids))
    excluded = data.draw(st.sets(st.sampled_from(ids)).map(lambda s: s - {pin}))
    p = plan_placement(
        req(1024, pin_device_ids=frozenset({pin}), exclude_device_ids=frozenset(excluded)),
        f,
        cands,
        OPTS,
    )
    if p.fits:
        check_invariants(p, f, cands)
        used = {a.device_id: a for a in p.assignments}
        assert pin in used and used[pin].n_layers >= 1
        assert not any(a.device_id in excluded and a.n_layers for a in p.assignments)


# --- preferences (tables) --------------------------------------------------------------


def two_hosts() -> list[Candidate]:
    return [
        cand("a", device("cpu:a", 32 * GiB, backend=Backend.CPU)),
        cand("a", device("GPU-a0", 8 * GiB, index=0, ggml_name="CUDA0")),
        cand("b", device("cpu:b", 32 * GiB, backend=Backend.CPU)),
        cand("b", device("GPU-b0", 24 * GiB, index=0), port=50060),
    ]


@pytest.mark.parametrize(
    ("model", "cons", "want_devices", "want_nodes"),
    [
        # fits on the roomiest single host's GPU: b coordinates, no RPC
        (facts(24, 100 * MiB), {}, ("CUDA0",), ("b",)),
        # coordinator pinned to a, too big for its GPU: b's GPU over RPC beats a's CPU
        (
            facts(40, 300 * MiB),
            {"coordinator": NodeId("a")},
            ("CUDA0", "RPC[{b}:50060]"),
            ("a", "b"),
        ),
        # ... and the same with a's CPU excluded
        (
            facts(40, 300 * MiB),
            {"coordinator": NodeId("a"), "exclude_device_ids": frozenset({DeviceId("cpu:a")})},
            ("CUDA0", "RPC[{b}:50060]"),
            ("a", "b"),
        ),
        # b excluded: a alone
        (facts(24, 100 * MiB), {"exclude_node_ids": frozenset({NodeId("b")})}, ("CUDA0",), ("a",)),
        # pin on a's GPU: a coordinates alone rather than b with a over RPC
        (
            facts(24, 100 * MiB),
            {"pin_device_ids": frozenset({DeviceId("GPU-a0")})},
            ("CUDA0",),
            ("a",),
        ),
        # pin on a's GPU with b coordinating: both hosts
        (
            facts(24, 100 * MiB),
            {"pin_device_ids": frozenset({DeviceId("GPU-a0")}), "coordinator": NodeId("b")},
            ("CUDA0", "RPC[{a}:50052]"),
            ("b", "a"),
        ),
    ],
)
def test_preferences(
    model: ModelFacts,
    cons: dict[str, object],
    want_devices: tuple[str, ...],
    want_nodes: tuple[str, ...],
) -> None:
    cands = two_hosts()
    hosts = {c.node_id: c.rpc_host for c in cands}
    p = plan_placement(req(4096, **cons), model, cands, OPTS)
    check_invariants(p, model, cands)
    assert p.devices == tuple(d.format(a=hosts["a"], b=hosts["b"]) for d in want_devices)
    assert p.node_ids == want_nodes


def test_gpu_before_cpu_and_local_cpu_before_remote() -> None:
    cands = [
        cand("a", device("cpu:a", 64 * GiB, backend=Backend.CPU)),
        cand("a", device("GPU-slow", 4 * GiB, backend=Backend.VULKAN, index=1)),
        cand("a", device("GPU-fast", 4 * GiB, backend=Backend.CUDA, index=0)),
    ]
    small = facts(20, 100 * MiB)
    p = plan_placement(req(2048), small, cands, OPTS)
    assert p.devices == ("CUDA0",)  # the fast one suffices
    big = facts(60, 100 * MiB)
    p = plan_placement(req(2048), big, cands, OPTS)
    check_invariants(p, big, cands)
    assert p.devices == ("CUDA0", "Vulkan1")
    huge = facts(100, 100 * MiB)
    p = plan_placement(req(2048), huge, cands, OPTS)
    check_invariants(p, huge, cands)
    cpu = p.assignments[0]
    assert cpu.is_cpu and cpu.first_layer == 0 and cpu.n_layers > 0 and not cpu.holds_output
    # the first layers stay on the CPU; -ngl counts the output head, on the last GPU
    assert p.n_gpu_layers == 100 - cpu.n_layers + 1
    assert p.assignments[-1].holds_output


def _ranking_cluster() -> list[Candidate]:
    """a: CPU 64 GiB + 4 GiB GPU; b: CPU 32 GiB + GPU (free as the case says); c: CPU only."""
    return [
        cand("a", device("cpu:a", 64 * GiB, backend=Backend.CPU)),
        cand("a", device("GPU-a", 4 * GiB, index=0, ggml_name="CUDA0")),
        cand("b", device("cpu:b", 32 * GiB, backend=Backend.CPU)),
        cand("b", device("GPU-b", 6 * GiB, backend=Backend.VULKAN), port=50060),
        cand("c", device("cpu:c", 32 * GiB, backend=Backend.CPU), port=50070),
    ]


@pytest.mark.parametrize(
    ("layers", "cons", "want"),
    [
        # 1. all on one GPU beats everything
        (20, {}, [("b", "Vulkan0", False)]),
        # 1. all on GPUs over two hosts beats a's GPU + a's CPU (fewer hosts)
        (60, {"coordinator": NodeId("a")}, [("a", "CUDA0", False), ("b", "RPC", False)]),
        # 2. GPUs full: the fewest CPU layers, on the coordinator's CPU (3.) not c's
        (
            120,
            {"coordinator": NodeId("a")},
            [("a", "CPU", True), ("a", "CUDA0", False), ("b", "RPC", False)],
        ),
        # 3. a's CPU excluded: remote CPUs only as the last resort, after both GPUs
        (
            120,
            {"coordinator": NodeId("a"), "exclude_device_ids": frozenset({DeviceId("cpu:a")})},
            [("a", "CUDA0", False), ("b", "RPC", False), ("b", "RPC", True)],
        ),
        # 4. a CPU-only world: one host (the coordinator's CPU), not three
        (
            30,
            {"exclude_device_ids": frozenset({DeviceId("GPU-a"), DeviceId("GPU-b")})},
            [("a", "CPU", True)],
        ),
    ],
)
def test_ranking_gpu_before_cpu(
    layers: int, cons: dict[str, object], want: list[tuple[str, str, bool]]
) -> None:
    """The ranking table of the placement module docstring, one row per case: (node, device
    kind, is a CPU) of each assignment holding layers, in order."""
    cands = _ranking_cluster()
    model = facts(layers, 100 * MiB)
    p = plan_placement(req(2048, **cons), model, cands, OPTS)
    check_invariants(p, model, cands)
    cpus = {c.device_id for c in cands if c.is_cpu}
    got = [
        (a.node_id, "RPC" if a.is_rpc else a.ggml_device, a.device_id in cpus)
        for a in p.assignments
        if a.n_layers
    ]
    assert got == want, p


def test_kv_type_and_context_scale_kv() -> None:
    cands = [
        cand("a", device("cpu:a", 64 * GiB, backend=Backend.CPU)),
        cand("a", device("GPU-0", 80 * GiB)),
    ]
    f = facts(10, 10 * MiB, kv_per_token=100_000)
    f16 = plan_placement(req(8192, "f16"), f, cands, OPTS)
    q8 = plan_placement(req(8192, "q8_0"), f, cands, OPTS)
    f16_small = plan_placement(req(4096, "f16"), f, cands, OPTS)
    kv = sum(a.kv_bytes for a in f16.assignments)
    assert kv >= 100_000 * 8192
    assert sum(a.kv_bytes for a in q8.assignments) == pytest.approx(kv * 34 / 64, rel=0.01)
    assert sum(a.kv_bytes for a in f16_small.assignments) == pytest.approx(kv / 2, rel=0.01)
    with pytest.raises(InvalidRequestError, match="KV cache type"):
        plan_placement(req(8192, "q3_z"), f, cands, OPTS)


def test_refusal_shows_needed_and_free_per_device() -> None:
    cands = [
        cand("a", device("cpu:a", 2 * GiB, backend=Backend.CPU)),
        cand("a", device("GPU-0", 4 * GiB)),
    ]
    p = plan_placement(req(4096), facts(80, 200 * MiB), cands, OPTS)
    assert not p.fits
    assert "needs about 16." in p.reason and "a/GPU-0" in p.reason
    assert "free 4.00 GiB" in p.reason and "free 2.00 GiB" in p.reason


@pytest.mark.parametrize(
    ("cons", "fragment"),
    [
        ({"pin_device_ids": frozenset({DeviceId("nope")})}, "pinned device(s) nope"),
        ({"coordinator": NodeId("zz")}, "coordinator zz is not a ready node"),
        (
            {"coordinator": NodeId("a"), "exclude_node_ids": frozenset({NodeId("a")})},
            "coordinator a is excluded",
        ),
    ],
)
def test_constraint_refusals(cons: dict[str, object], fragment: str) -> None:
    p = plan_placement(req(1024, **cons), facts(4, MiB), two_hosts(), OPTS)
    assert not p.fits and fragment in p.reason


def test_real_smollm_facts(smollm_path: object) -> None:
    from pathlib import Path

    f = read_model_facts(Path(str(smollm_path)))
    cands = [
        cand("coord", device("cpu:coord", 16 * GiB, backend=Backend.CPU)),
        cand("w1", device("cpu:w1", 8 * GiB, backend=Backend.CPU)),
        cand("w1", device("GPU-w1", 60 * MiB + 256 * MiB, total=2 * GiB), port=50071),
        cand("w2", device("GPU-w2", 80 * MiB + 256 * MiB, total=2 * GiB), port=50072),
    ]
    default = PlacementOptions()
    p = plan_placement(req(2048, coordinator=NodeId("coord")), f, cands, default)
    check_invariants(p, f, cands)
    assert p.assignments[0].weight_bytes >= f.embedding_bytes
    # neither GPU holds it all, but together with the coordinator they do
    p2 = plan_placement(
        req(
            2048,
            coordinator=NodeId("coord"),
            pin_device_ids=frozenset({DeviceId("GPU-w1"), DeviceId("GPU-w2")}),
        ),
        f,
        cands,
        default,
    )
    check_invariants(p2, f, cands)
    assert [a.node_id for a in p2.assignments if a.is_rpc] == ["w2", "w1"] or [
        a.node_id for a in p2.assignments if a.is_rpc
    ] == ["w1", "w2"]
    assert sum(a.n_layers for a in p2.assignments) == f.n_layers == 30
