"""Mutual TLS + shared token on a real gRPC server (the agent's Engine service).

Proves: with the cluster's certificates and the token a call goes through; without a client
certificate, or with one from another CA, the TLS handshake fails before any RPC; with the
certificates but without (or with a wrong) token the call is UNAUTHENTICATED, and the server's
log line names the method but never the token.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from tightwad.engine.service import EngineRegistry, EngineServicer
from tightwad.rpc import GrpcServer, ServiceRegistration, client_channel
from tightwad.tls import channel_credentials, server_credentials
from tightwad.v1 import engine_pb2, engine_pb2_grpc

from .conftest import Logs, Pki

TOKEN = "cluster-token-5f2c9e1d-do-not-log"


@pytest.fixture
async def server(pki: Pki) -> AsyncIterator[GrpcServer]:
    registration = ServiceRegistration(
        name=engine_pb2.DESCRIPTOR.services_by_name["EngineService"].full_name,
        servicer=EngineServicer(EngineRegistry()),
        add=engine_pb2_grpc.add_EngineServiceServicer_to_server,
    )
    srv = GrpcServer(
        [registration],
        address="127.0.0.1:0",
        token=TOKEN,
        server_credentials=server_credentials(pki.node),
    )
    await srv.start()
    yield srv
    await srv.stop(grace=0.1)


async def _info(channel: grpc.aio.Channel) -> grpc.StatusCode:
    """Call Engine.Info; the status code it ends with (NOT_FOUND = authorised, no model)."""
    async with channel:
        stub = engine_pb2_grpc.EngineServiceStub(channel)
        try:
            await stub.Info(engine_pb2.InfoRequest(model="none"), timeout=5)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def test_right_certificate_and_token_pass(server: GrpcServer, pki: Pki) -> None:
    channel = client_channel(
        server.bound_address, token=TOKEN, credentials=channel_credentials(pki.client)
    )
    # Past TLS and auth, the empty registry answers NOT_FOUND: the call reached the servicer.
    assert await _info(channel) == grpc.StatusCode.NOT_FOUND


async def test_no_client_certificate_fails_the_handshake(server: GrpcServer, pki: Pki) -> None:
    ca_only = grpc.ssl_channel_credentials(root_certificates=pki.client.ca_file.read_bytes())
    channel = client_channel(server.bound_address, token=TOKEN, credentials=ca_only)
    assert await _info(channel) == grpc.StatusCode.UNAVAILABLE


async def test_certificate_from_another_ca_fails(server: GrpcServer, pki: Pki) -> None:
    # The stranger trusts the cluster CA (so it could verify the server) but its own
    # certificate is signed by another CA: the server must refuse it.
    stranger = grpc.ssl_channel_credentials(
        root_certificates=pki.client.ca_file.read_bytes(),
        private_key=pki.stranger.key_file.read_bytes(),
        certificate_chain=pki.stranger.cert_file.read_bytes(),
    )
    channel = client_channel(server.bound_address, token=TOKEN, credentials=stranger)
    assert await _info(channel) == grpc.StatusCode.UNAVAILABLE


async def test_client_refuses_a_server_from_another_ca(pki: Pki) -> None:
    registration = ServiceRegistration(
        name=engine_pb2.DESCRIPTOR.services_by_name["EngineService"].full_name,
        servicer=EngineServicer(EngineRegistry()),
        add=engine_pb2_grpc.add_EngineServiceServicer_to_server,
    )
    impostor = GrpcServer(
        [registration], token=TOKEN, server_credentials=server_credentials(pki.stranger)
    )
    await impostor.start()
    try:
        channel = client_channel(
            impostor.bound_address, token=TOKEN, credentials=channel_credentials(pki.client)
        )
        assert await _info(channel) == grpc.StatusCode.UNAVAILABLE
    finally:
        await impostor.stop(grace=0.1)


@pytest.mark.parametrize("token", [None, "wrong-token", TOKEN[:-1], TOKEN + "x"])
async def test_missing_or_wrong_token_is_unauthenticated_and_not_logged(
    server: GrpcServer, pki: Pki, logs: Logs, token: str | None
) -> None:
    channel = client_channel(
        server.bound_address, token=token, credentials=channel_credentials(pki.client)
    )
    assert await _info(channel) == grpc.StatusCode.UNAUTHENTICATED
    text = logs.text()
    assert "rpc_unauthenticated" in text
    assert "/tightwad.v1.EngineService/Info" in text
    assert TOKEN not in text
    if token:
        assert token not in text


async def test_health_stays_open_for_probes(server: GrpcServer, pki: Pki) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = client_channel(server.bound_address, credentials=channel_credentials(pki.client))
    async with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        # Watch streams too (the error-mapping interceptor leaves grpc's own servicers alone).
        watch = stub.Watch(health_pb2.HealthCheckRequest(), timeout=5)
        first = await watch.read()
        watch.cancel()
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert first.status == health_pb2.HealthCheckResponse.SERVING
