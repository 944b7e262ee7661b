"""Faults under load: each component killed (SIGKILL) or stopped (SIGTERM) while streams run.

Real ``tightwad-agent`` processes serve SmolLM2-135M; the gateway is a real
``tightwad-gateway`` process, except where a test must force model drafting (the config
file's routes adapt the draft length, and a self-draft of the same model never pays, so
drafting would rightly be turned off): there the gateway runs in the test with
``adaptive=False``. ``STREAMS`` greedy chat streams run at once with the real ``openai``
client; the reference is the target alone's greedy answer (:func:`support.target_alone`).

Proves:

- SIGKILL the draft agent: every in-flight request finishes, with the target alone's output;
- SIGKILL the target agent: in-flight requests end with a clear error (an SSE error event
  after the first byte, a 503 before), a new request gets a 503 with an OpenAI error body;
  the agent restarted on the same port serves again through the same gateway;
- SIGKILL the gateway: the engine frees the dead gateway's sessions; a restarted gateway on
  the same port serves again;
- SIGKILL the controller: the gateway keeps serving (streams finish, new requests succeed);
  restarted on its state file, the agent re-attaches; SIGTERM then exits 0 at once;
- SIGTERM the gateway / an agent: in-flight streams complete with the reference output, new
  requests are refused (connection refused / 503), the process exits 0 well within
  ``cluster.drain_timeout_s`` and leaves no descendant (the agent's rpc-server included);
- past ``cluster.drain_timeout_s`` the gateway cuts what is left and still exits 0.

An rpc-server SIGKILL (controller re-plans, the model serves again) and a controller restart
losing nothing are proven by ``tests/cluster/test_pool_deploy.py`` (b) and (c).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import openai
import pytest

from tightwad.gateway.api import GatewaySettings
from tightwad.gateway.engine_client import EngineClient
from tightwad.gateway.loop import RouteSpec
from tightwad.gateway.server import GatewayServer
from tightwad.v1 import agent_pb2, agent_pb2_grpc, controller_pb2, controller_pb2_grpc

from .support import (
    Reference,
    ServerProcess,
    free_port,
    leaks,
    live_sessions,
    pid_alive,
    start_agent,
    start_controller_process,
    start_gateway_process,
    target_alone,
)
from .timeline import DISCONNECTED, LEAKS_ARE_ERRORS, REFUSED, Prober

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.engine,
    pytest.mark.slow,
    # leaks in this process (in-process gateways) are errors too; see also ``procs``
    *LEAKS_ARE_ERRORS,
]

API_KEY = "sk-faults"
MODEL = "smollm"
STREAMS = 8
MAX_TOKENS = 32
CTX = 256
SESSIONS = STREAMS + 2  # KV cells cost every decode step: no more than needed
DRAIN_S = 120.0  # generous: this tier shares slow CPUs; exits are checked against the work
PROMPTS = [
    "Count from one to twenty, separated by commas.",
    "Write a Python function that returns the square of a number.",
    "List the days of the week.",
    "What is the capital of France? Answer in one sentence.",
    "Write a haiku about the sea.",
    "Name three primary colors.",
    "Explain what a for loop is in one sentence.",
    "Write a SQL query that selects all rows from a table named users.",
]
assert len(PROMPTS) == STREAMS
PROBE_TOKENS = 8  # the prober's request: small, so it measures the outage, not the decode


@dataclass
class Outcome:
    prompt: str
    text: str = ""
    chunks: int = 0
    finish: str | None = None
    error: BaseException | None = None


def _client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


async def _stream(client: openai.AsyncOpenAI, out: Outcome, max_tokens: int) -> None:
    try:
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": out.prompt}],
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
        )
        async for chunk in stream:
            if chunk.choices:
                choice = chunk.choices[0]
                if choice.delta.content:
                    out.text += choice.delta.content
                    out.chunks += 1
                if choice.finish_reason:
                    out.finish = choice.finish_reason
    except openai.APIError as exc:
        out.error = exc


class Load:
    """``STREAMS`` concurrent greedy streams, one per prompt."""

    def __init__(self, url: str, max_tokens: int = MAX_TOKENS) -> None:
        self.client = _client(url)
        self.outcomes = [Outcome(p) for p in PROMPTS]
        self.tasks = [
            asyncio.create_task(_stream(self.client, o, max_tokens)) for o in self.outcomes
        ]

    async def streaming(self, chunks: int = 2, timeout_s: float = 120.0) -> list[Outcome]:
        """Wait until some stream has ``chunks`` chunks; the ones still running then."""
        async with asyncio.timeout(timeout_s):
            while not any(o.chunks >= chunks for o in self.outcomes):
                assert not all(t.done() for t in self.tasks), [o.error for o in self.outcomes]
                await asyncio.sleep(0.02)
        running = [o for o, t in zip(self.outcomes, self.tasks, strict=True) if not t.done()]
        assert running, "every stream ended before the fault: nothing was in flight"
        return running

    async def finish(self, timeout_s: float = 180.0) -> list[Outcome]:
        async with asyncio.timeout(timeout_s):
            await asyncio.gather(*self.tasks)
        await self.client.close()
        return self.outcomes


def _assert_reference(outcomes: list[Outcome], refs: dict[str, Reference], what: str) -> None:
    for o in outcomes:
        assert o.error is None, f"{what}: {o.prompt!r} failed: {o.error!r}"
        assert o.finish in ("stop", "length"), (what, o)
        refs[o.prompt].check(o.text, f"{what}: {o.prompt!r}")


async def _chat(url: str, prompt: str = PROMPTS[0]) -> str:
    async with _client(url) as client:
        resp = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=MAX_TOKENS,
            temperature=0,
        )
    return resp.choices[0].message.content or ""


def _prober(url: str) -> Prober:
    """A chat probe of ``PROMPTS[0]`` every 0.5 s (see :mod:`timeline`)."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPTS[0]}],
        "max_tokens": PROBE_TOKENS,
        "temperature": 0,
    }
    return Prober(url, body, api_key=API_KEY)


