"""The agent process: a gRPC server hosting the Engine service (and the Node service).

``AgentServer.run()`` loads the configured engines, serves until ``stop()``; ``stop()`` turns
health to NOT_SERVING, stops the server with a grace period, then closes every engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from tightwad.agent.engine.core import Engine, EngineConfig
from tightwad.agent.engine.service import EngineRegistry, EngineServicer
from tightwad.logs import get_logger
from tightwad.rpc import GrpcServer, ServiceRegistration
from tightwad.v1 import engine_pb2, engine_pb2_grpc

__all__ = ["AgentServer", "AgentSettings"]

log = get_logger("tightwad.agent")


@dataclass(frozen=True, slots=True)
class AgentSettings:
    listen: str = "127.0.0.1:50061"
    token: str | None = None
    engines: tuple[EngineConfig, ...] = ()
    extra_services: tuple[ServiceRegistration, ...] = field(default=())


class AgentServer:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.registry = EngineRegistry()
        self._server: GrpcServer | None = None
        self._stopped = asyncio.Event()

    @property
    def address(self) -> str:
        assert self._server is not None
        return self._server.bound_address

    async def start(self) -> str:
        for cfg in self.settings.engines:
            self.registry.add(await Engine.load(cfg))
        services: Sequence[ServiceRegistration] = [
            ServiceRegistration(
                name=engine_pb2.DESCRIPTOR.services_by_name["EngineService"].full_name,
                servicer=EngineServicer(self.registry),
                add=engine_pb2_grpc.add_EngineServiceServicer_to_server,
            ),
            *self.settings.extra_services,
        ]
        self._server = GrpcServer(services, address=self.settings.listen, token=self.settings.token)
        await self._server.start()
        log.info("agent_started", address=self.address, engines=len(self.settings.engines))
        return self.address

    async def run(self) -> None:
        await self.start()
        await self._stopped.wait()

    async def stop(self, grace: float = 5.0) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        await self.registry.close()
        self._stopped.set()
