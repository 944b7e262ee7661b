"""ControllerServer: the store, the Controller, its gRPC service and its sync loop.

``run()`` serves until ``stop()``; ``stop()`` is: health NOT_SERVING, ``server.stop(grace)``
(new calls refused; the long-lived streams, agents' ``Register`` and route/event followers,
ended at once; calls in flight given ``grace``), end the sync loop and followers, close agent
channels and the store.

With ``cluster.tls`` the service requires a client certificate from the cluster CA and the
executor dials agents presenting this host's certificate; the token is checked either way.
The files are read when the server is built: a missing one is a ``ConfigError`` naming its key.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tightwad.clock import Clock, SystemClock
from tightwad.config import ClusterConfig
from tightwad.controller.core import RPC_PORT_BASE, Controller
from tightwad.controller.service import ControllerServicer
from tightwad.controller.store import Store
from tightwad.logs import get_logger
from tightwad.rpc import GrpcServer, ServiceRegistration
from tightwad.tls import TlsFiles, channel_credentials, read_tls_files, server_credentials
from tightwad.v1 import controller_pb2, controller_pb2_grpc

__all__ = ["ControllerServer"]

log = get_logger("tightwad.controller")


class ControllerServer:
    def __init__(
        self,
        config: ClusterConfig,
        *,
        listen: str | None = None,
        state_path: Path | str | None = None,
        clock: Clock | None = None,
        rpc_port_base: int | None = None,
    ) -> None:
        self.config = config
        self.listen = listen or f"{config.controller.host}:{config.controller.port}"
        self.state_path = state_path if state_path is not None else config.controller.state_path
        self.clock = clock or SystemClock()
        self.rpc_port_base = rpc_port_base or RPC_PORT_BASE
        self.controller: Controller | None = None
        tls = config.cluster.tls
        self._tls: TlsFiles | None = read_tls_files(tls) if tls is not None else None
        self._grpc: GrpcServer | None = None
        self._servicer: ControllerServicer | None = None
        self._loop_task: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        assert self._grpc is not None
        return self._grpc.bound_address

    async def start(self) -> str:
        store = Store.open(self.state_path)
        self.controller = Controller(
            self.config,
            store,
            self.clock,
            rpc_port_base=self.rpc_port_base,
            agent_credentials=channel_credentials(self._tls),
        )
        name = controller_pb2.DESCRIPTOR.services_by_name["ControllerService"].full_name
        self._servicer = ControllerServicer(self.controller)
        self._grpc = GrpcServer(
            [
                ServiceRegistration(
                    name,
                    self._servicer,
                    controller_pb2_grpc.add_ControllerServiceServicer_to_server,
                )
            ],
            address=self.listen,
            token=self.config.cluster.token,
            server_credentials=server_credentials(self._tls),
        )
        await self._grpc.start()
        self._loop_task = asyncio.create_task(self.controller.run(), name="controller-sync")
        log.info(
            "controller_started",
            address=self.address,
            state=str(self.state_path),
            tls=self._tls is not None,
        )
        return self.address

    async def run(self) -> None:
        await self.start()
        assert self._grpc is not None
        await self._grpc.wait()

    async def stop(self, grace: float = 5.0) -> None:
        if self._grpc is not None:
            # Agents' Register streams and followers never end by themselves: end them first
            # (they reconnect to the next controller), so ``grace`` is for calls in flight.
            if self._servicer is not None:
                self._servicer.end_streams()
            await self._grpc.stop(grace)
            self._grpc = None
        if self.controller is not None:
            await self.controller.stop()
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        if self.controller is not None:
            self.controller.store.close()
            self.controller = None
