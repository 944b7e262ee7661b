"""The agent process: a gRPC server hosting the Engine service and the Node service.

``AgentServer.run()`` loads the configured engines, serves until ``stop()``; ``stop()`` turns
health to NOT_SERVING, stops the server with a grace period, stops every supervised child
process (SIGTERM, grace, SIGKILL: none outlives the agent), then closes every engine.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tightwad.agent.binaries import BinaryKind, BinaryLocator
from tightwad.agent.engine.core import Engine, EngineConfig
from tightwad.agent.engine.service import EngineRegistry, EngineServicer
from tightwad.agent.inventory import CommandRunner, SubprocessRunner
from tightwad.agent.node_service import LoadDefaults, Node, NodeServiceServicer
from tightwad.agent.processes import Supervisor, SupervisorSettings
from tightwad.logs import get_logger
from tightwad.rpc import GrpcServer, ServiceRegistration
from tightwad.v1 import agent_pb2, agent_pb2_grpc, engine_pb2, engine_pb2_grpc

__all__ = ["AgentServer", "AgentSettings"]

log = get_logger("tightwad.agent")


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """How to run one agent. ``node_service=False`` serves the Engine service alone."""

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


class AgentServer:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.registry = EngineRegistry()
        self.supervisor = Supervisor(settings.binaries, settings=settings.supervisor)
        self.node = Node(
            supervisor=self.supervisor,
            registry=self.registry,
            runner=settings.runner or SubprocessRunner(),
            model_dirs=settings.model_dirs,
            llama_server=lambda: settings.binaries.try_find(BinaryKind.LLAMA_SERVER),
            load_defaults=settings.load_defaults,
        )
        self._server: GrpcServer | None = None
        self._stopped = asyncio.Event()

    @property
    def address(self) -> str:
        assert self._server is not None
        return self._server.bound_address

    def _services(self) -> list[ServiceRegistration]:
        services: list[ServiceRegistration] = [
            ServiceRegistration(
                name=engine_pb2.DESCRIPTOR.services_by_name["EngineService"].full_name,
                servicer=EngineServicer(self.registry),
                add=engine_pb2_grpc.add_EngineServiceServicer_to_server,
            )
        ]
        if self.settings.node_service:
            services.append(
                ServiceRegistration(
                    name=agent_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name,
                    servicer=NodeServiceServicer(self.node),
                    add=agent_pb2_grpc.add_NodeServiceServicer_to_server,
                )
            )
        return [*services, *self.settings.extra_services]

    async def start(self) -> str:
        for cfg in self.settings.engines:
            self.registry.add(await Engine.load(cfg))
        services: Sequence[ServiceRegistration] = self._services()
        self._server = GrpcServer(services, address=self.settings.listen, token=self.settings.token)
        await self._server.start()
        log.info(
            "agent_started",
            name=self.settings.name,
            address=self.address,
            engines=len(self.settings.engines),
        )
        return self.address

    async def run(self) -> None:
        await self.start()
        await self._stopped.wait()

    async def stop(self, grace: float = 5.0) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        await self.node.close(self.settings.stop_grace_s)
        await self.registry.close()
        self._stopped.set()
        log.info("agent_stopped", name=self.settings.name)
