"""A gRPC server hosting the Engine service over a set of engines, and nothing else.

The gateway and ``tightwad up`` host their in-process engines (embedded models, the HTTP
adapters) with it; the host daemon (:class:`tightwad.agent.server.AgentServer`) builds on it and
adds the Node service. ``start()`` loads the configured engines and binds; ``stop(grace)`` turns
health to NOT_SERVING, stops the server with the grace period, then closes every engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc

from tightwad.engine.contract import EngineLike
from tightwad.engine.engine_config import EngineConfig
from tightwad.engine.service import EngineRegistry, EngineServicer
from tightwad.logs import get_logger
from tightwad.rpc import GrpcServer, ServiceRegistration
from tightwad.v1 import engine_pb2, engine_pb2_grpc

__all__ = ["EngineServer", "engine_service"]

log = get_logger("tightwad.engine.server")


def engine_service(registry: EngineRegistry) -> ServiceRegistration:
    """The Engine service over ``registry``, ready for a :class:`~tightwad.rpc.GrpcServer`."""
    return ServiceRegistration(
        name=engine_pb2.DESCRIPTOR.services_by_name["EngineService"].full_name,
        servicer=EngineServicer(registry),
        add=engine_pb2_grpc.add_EngineServiceServicer_to_server,
    )


class EngineServer:
    """Serves ``engines`` (loaded at start) plus any engine added to :attr:`registry` (an
    adapter, say) on ``listen``. ``token`` is the bearer token clients must present;
    ``credentials`` the server's TLS (None: plain text)."""

    def __init__(
        self,
        listen: str = "127.0.0.1:0",
        *,
        token: str | None = None,
        engines: Sequence[EngineConfig] = (),
        extra_services: Sequence[ServiceRegistration] = (),
        credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        self.listen = listen
        self.registry = EngineRegistry()
        self._token = token
        self._configs = tuple(engines)
        self._extra = list(extra_services)
        self._credentials = credentials
        self._server: GrpcServer | None = None
        self._stopped = asyncio.Event()

    def add(self, engine: EngineLike) -> None:
        self.registry.add(engine)

    def add_service(self, service: ServiceRegistration) -> None:
        """Another service on the same server (before :meth:`start`)."""
        if self._server is not None:
            raise RuntimeError("add services before the server starts")
        self._extra.append(service)

    @property
    def address(self) -> str:
        if self._server is None:
            raise RuntimeError("the engine server is not started")
        return self._server.bound_address

    async def start(self) -> str:
        from tightwad.engine.llama_engine import Engine

        for cfg in self._configs:
            self.registry.add(await Engine.load(cfg))
        server = GrpcServer(
            [engine_service(self.registry), *self._extra],
            address=self.listen,
            token=self._token,
            server_credentials=self._credentials,
        )
        await server.start()
        self._server = server
        log.info("engine_server_started", address=self.address, engines=len(self.registry.all()))
        return self.address

    async def run(self) -> None:
        await self.start()
        await self._stopped.wait()

    async def stop_serving(self, grace: float = 5.0) -> None:
        """Stop the gRPC server (the engines stay loaded)."""
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    async def stop(self, grace: float = 5.0) -> None:
        await self.stop_serving(grace)
        await self.registry.close()
        self._stopped.set()
