"""The agent process: a gRPC server hosting the Engine service and the Node service, and its
link to the controller. The Engine service is an :class:`~tightwad.engine.server.EngineServer`
(which the gateway uses alone); the agent adds the Node service and the controller link.

``AgentServer.run()`` loads the configured engines, serves until ``stop()``; ``stop()`` ends
the controller link, turns health to NOT_SERVING, stops the server with a grace period, stops
every supervised child process (SIGTERM, grace, SIGKILL: none outlives the agent), then closes
every engine. With ``node_service=False`` (an engine host) there is no Node service and no
Supervisor: the process serves its engines and nothing else.

:class:`ControllerLink` (started when ``AgentSettings.controller`` is set) keeps this agent
registered: it opens the controller's ``Register`` stream with a hello (inventory, model files,
protocol version, join token), then sends a heartbeat with the current inventory every
interval the controller asked for, and at once whenever a process or engine changes, so the
controller hears of a dead rpc-server within a round trip. A broken stream is reopened with
capped exponential backoff; the controller treats the new hello as a re-attach.

With ``AgentSettings.tls`` (the cluster file's ``cluster.tls``) the server requires a client
certificate from the cluster CA, the controller link presents this host's certificate, and
engine hosts started by the supervisor get the same files (their paths, through
``TIGHTWAD_ENGINE_TLS_*`` in their environment) and are probed over TLS. The files are read
before anything loads, so a missing one fails the start with its config key and path.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from tightwad.agent.binaries import BinaryKind, BinaryLocator
from tightwad.agent.inventory import CommandRunner, SubprocessRunner
from tightwad.agent.node_service import (
    LoadDefaults,
    Node,
    NodeServiceServicer,
    inventory_message,
)
from tightwad.agent.processes import Supervisor, SupervisorSettings
from tightwad.clock import Clock, SystemClock
from tightwad.config import TlsConfig
from tightwad.engine.engine_config import EngineConfig
from tightwad.engine.facts_wire import model_facts_to_proto
from tightwad.engine.server import EngineServer
from tightwad.engine.service import EngineRegistry
from tightwad.errors import ConfigError
from tightwad.logs import get_logger
from tightwad.rpc import ServiceRegistration, client_channel, failure_details
from tightwad.tls import TlsFiles, channel_credentials, read_tls_files, server_credentials
from tightwad.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    controller_pb2,
    controller_pb2_grpc,
)

__all__ = [
    "ENGINE_TLS_ENV",
    "PROTOCOL_VERSION",
    "AgentServer",
    "AgentSettings",
    "ControllerLink",
    "engine_tls_env",
    "tls_from_env",
]

log = get_logger("tightwad.agent")

# The Tightwad wire protocol this agent speaks (the controller refuses another major).
PROTOCOL_VERSION = "1"
_ENGINE_TOKEN_ENV = "TIGHTWAD_ENGINE_TOKEN"  # tightwad.agent.engine_host.TOKEN_ENV
_REFUSED = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.FAILED_PRECONDITION})
# The cluster.tls paths handed to an engine host (ca, cert, key): paths, not secrets.
ENGINE_TLS_ENV = (
    "TIGHTWAD_ENGINE_TLS_CA",
    "TIGHTWAD_ENGINE_TLS_CERT",
    "TIGHTWAD_ENGINE_TLS_KEY",
)


def engine_tls_env(tls: TlsConfig | None) -> dict[str, str]:
    """The environment that tells an engine host to serve with ``tls`` (empty: plain)."""
    if tls is None:
        return {}
    paths = (tls.ca_file, tls.cert_file, tls.key_file)
    return {name: str(Path(p).expanduser()) for name, p in zip(ENGINE_TLS_ENV, paths, strict=True)}


def tls_from_env(env: Mapping[str, str]) -> TlsConfig | None:
    """The inverse of :func:`engine_tls_env`: all three variables, or none of them."""
    values = [env.get(name, "") for name in ENGINE_TLS_ENV]
    if not any(values):
        return None
    missing = [name for name, v in zip(ENGINE_TLS_ENV, values, strict=True) if not v]
    if missing:
        raise ConfigError(missing[0], "set all of " + ", ".join(ENGINE_TLS_ENV) + " or none")
    return TlsConfig(ca_file=Path(values[0]), cert_file=Path(values[1]), key_file=Path(values[2]))


class _StreamEnded(Exception):
    """The controller ended the Register stream (restart, shutdown): reconnect."""


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """How to run one agent. ``node_service=False`` serves the Engine service alone.

    ``controller``: the controller's address to register with (None: stand alone);
    ``advertise``: the address the controller and gateway dial this agent on (default: the
    bound listen address); ``tls``: the cluster's mutual TLS (None: plain text + token).
    """

    listen: str = "127.0.0.1:50061"
    token: str | None = None
    engines: tuple[EngineConfig, ...] = ()
    extra_services: tuple[ServiceRegistration, ...] = field(default=())
    name: str = field(default_factory=socket.gethostname)
    node_service: bool = True
    model_dirs: tuple[Path, ...] = ()
    binaries: BinaryLocator = field(default_factory=BinaryLocator)
    supervisor: SupervisorSettings = field(default_factory=SupervisorSettings)
    load_defaults: LoadDefaults = field(default_factory=LoadDefaults)
    runner: CommandRunner | None = None
    stop_grace_s: float = 5.0
    controller: str | None = None
    advertise: str | None = None
    heartbeat_refresh_s: float = 30.0
    tls: TlsConfig | None = None


class AgentServer:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.node: Node | None = None
        # Read (and checked) now: a missing file fails before any model loads.
        self._tls: TlsFiles | None = read_tls_files(settings.tls) if settings.tls else None
        self.engines = EngineServer(
            settings.listen,
            token=settings.token,
            engines=settings.engines,
            credentials=server_credentials(self._tls),
        )
        self.registry: EngineRegistry = self.engines.registry
        if settings.node_service:
            engine_env = {_ENGINE_TOKEN_ENV: settings.token} if settings.token else {}
            engine_env.update(engine_tls_env(settings.tls))
            supervisor = Supervisor(
                settings.binaries,
                settings=settings.supervisor,
                engine_env=engine_env,
                probe_credentials=channel_credentials(self._tls),
                devices=lambda device_id: self.node.device(device_id) if self.node else None,
            )
            self.node = Node(
                supervisor=supervisor,
                registry=self.registry,
                runner=settings.runner or SubprocessRunner(),
                model_dirs=settings.model_dirs,
                llama_server=lambda: settings.binaries.try_find(BinaryKind.LLAMA_SERVER),
                load_defaults=settings.load_defaults,
            )
        self.link: ControllerLink | None = None
        self._link_task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()

    @property
    def supervisor(self) -> Supervisor:
        if self.node is None:
            raise RuntimeError("an engine-only agent has no supervisor")
        return self.node.supervisor

    @property
    def address(self) -> str:
        return self.engines.address

    def _services(self) -> list[ServiceRegistration]:
        services: list[ServiceRegistration] = []
        if self.node is not None:
            services.append(
                ServiceRegistration(
                    name=agent_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name,
                    servicer=NodeServiceServicer(self.node),
                    add=agent_pb2_grpc.add_NodeServiceServicer_to_server,
                )
            )
        return [*services, *self.settings.extra_services]

    async def start(self) -> str:
        services: Sequence[ServiceRegistration] = self._services()
        for service in services:
            self.engines.add_service(service)
        await self.engines.start()
        if self.settings.controller and self.node is not None:
            self.link = ControllerLink(
                self.node,
                controller=self.settings.controller,
                node_id=self.settings.name,
                advertise=self.settings.advertise or self.address,
                token=self.settings.token,
                refresh_s=self.settings.heartbeat_refresh_s,
                credentials=channel_credentials(self._tls),
            )
            self._link_task = asyncio.create_task(self.link.run(), name="controller-link")
        log.info(
            "agent_started",
            name=self.settings.name,
            address=self.address,
            engines=len(self.settings.engines),
            controller=self.settings.controller or "",
            tls=self._tls is not None,
        )
        return self.address

    async def run(self) -> None:
        await self.start()
        await self._stopped.wait()

    async def stop(self, grace: float = 5.0) -> None:
        if self._link_task is not None:
            self._link_task.cancel()
            await asyncio.gather(self._link_task, return_exceptions=True)
            self._link_task = None
        await self.engines.stop_serving(grace)
        if self.node is not None:
            await self.node.close(self.settings.stop_grace_s)
        await self.engines.stop()
        self._stopped.set()
        log.info("agent_stopped", name=self.settings.name)


class ControllerLink:
    """This agent's registration and heartbeat stream to the controller (see the module
    docstring). ``run()`` until cancelled; ``attached`` tells whether a stream is up, and
    ``last_error`` why the last attempt failed (empty once attached)."""

    def __init__(
        self,
        node: Node,
        *,
        controller: str,
        node_id: str,
        advertise: str,
        token: str | None,
        refresh_s: float = 30.0,
        clock: Clock | None = None,
        # Well under the controller's default heartbeat timeout (10 s), which is also the grace
        # a restarted controller gives known nodes to re-attach: a link that has been failing
        # for a while still comes back in time to keep its deployments.
        max_backoff_s: float = 4.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self._node = node
        self._controller = controller
        self._node_id = node_id
        self._advertise = advertise
        self._token = token
        self._credentials = credentials
        self._refresh_s = refresh_s
        self._clock: Clock = clock or SystemClock()
        self._max_backoff_s = max_backoff_s
        self.attached = asyncio.Event()
        self.sessions = 0
        self.last_error = ""

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                await self._session()
            except grpc.aio.AioRpcError as exc:
                failures += 1
                details = failure_details(exc)
                self.last_error = f"{self._controller}: {exc.code().name}: {details}"
                level = log.error if exc.code() in _REFUSED else log.warning
                level(
                    "controller_link_failed",
                    controller=self._controller,
                    code=exc.code().name,
                    details=details,
                )
            except (_StreamEnded, TimeoutError) as exc:
                failures = 1 if self.attached.is_set() else failures + 1
                log.warning("controller_link_lost", controller=self._controller, reason=str(exc))
            finally:
                self.attached.clear()
            await asyncio.sleep(min(self._max_backoff_s, 0.5 * 2.0 ** min(failures, 5)))

    async def _hello(self) -> controller_pb2.RegisterRequest:
        inventory = await inventory_message(self._node, refresh=True)
        models, errors = await self._node.model_files(())
        for error in errors:
            log.warning("model_file_unreadable", path=str(error.path), reason=error.reason)
        return controller_pb2.RegisterRequest(
            hello=controller_pb2.AgentHello(
                node_id=self._node_id,
                join_token=self._token or "",
                address=self._advertise,
                inventory=inventory,
                models=[model_facts_to_proto(m) for m in models],
                protocol_version=PROTOCOL_VERSION,
            )
        )

    async def _session(self) -> None:
        outbox: asyncio.Queue[controller_pb2.RegisterRequest | None] = asyncio.Queue()
        await outbox.put(await self._hello())

        async def requests() -> AsyncIterator[controller_pb2.RegisterRequest]:
            while (message := await outbox.get()) is not None:
                yield message

        async with client_channel(
            self._controller, token=self._token, credentials=self._credentials
        ) as channel:
            call = controller_pb2_grpc.ControllerServiceStub(channel).Register(requests())
            tasks: list[asyncio.Task[None]] = []
            try:
                first = await asyncio.wait_for(call.read(), timeout=30.0)
                if first is grpc.aio.EOF or not first.HasField("welcome"):
                    raise _StreamEnded("the controller closed the stream without a welcome")
                interval = max(first.welcome.heartbeat_interval_ms / 1000.0, 0.05)
                self.sessions += 1
                self.last_error = ""
                self.attached.set()
                log.info("controller_attached", controller=self._controller, node=self._node_id)
                tasks = [
                    asyncio.create_task(self._drain(call), name="controller-link-read"),
                    asyncio.create_task(self._beat(outbox, interval), name="controller-link-beat"),
                ]
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # the reason the session ended
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                call.cancel()
                # End the request stream: grpc cancels its reader of ``requests()`` only if the
                # call was still live, so after the controller ended it the reader would wait
                # on the outbox forever, then be destroyed pending (and the generator's
                # finalizer fail: "aclose(): asynchronous generator is already running").
                outbox.put_nowait(None)

    async def _drain(self, call: grpc.aio.StreamStreamCall) -> None:
        """Read acknowledgements; the stream's end or error ends the session."""
        while True:
            if await call.read() is grpc.aio.EOF:
                raise _StreamEnded("the controller ended the Register stream")

    async def _beat(
        self, outbox: asyncio.Queue[controller_pb2.RegisterRequest], interval: float
    ) -> None:
        changes = self._node.supervisor.changes
        version = changes.version
        next_refresh = self._clock.monotonic() + self._refresh_s
        while True:
            version = await changes.wait(version, interval)
            refresh = self._clock.monotonic() >= next_refresh
            if refresh:
                next_refresh = self._clock.monotonic() + self._refresh_s
            # Stamped before it is gathered: the snapshot holds every change made before
            # ``time``, which is how the controller orders it against its own start replies.
            stamp = self._clock.time()
            inventory = await inventory_message(self._node, refresh=refresh)
            await outbox.put(
                controller_pb2.RegisterRequest(
                    heartbeat=controller_pb2.Heartbeat(time=stamp, inventory=inventory)
                )
            )