def _same_answers(probe: Prober, refs: dict[str, Reference], what: str) -> None:
    """Every probe that was answered got the target alone's answer (cut at PROBE_TOKENS)."""
    answers = [p for p in probe.probes if p.outcome == 200]
    assert answers
    for p in answers:
        refs[PROMPTS[0]].check_start(p.text, f"{what}: the probe at {p.at:.1f} s")


async def _until(what: str, check, timeout_s: float = 60.0) -> float:  # type: ignore[no-untyped-def]
    """Poll ``check`` (sync or async) until truthy; seconds it took."""
    t0 = time.monotonic()
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def _gateway_config(target_port: int, drain_s: float = DRAIN_S) -> str:
    return (
        f"cluster:\n  drain_timeout_s: {drain_s}\n"
        "gateway:\n  api_key: ${TIGHTWAD_API_KEY}\n  max_concurrency: 16\n"
        f"routes:\n  - name: {MODEL}\n    target: grpc://127.0.0.1:{target_port}\n"
        "    draft: ngram\n"
    )


def _agent(tmp: Path, model: Path, *, name: str, port: int, threads: int = 1, **kw: object):
    # One engine thread each: on a shared 2-core box two would wait for a core at every barrier.
    return start_agent(
        tmp,
        model,
        name=name,
        port=port,
        ctx_size=CTX,
        max_sessions=SESSIONS,
        threads=threads,
        **kw,  # type: ignore[arg-type]
    )


def _ready_sync(proc: ServerProcess, timeout_s: float = 180.0) -> None:
    proc.ready.wait(timeout_s)
    if not proc.ready_line:
        proc.kill()
        raise RuntimeError(f"{proc.name} did not start:\n{proc.output()[-3000:]}")


