"""Fast tests of the pure parts of the ``two-hosts``, ``pool`` and ``controller`` scenarios: the
delay proxy over real loopback sockets, the namespace plan and its commands, argument parsing,
summaries and tables. No models, no root, no namespaces."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from benchmarks.delayproxy import DelayProxy, split_address
from benchmarks.measure import RequestResult
from benchmarks.netns import (
    netem_commands,
    plan_links,
    preflight,
    setup_commands,
    stale_namespaces,
    teardown_commands,
)
from benchmarks.report import Report, render_markdown, summarize, write_report
from benchmarks.run import build_parser
from benchmarks.scenarios import controller, pool, two_hosts

# --- the delay proxy -----------------------------------------------------------------------


async def _echo_server() -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(4096):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("delay_ms", [0.0, 30.0])
async def test_delay_proxy_delays_and_preserves_bytes_and_order(delay_ms: float) -> None:
    server, port = await _echo_server()
    proxy = DelayProxy(("127.0.0.1", 0), ("127.0.0.1", port), delay_ms / 1000.0)
    host, pport = await proxy.start()
    try:
        reader, writer = await asyncio.open_connection(host, pport)
        # Round trips: each crosses the proxy twice (request, echo) -> >= 2 x delay.
        rtts = []
        for i in range(3):
            msg = f"ping-{i}".encode()
            t0 = time.perf_counter()
            writer.write(msg)
            await writer.drain()
            got = await asyncio.wait_for(reader.readexactly(len(msg)), 5)
            rtts.append(time.perf_counter() - t0)
            assert got == msg
        if delay_ms:
            assert min(rtts) >= 2 * delay_ms / 1000.0 * 0.95, rtts
        else:
            assert max(rtts) < 0.5, rtts
        # A burst of many chunks: every byte arrives, in order.
        payload = bytes(range(256)) * 2000  # 512 KB
        for i in range(0, len(payload), 7000):
            writer.write(payload[i : i + 7000])
        await writer.drain()
        got = await asyncio.wait_for(reader.readexactly(len(payload)), 10)
        assert got == payload
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # EOF forwarded both ways
        writer.close()
        assert proxy.connections == 1
    finally:
        await proxy.stop()
        server.close()
        await server.wait_closed()


async def test_delay_proxy_stops_with_open_connections() -> None:
    server, port = await _echo_server()
    proxy = DelayProxy(("127.0.0.1", 0), ("127.0.0.1", port), 0.05)
    host, pport = await proxy.start()
    _reader, writer = await asyncio.open_connection(host, pport)
    writer.write(b"x")
    await asyncio.wait_for(proxy.stop(), 5)
    writer.close()
    server.close()
    await server.wait_closed()


def test_delay_proxy_rejects_negative_delay_and_bad_address() -> None:
    with pytest.raises(ValueError):
        DelayProxy(("127.0.0.1", 0), ("127.0.0.1", 1), -1.0)
    assert split_address("10.0.0.2:50052") == ("10.0.0.2", 50052)
    assert split_address("[::1]:7") == ("::1", 7)
    with pytest.raises(Exception, match="HOST:PORT"):
        split_address("nohost")


# --- namespaces ----------------------------------------------------------------------------


def test_plan_links_names_fit_and_addresses_pair_up() -> None:
    links = plan_links(2, 4_194_303)
    assert [link.ns for link in links] == ["twb4194303w1", "twb4194303w2"]
    for link in links:
        assert len(link.host_if) <= 15 and len(link.ns_if) <= 15
        assert link.host_if != link.ns_if
        h, n = link.host_ip.rsplit(".", 1), link.ns_ip.rsplit(".", 1)
        assert h[0] == n[0] and int(n[1]) == int(h[1]) + 1 and int(h[1]) % 4 == 1
    assert len({link.host_ip for link in links}) == 2
    with pytest.raises(ValueError):
        plan_links(0, 1)


def test_setup_teardown_and_netem_commands() -> None:
    (link,) = plan_links(1, 42)
    setup = setup_commands([link])
    assert setup[0] == ["ip", "netns", "add", link.ns]
    assert ["ip", "link", "set", link.ns_if, "netns", link.ns] in setup
    assert ["ip", "-n", link.ns, "link", "set", "lo", "up"] in setup
    assert all(argv[0] == "ip" for argv in setup)
    assert teardown_commands([link])[0] == ["ip", "netns", "del", link.ns]
    netem = netem_commands([link], 5.0)
    delay = ["netem", "delay", "5.0ms"]
    assert netem[0] == ["tc", "qdisc", "replace", "dev", link.host_if, "root", *delay]
    assert netem[1][:4] == ["ip", "netns", "exec", link.ns] and netem[1][-3:] == delay
    assert netem_commands([link], 0, "del")[0][-1] == "root"
    with pytest.raises(ValueError):
        netem_commands([link], 1.0, "bogus")


def test_preflight_refuses_without_root_or_ip() -> None:
    assert preflight(0, lambda _: "/usr/sbin/ip") == []
    problems = preflight(1000, lambda _: None)
    assert len(problems) == 2 and "root" in problems[0] and "`ip`" in problems[1]


def test_stale_namespaces_only_ours_with_dead_owner() -> None:
    names = ["twb10w1", "twb11w1", "other", "twbxw1", "twb10w2"]
    assert stale_namespaces(names, lambda pid: pid == 11) == ["twb10w1", "twb10w2"]


# --- pool: plan and tables -----------------------------------------------------------------


def test_pool_delay_method_and_rpc_plan() -> None:
    assert pool.choose_delay_method("auto", True, "") == "netem"
    assert pool.choose_delay_method("auto", False, "unknown qdisc") == "proxy"
    assert pool.choose_delay_method("proxy", True, "") == "proxy"
    with pytest.raises(SystemExit, match="netem"):
        pool.choose_delay_method("netem", False, "Specified qdisc kind is unknown")
    (link,) = plan_links(1, 7)
    netem = pool.rpc_plan(link, "netem")
    proxied = pool.rpc_plan(link, "proxy")
    assert netem["dial"] == netem["rpc"] == (link.ns_ip, pool.RPC_PORT)
    assert proxied["rpc"] == (link.ns_ip, pool.RPC_PORT)
    assert proxied["device"] == f"RPC[{link.ns_ip}:{pool.PROXY_PORT}]"
    assert pool.latencies_arg("0, 2,5") == [0.0, 2.0, 5.0]
    with pytest.raises(SystemExit):
        pool.latencies_arg("-1")


def _req(system: str, prompt: str, kind: str, tps: float, **kw: object) -> RequestResult:
    return RequestResult(
        system=system,
        prompt=prompt,
        kind=kind,
        sampled=False,
        completion_tokens=16,
        decode_tps=tps,
        text="same",
        **kw,  # type: ignore[arg-type]
    )


def test_pool_per_latency_baselines_tables_and_targets() -> None:
    reqs = []
    for d, (plain, ngram) in {0.0: (10.0, 11.0), 5.0: (2.0, 4.0)}.items():
        reqs += [
            _req(pool.system_name("plain", d), "edit-1", "edit", plain),
            _req(
                pool.system_name("ngram", d),
                "edit-1",
                "edit",
                ngram,
                drafted=8,
                accepted=6,
                rounds=2,
            ),
        ]
    base = pool.baselines(["plain", "ngram"], [0.0, 5.0])
    assert base["pool-ngram@5ms"] == "pool-plain@5ms"
    rows = summarize(reqs, base)
    by = {(r["system"], r["kind"]): r for r in rows}
    assert by[("pool-ngram@0ms", "edit")]["ratio"] == pytest.approx(1.1)
    assert by[("pool-ngram@5ms", "edit")]["ratio"] == pytest.approx(2.0)
    assert by[("pool-plain@5ms", "all")]["ratio"] == pytest.approx(1.0)
    _title, headers, body = pool._latency_table(rows, ["plain", "ngram"], [0.0, 5.0], "proxy")
    assert headers[2].startswith("+0 ms (proxy)") and len(headers) == 4
    assert ["pool-ngram", "edit", "11.00 (1.10x)", "4.00 (2.00x)"] in body
    report = Report("pool", {}, {}, baseline=base, requests=reqs)
    pool.add_targets(report, rows, [0.0, 5.0])
    met = {t["target"]: t["met"] for t in report.targets}
    assert met["pool-ngram@5ms on edit vs plain pool"] is True
    assert met["pool-ngram@0ms on edit vs plain pool"] is None  # reported, no goal
    assert "baseline: `pool-plain@0ms, pool-plain@5ms`" in render_markdown(report, rows)


# --- two-hosts -----------------------------------------------------------------------------


def test_two_hosts_pinning_and_targets() -> None:
    assert two_hosts.pin_prefix(1) == ["taskset", "-c", "1"]
    assert two_hosts.pin_prefix(None) == []
    two_hosts.check_cores(1, 0, {0, 1})
    with pytest.raises(SystemExit, match="different cores"):
        two_hosts.check_cores(0, 0, {0, 1})
    with pytest.raises(SystemExit, match="not available"):
        two_hosts.check_cores(3, 0, {0, 1})
    reqs = [
        _req("target-alone", "code-1", "code", 10.0),
        _req("tightwad-model", "code-1", "code", 8.0),
        _req("tightwad-model-pipeline", "code-1", "code", 12.0),
    ]
    report = Report("two-hosts", {}, {}, baseline="target-alone", requests=reqs)
    two_hosts.add_targets(report, summarize(reqs, "target-alone"))
    first = report.targets[0]
    assert first["measured"] == pytest.approx(1.5) and first["met"] is True
    assert [t["measured"] for t in report.targets[1:]] == pytest.approx([0.8, 1.2])


# --- controller ----------------------------------------------------------------------------


def test_proc_stat_parsing_and_cpu_percent() -> None:
    # A command name with spaces and a ")" in it; utime=150, stime=50, rss=2000 pages.
    fields = ["S", *["0"] * 10, "150", "50", *["0"] * 8, "2000", "0"]
    stat = "1234 (python x) y) " + " ".join(fields)
    assert controller.proc_cpu_ticks(stat) == (200, 2000)
    assert controller.cpu_percent([(0.0, 0), (1.0, 50), (3.0, 150)], 100) == [50.0, 50.0]
    p = controller.pcts([float(x) for x in range(1, 101)])
    assert p["p50"] == pytest.approx(50.5) and p["p99"] == pytest.approx(99.01)
    assert controller.pcts([])["n"] == 0


def test_controller_config_and_placement_facts() -> None:
    text = controller.controller_config(5000, Path("/tmp/s.sqlite"), 1.5)
    assert "port: 5000" in text and "heartbeat_interval_s: 1.5" in text
    facts, cands = controller.placement_facts(80, 64, 16)
    assert facts.n_layers == 80 and len(cands) == 64
    assert len({c.node_id for c in cands}) == 16
    timed = controller.time_placement(80, 64, 16, 3)
    assert timed["fits"] and len(timed["ms"]) == 3 and timed["hosts_used"] >= 1


def test_controller_report_writes_outputs(tmp_path: Path) -> None:
    report = Report("controller", {"date": "2026-11-26T00:00:00"}, {"agents": 0})
    report.tables.append(("t", ["a", "b"], [[1, 2.5]]))
    report.extra.update(
        {"plot_bars": [("placement p50", 1.0)], "plot_ylabel": "ms", "placement": {"ms": [1.0]}}
    )
    paths = write_report(report, tmp_path)
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert "| a | b |" in paths["md"].read_text()


# --- argument parsing ----------------------------------------------------------------------


def test_run_parses_new_scenarios() -> None:
    p = build_parser()
    a = p.parse_args(["two-hosts", "--pair", "smollm", "--per-kind", "1"])
    assert a.scenario == "two-hosts" and a.threads == 1 and a.target_core == 1
    assert a.draft_core == 0 and a.pair == "smollm"
    a = p.parse_args(["pool", "--latencies", "0,5", "--delay", "proxy"])
    assert a.scenario == "pool" and a.delay == "proxy" and a.threads == 1 and a.model_draft == ""
    a = p.parse_args(["controller", "--agents", "10", "--skip-agents"])
    assert a.agents == 10 and a.skip_agents and a.layers == 80 and a.devices == 64
    with pytest.raises(SystemExit):
        p.parse_args(["pool", "--delay", "tc"])