@dataclass
class Agent:
    proc: ServerProcess
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def shared_target(smollm_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    """A target agent the tests that do not fault it share (a model load each is costly)."""
    port = free_port()
    proc = _agent(
        tmp_path_factory.mktemp("target"),
        smollm_path,
        name="target",
        port=port,
    )
    _ready_sync(proc)
    yield Agent(proc, port)
    proc.kill()


@pytest.fixture(scope="module")
def refs(shared_target: Agent) -> dict[str, Reference]:
    return asyncio.run(target_alone(shared_target.address, MODEL, PROMPTS, MAX_TOKENS))


@pytest.fixture
async def procs() -> AsyncIterator[list[ServerProcess]]:
    """Processes a test starts; killed after it whatever happened."""
    started: list[ServerProcess] = []
    yield started
    for p in started:
        p.kill()
    leaked = {p.name: leaks(p) for p in started if leaks(p)}
    for p in started:
        if leaks(p):
            print(f"--- {p.name} output ---\n{p.output()[-6000:]}")
    assert not leaked, f"leaked tasks / generators / resources: {leaked}"


# --- the draft agent -----------------------------------------------------------------------


async def test_killed_draft_agent_every_stream_finishes_identically(
    tmp_path: Path,
    smollm_path: Path,
    shared_target: Agent,
    refs: dict[str, Reference],
    procs: list[ServerProcess],
) -> None:
    draft_port = free_port()
    draft = _agent(
        tmp_path,
        smollm_path,
        name="draft",
        port=draft_port,
    )
    procs.append(draft)
    await draft.wait_ready()
    route = RouteSpec(
        name=MODEL,
        target=EngineClient(shared_target.address, MODEL),
        draft_mode="model",
        drafters=(EngineClient(f"127.0.0.1:{draft_port}", MODEL),),
        max_draft_tokens=4,
        draft_timeout_s=2.0,
        adaptive=False,  # always draft: the drafter is in use when it dies
    )
    gateway = GatewayServer([route], GatewaySettings(api_key=API_KEY, max_concurrency=16), port=0)
    url = await gateway.start()
    try:
        async with _prober(url) as probe:
            load = Load(url)
            running = await load.streaming(chunks=2)
            probe.kill()
            draft.kill()
            outcomes = await load.finish()
            _assert_reference(outcomes, refs, "after the draft agent's SIGKILL")
            assert running
            [drafter] = gateway.backends[MODEL].info().details["drafters"]  # type: ignore[index]
            assert drafter["healthy"] is False, "no in-flight request saw the drafter die"
            # Later requests are served plainly (the drafter is marked failed): same output.
            refs[PROMPTS[1]].check(await _chat(url, PROMPTS[1]), "after the draft agent died")
            await probe.serving_again(errors=False)
        probe.report("draft agent SIGKILL")
        probe.check(errors=False)  # the client never sees the drafter die
        _same_answers(probe, refs, "draft agent killed")
    finally:
        await gateway.stop()


# --- the target agent ----------------------------------------------------------------------


async def test_killed_target_agent_clear_errors_then_recovery(
    tmp_path: Path, smollm_path: Path, procs: list[ServerProcess]
) -> None:
    port, gport = free_port(), free_port()

    def agent() -> ServerProcess:
        proc = _agent(tmp_path, smollm_path, name="target", port=port)
        procs.append(proc)
        return proc

    target = agent()
    await target.wait_ready()
    refs = await target_alone(f"127.0.0.1:{port}", MODEL, PROMPTS, MAX_TOKENS)
    gw = start_gateway_process(tmp_path, port=gport, api_key=API_KEY, config=_gateway_config(port))
    procs.append(gw)
    await gw.wait_ready()
    url = f"http://127.0.0.1:{gport}"
    probe = await _prober(url).__aenter__()
    load = Load(url)
    running = await load.streaming(chunks=2)
    probe.kill()
    target.kill()
    outcomes = await load.finish()
    failed = [o for o in outcomes if o.error is not None]
    assert failed, "no stream saw the target die"
    for o in outcomes:
        if o.error is None:  # it finished before the kill: then it is complete and right
            assert o not in running or o.finish is not None
            refs[o.prompt].check(o.text, "finished before the kill")
            continue
        err = o.error
        assert isinstance(err, openai.APIError), repr(err)
        if isinstance(err, openai.APIStatusError):  # before the first byte: a plain 503
            assert err.status_code == 503, err
        assert "target model" in err.message, err.message  # the SSE error event's message
        assert o.finish is None
    # A new request while the target is down: 503 with an OpenAI error body.
    with pytest.raises(openai.APIStatusError) as refused:
        await _chat(url)
    assert refused.value.status_code == 503
    assert int(refused.value.response.headers["Retry-After"]) >= 1
    body = refused.value.body
    assert isinstance(body, dict) and body.get("message") and body.get("type"), body
    # Restart on the same port: the same gateway serves again. What the client sees, probe
    # by probe: 503 (never 404: the route is configured) until it serves.
    target = agent()
    await target.wait_ready()
    back = probe._now()
    try:
        await probe.serving_again()
    finally:
        await probe.stop()
    probe.report(f"target agent SIGKILL (agent restarted, ready at {back:.1f} s)")
    probe.check((200, 503))
    _same_answers(probe, refs, "target agent killed and restarted")
    refs[PROMPTS[0]].check(await _chat(url), "after the target's restart")
    assert await gw.terminate() == 0


# --- the gateway ---------------------------------------------------------------------------


async def test_killed_gateway_frees_sessions_and_a_restart_serves(
    tmp_path: Path, shared_target: Agent, refs: dict[str, Reference], procs: list[ServerProcess]
) -> None:
    gport = free_port()
    config = _gateway_config(shared_target.port)
    gw = start_gateway_process(tmp_path, port=gport, api_key=API_KEY, config=config)
    procs.append(gw)
    await gw.wait_ready()
    url = f"http://127.0.0.1:{gport}"
    probe = await _prober(url).__aenter__()
    load = Load(url)
    await load.streaming(chunks=2)
    assert await live_sessions(shared_target.address, MODEL) > 0
    probe.kill()
    gw.kill()
    outcomes = await load.finish()
    assert any(isinstance(o.error, openai.APIConnectionError) for o in outcomes), outcomes
    await _until(
        "the engine to free the dead gateway's sessions",
        lambda: _no_sessions(shared_target.address),
        timeout_s=30,
    )
    gw = start_gateway_process(tmp_path, port=gport, api_key=API_KEY, config=config)
    procs.append(gw)
    await gw.wait_ready()
    back = probe._now()
    try:
        await probe.serving_again()
    finally:
        await probe.stop()
    probe.report(f"gateway SIGKILL (gateway restarted, ready at {back:.1f} s)")
    # The probe in flight at the kill sees its connection drop; every later one is refused.
    probe.check((200, REFUSED, DISCONNECTED))
    assert REFUSED in {p.outcome for p in probe.probes}, probe.codes()
    _same_answers(probe, refs, "gateway killed and restarted")
    refs[PROMPTS[2]].check(await _chat(url, PROMPTS[2]), "after the gateway's restart")
    assert await gw.terminate() == 0


async def _no_sessions(address: str) -> bool:
    return await live_sessions(address, MODEL) == 0


async def test_sigterm_gateway_drains_in_flight_streams(
    tmp_path: Path, shared_target: Agent, refs: dict[str, Reference], procs: list[ServerProcess]
) -> None:
    gport = free_port()
    gw = start_gateway_process(
        tmp_path, port=gport, api_key=API_KEY, config=_gateway_config(shared_target.port)
    )
    procs.append(gw)
    await gw.wait_ready()
    url = f"http://127.0.0.1:{gport}"
    load = Load(url)
    running = await load.streaming(chunks=2)
    t0 = time.monotonic()
    gw.sigterm()
    await asyncio.sleep(0.5)
    with pytest.raises(openai.APIConnectionError):  # the port is closed: refused
        await _chat(url)
    outcomes = await load.finish()
    done_s = time.monotonic() - t0
    _assert_reference(outcomes, refs, "drained by the gateway's SIGTERM")
    assert running
    code = await gw.wait(timeout_s=DRAIN_S + 10)
    exit_s = time.monotonic() - t0
    print(f"gateway SIGTERM: streams done {done_s:.1f} s, exit {code} at {exit_s:.1f} s")
    assert code == 0
    assert exit_s < min(DRAIN_S, done_s + 10), "the gateway waited past its in-flight work"
    assert not gw.descendants()
    await _until(
        "the engine to end the gateway's sessions",
        lambda: _no_sessions(shared_target.address),
        timeout_s=15,
    )


async def test_gateway_drain_deadline_cuts_long_streams_and_exits_0(
    tmp_path: Path, shared_target: Agent, procs: list[ServerProcess]
) -> None:
    gport = free_port()
    drain_s = 1.0
    config = _gateway_config(shared_target.port, drain_s=drain_s)
    gw = start_gateway_process(tmp_path, port=gport, api_key=API_KEY, config=config)
    procs.append(gw)
    await gw.wait_ready()
    load = Load(f"http://127.0.0.1:{gport}", max_tokens=400)
    await load.streaming(chunks=2)
    t0 = time.monotonic()
    code = await gw.terminate(timeout_s=30)
    exit_s = time.monotonic() - t0
    outcomes = await load.finish()
    print(f"gateway SIGTERM past a {drain_s} s drain: exit {code} at {exit_s:.1f} s")
    assert code == 0 and exit_s < drain_s + 8
    cut = [o for o in outcomes if o.finish is None]
    assert cut and all(o.error is not None for o in cut), outcomes
    await _until(
        "the engine to end the cut sessions",
        lambda: _no_sessions(shared_target.address),
        timeout_s=15,
    )


# --- an agent ------------------------------------------------------------------------------


async def _start_rpc_server(address: str) -> int:
    """Start an rpc-server child through the agent's Node service; its pid once healthy (the
    supervisor restarts one that failed to start, e.g. a port taken meanwhile)."""
    async with grpc.aio.insecure_channel(address) as channel:
        node = agent_pb2_grpc.NodeServiceStub(channel)
        spec = agent_pb2.ProcessSpec(name="rpc0", kind=agent_pb2.PROCESS_KIND_RPC_SERVER)
        r = await node.StartProcess(
            agent_pb2.StartProcessRequest(spec=spec, wait_healthy=True), timeout=60
        )
        status = r.status
        async with asyncio.timeout(60):
            while not (status.pid > 0 and status.healthy):
                await asyncio.sleep(0.5)
                listed = await node.ListProcesses(agent_pb2.ListProcessesRequest(), timeout=10)
                status = next(p for p in listed.processes if p.name == "rpc0")
    return int(status.pid)


async def test_sigterm_agent_drains_sessions_and_leaves_no_child(
    tmp_path: Path, smollm_path: Path, procs: list[ServerProcess]
) -> None:
    port = free_port()
    agent = _agent(
        tmp_path,
        smollm_path,
        name="drained",
        port=port,
        config=f"agents:\n  host: 127.0.0.1\ncluster:\n  drain_timeout_s: {DRAIN_S}\n",
    )
    procs.append(agent)
    await agent.wait_ready()
    address = f"127.0.0.1:{port}"
    refs = await target_alone(address, MODEL, PROMPTS, MAX_TOKENS)
    rpc_pid = await _start_rpc_server(address)
    assert rpc_pid in agent.descendants()
    route = RouteSpec(name=MODEL, target=EngineClient(address, MODEL), draft_mode="ngram")
    gateway = GatewayServer([route], GatewaySettings(api_key=API_KEY, max_concurrency=16), port=0)
    url = await gateway.start()
    try:
        load = Load(url)
        await load.streaming(chunks=2)
        t0 = time.monotonic()
        agent.sigterm()
        await asyncio.sleep(0.5)
        with pytest.raises(openai.APIStatusError) as refused:  # new sessions: refused
            await _chat(url)
        assert refused.value.status_code == 503
        outcomes = await load.finish()
        done_s = time.monotonic() - t0
        _assert_reference(outcomes, refs, "drained by the agent's SIGTERM")
        code = await agent.wait(timeout_s=DRAIN_S + 15)
        exit_s = time.monotonic() - t0
        print(f"agent SIGTERM: streams done {done_s:.1f} s, exit {code} at {exit_s:.1f} s")
        assert code == 0
        assert exit_s < min(DRAIN_S, done_s + 10), "the agent waited past its in-flight work"
        assert not pid_alive(rpc_pid), "the agent's rpc-server outlived it"
        assert not agent.descendants()
    finally:
        await gateway.stop()


# --- the controller ------------------------------------------------------------------------


async def _node_ready(controller: str, node: str) -> bool:
    try:
        async with grpc.aio.insecure_channel(controller) as channel:
            stub = controller_pb2_grpc.ControllerServiceStub(channel)
            got = await stub.ListNodes(controller_pb2.ListNodesRequest(), timeout=5)
    except grpc.aio.AioRpcError:
        return False
    return any(n.node_id == node and n.state == controller_pb2.NODE_STATE_READY for n in got.nodes)


async def test_controller_killed_and_stopped_under_load(
    tmp_path: Path, smollm_path: Path, procs: list[ServerProcess]
) -> None:
    cport, port = free_port(), free_port()
    controller_at = f"127.0.0.1:{cport}"
    state = tmp_path / "state.sqlite"
    config = (
        f"cluster:\n  drain_timeout_s: {DRAIN_S}\n"
        "controller:\n  host: 127.0.0.1\n  heartbeat_interval_s: 0.5\n"
    )

    def controller() -> ServerProcess:
        proc = start_controller_process(tmp_path, port=cport, state=state, config=config)
        procs.append(proc)
        return proc

    ctl = controller()
    await ctl.wait_ready()
    agent = _agent(
        tmp_path,
        smollm_path,
        name="member",
        port=port,
        controller=controller_at,
    )
    procs.append(agent)
    await agent.wait_ready()
    await _until("the agent to register", lambda: _node_ready(controller_at, "member"))
    refs = await target_alone(f"127.0.0.1:{port}", MODEL, PROMPTS, MAX_TOKENS)
    route = RouteSpec(
        name=MODEL, target=EngineClient(f"127.0.0.1:{port}", MODEL), draft_mode="ngram"
    )
    gateway = GatewayServer([route], GatewaySettings(api_key=API_KEY, max_concurrency=16), port=0)
    url = await gateway.start()
    probe = await _prober(url).__aenter__()
    try:
        # SIGKILL: the gateway keeps serving its known route.
        load = Load(url)
        await load.streaming(chunks=2)
        probe.kill()
        ctl.kill()
        _assert_reference(await load.finish(), refs, "the controller killed")
        refs[PROMPTS[3]].check(await _chat(url, PROMPTS[3]), "no controller")
        await probe.serving_again(errors=False)
        # Restarted on its state: the agent re-attaches.
        ctl = controller()
        await ctl.wait_ready()
        await _until("the agent to re-attach", lambda: _node_ready(controller_at, "member"))
        # SIGTERM with an agent attached and streams in flight: exits 0 at once.
        load = Load(url)
        await load.streaming(chunks=2)
        t0 = time.monotonic()
        code = await ctl.terminate(timeout_s=DRAIN_S + 15)
        exit_s = time.monotonic() - t0
        print(f"controller SIGTERM with an attached agent: exit {code} in {exit_s:.1f} s")
        assert code == 0 and exit_s < 10, exit_s
        assert not ctl.descendants()
        _assert_reference(await load.finish(), refs, "the controller stopped")
        assert agent.alive
        await probe.stop()
        probe.report("controller SIGKILL, restart, then SIGTERM (gateway on its known route)")
        probe.check(errors=False)  # the client never sees the controller go
        _same_answers(probe, refs, "controller killed, restarted, stopped")
    finally:
        await probe.stop()
        await gateway.stop()
