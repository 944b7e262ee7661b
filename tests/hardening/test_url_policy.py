"""The upstream URL policy: scheme allow-list, private/public blocks, checked at connect time.

The rebinding tests use a resolver stub (a name answers a private address first, a public one
next) in front of a real aiohttp server on loopback: the first request reaches it, the second
is refused before any connection is made. The adapter tests build each HTTP adapter with a
policy (as ``upstreams`` in the cluster file does) against the Ollama double on loopback.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from agent.fake_ollama import FakeOllama, serve
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from tightwad.config import config_from_mapping
from tightwad.engine.adapters.base import AdapterConfig, HttpEngine
from tightwad.engine.adapters.llama_server import LlamaServerEngine
from tightwad.engine.adapters.ollama import OllamaEngine
from tightwad.engine.adapters.openai_compat import OpenAICompatEngine
from tightwad.errors import ConfigError, UnavailableError
from tightwad.gateway.routes import build_routes
from tightwad.spec.sampling import SamplingConfig
from tightwad.url_policy import BlockedAddressError, UrlPolicy, classify_address

PRIVATE_ONLY = UrlPolicy(allow_public=False)
PUBLIC_ONLY = UrlPolicy(allow_private=False)


class ScriptedResolver(AbstractResolver):
    """Answers each lookup with the next address of a script (the last one repeats)."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.lookups = 0

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        address = self.answers[min(self.lookups, len(self.answers) - 1)]
        self.lookups += 1
        fam = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [ResolveResult(hostname=host, host=address, port=port, family=fam, proto=0, flags=0)]

    async def close(self) -> None:
        pass


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[int, list[str]]]:
    """A loopback HTTP server; ``/redirect?to=URL`` answers 302 to URL."""
    hits: list[str] = []

    async def ok(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({"ok": True})

    async def redirect(request: web.Request) -> web.Response:
        hits.append(request.path)
        raise web.HTTPFound(request.query["to"])

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/redirect", redirect)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield runner.addresses[0][1], hits
    await runner.cleanup()


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("10.1.2.3", "private"),
        ("192.168.1.10", "private"),
        ("172.16.0.1", "private"),
        ("127.0.0.1", "private"),
        ("169.254.169.254", "private"),  # cloud metadata endpoint
        ("100.64.0.1", "private"),  # CGNAT
        ("fd00::1", "private"),
        ("::1", "private"),
        ("::ffff:10.0.0.1", "private"),  # v4-mapped is judged as its v4 address
        ("8.8.8.8", "public"),
        ("2606:4700:4700::1111", "public"),
        ("0.0.0.0", "forbidden"),
        ("::", "forbidden"),
        ("224.0.0.1", "forbidden"),
    ],
)
def test_classify(address: str, kind: str) -> None:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    assert classify_address(ip) == kind


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://10.0.0.1/x",
        "gopher://10.0.0.1/",
        "unix:///var/run/docker.sock",
        "javascript:alert(1)",
        "http://",
        "http://user:pw@10.0.0.1/",
        "http://0.0.0.0:8080/",
    ],
)
def test_static_refusals(url: str) -> None:
    with pytest.raises(ConfigError, match=r"^routes\.a\.url"):
        UrlPolicy().check_url(url, key="routes.a.url")


def test_private_and_public_blocks_on_literals() -> None:
    assert PRIVATE_ONLY.check_url("http://192.168.1.5:8080/v1").host == "192.168.1.5"
    assert PRIVATE_ONLY.check_url("https://llama.lan/v1").host == "llama.lan"  # checked later
    with pytest.raises(ConfigError, match="only private addresses"):
        PRIVATE_ONLY.check_url("http://8.8.8.8/v1")
    with pytest.raises(ConfigError, match="private addresses are blocked"):
        PUBLIC_ONLY.check_url("http://169.254.169.254/latest/meta-data/")
    with pytest.raises(ConfigError, match="private addresses are blocked"):
        PUBLIC_ONLY.check_url("http://[::ffff:127.0.0.1]:80/")
    assert PUBLIC_ONLY.check_url("https://api.openai.com/v1").scheme == "https"


def test_policy_needs_something_allowed() -> None:
    with pytest.raises(ConfigError):
        UrlPolicy(allow_private=False, allow_public=False)
    with pytest.raises(ConfigError):
        UrlPolicy(schemes=frozenset({"http", "file"}))


async def test_dns_rebinding_to_a_public_address_is_refused(
    upstream: tuple[int, list[str]],
) -> None:
    port, hits = upstream
    resolver = ScriptedResolver("127.0.0.1", "93.184.216.34")
    url = f"http://backend.lan:{port}/ok"
    PRIVATE_ONLY.check_url(url)
    async with PRIVATE_ONLY.session(resolver=resolver) as session:
        async with session.get(url, headers={"Connection": "close"}) as resp:
            assert resp.status == 200
        # A new connection, a new lookup: the name now points at the internet.
        with pytest.raises(aiohttp.ClientConnectorError) as info:
            async with session.get(url) as resp:
                await resp.read()
    assert isinstance(info.value.os_error, BlockedAddressError)
    assert "93.184.216.34" in str(info.value)
    assert resolver.lookups == 2
    assert hits == ["/ok"]


async def test_rebinding_to_a_private_address_is_refused_for_public_only() -> None:
    resolver = ScriptedResolver("10.9.8.7")
    async with PUBLIC_ONLY.session(resolver=resolver) as session:
        with pytest.raises(aiohttp.ClientConnectorError) as info:
            async with session.get("http://api.example.com/v1/models") as resp:
                await resp.read()
    assert isinstance(info.value.os_error, BlockedAddressError)


async def test_mixed_answers_keep_only_allowed_addresses(
    upstream: tuple[int, list[str]],
) -> None:
    port, hits = upstream

    class Both(ScriptedResolver):
        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[ResolveResult]:
            public = ResolveResult(
                hostname=host, host="1.1.1.1", port=port, family=socket.AF_INET, proto=0, flags=0
            )
            return [public, *(await super().resolve(host, port, family))]

    session = PRIVATE_ONLY.session(resolver=Both("127.0.0.1"))
    async with session, session.get(f"http://backend.lan:{port}/ok") as resp:
        assert resp.status == 200
    assert hits == ["/ok"]


async def test_redirect_to_a_forbidden_literal_is_refused_at_connect(
    upstream: tuple[int, list[str]],
) -> None:
    port, hits = upstream
    async with PRIVATE_ONLY.session() as session:
        with pytest.raises(aiohttp.ClientConnectorError) as info:
            url = f"http://127.0.0.1:{port}/redirect?to=http://93.184.216.34:{port}/ok"
            async with session.get(url) as resp:
                await resp.read()
    assert isinstance(info.value.os_error, BlockedAddressError)
    assert hits == ["/redirect"]


async def test_literal_private_address_is_refused_at_connect_for_public_only(
    upstream: tuple[int, list[str]],
) -> None:
    # check_url would refuse it too; this proves the connector alone does as well.
    port, hits = upstream
    async with PUBLIC_ONLY.session() as session:
        with pytest.raises(aiohttp.ClientConnectorError):
            async with session.get(f"http://127.0.0.1:{port}/ok") as resp:
                await resp.read()
    assert hits == []


async def test_redirect_to_another_scheme_is_refused(upstream: tuple[int, list[str]]) -> None:
    port, _ = upstream
    policy = UrlPolicy(schemes=frozenset({"https"}))
    async with policy.session() as session:
        with pytest.raises(aiohttp.InvalidUrlClientError):
            async with session.get(f"http://127.0.0.1:{port}/ok") as resp:
                await resp.read()


# --- the policy in the HTTP adapters and the gateway's routes ------------------------------

ADAPTERS: list[type[HttpEngine]] = [LlamaServerEngine, OllamaEngine, OpenAICompatEngine]


@pytest.fixture
async def ollama() -> AsyncIterator[tuple[FakeOllama, int]]:
    fake = FakeOllama()
    async for url in serve(fake):
        yield fake, int(url.rsplit(":", 1)[1])


@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda c: c.kind)
def test_every_adapter_refuses_a_blocked_address_when_built(adapter: type[HttpEngine]) -> None:
    cfg = AdapterConfig(
        model_id="m",
        url="http://127.0.0.1:11434",
        url_policy=PUBLIC_ONLY,
        url_key="routes.0.target.url",
    )
    with pytest.raises(ConfigError) as caught:
        adapter(cfg)  # type: ignore[call-arg]
    assert caught.value.key_path == "routes.0.target.url"
    assert caught.value.reason == (
        "http://127.0.0.1:11434: 127.0.0.1 is a private address, and private addresses are "
        "blocked (upstreams.allow_private: false)"
    )


@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda c: c.kind)
def test_every_adapter_refuses_a_scheme_outside_the_allow_list(
    adapter: type[HttpEngine],
) -> None:
    cfg = AdapterConfig(
        model_id="m", url="http://10.0.0.7:8080", url_policy=UrlPolicy(schemes=frozenset({"https"}))
    )
    with pytest.raises(ConfigError, match=r"^url: http://10\.0\.0\.7:8080: scheme 'http' is not"):
        adapter(cfg)  # type: ignore[call-arg]


async def test_an_allowed_upstream_is_served(ollama: tuple[FakeOllama, int]) -> None:
    fake, port = ollama
    cfg = AdapterConfig(
        model_id="m", url=f"http://127.0.0.1:{port}", server_model="toy", url_policy=PRIVATE_ONLY
    )
    engine = await OllamaEngine.connect(cfg)
    try:
        ids = await engine.tokenize("Hello", add_special=True, parse_special=True)
        s, _, _ = await engine.open_session(ids, SamplingConfig())
        got = [t async for t, _lp, _why in s.generate(6)]
        s.release()
    finally:
        await engine.close()
    assert len(got) == 6 and fake.requests


async def test_a_host_name_is_checked_when_the_adapter_connects(
    ollama: tuple[FakeOllama, int],
) -> None:
    fake, port = ollama
    cfg = AdapterConfig(
        model_id="m", url=f"http://localhost:{port}", server_model="toy", url_policy=PUBLIC_ONLY
    )
    engine = OllamaEngine(cfg)  # a name passes the static check: it is checked per connection
    try:
        with pytest.raises(UnavailableError) as caught:
            await engine.start()
    finally:
        await engine.close()
    message = str(caught.value)
    assert f"Ollama at http://localhost:{port}/api/version refused by the upstream URL" in message
    assert "'localhost' resolved to" in message and "upstreams.allow_private: false" in message
    assert fake.requests == []


async def test_the_gateway_builds_adapters_under_the_files_policy(
    ollama: tuple[FakeOllama, int],
) -> None:
    _fake, port = ollama
    target = {"url": f"http://localhost:{port}", "model_name": "toy", "backend": "ollama"}
    routes = [{"name": "chat", "target": target}]
    built = await build_routes(config_from_mapping({"routes": routes}))
    await built.close()
    blocked = config_from_mapping({"routes": routes, "upstreams": {"allow_private": False}})
    with pytest.raises(UnavailableError, match="refused by the upstream URL policy"):
        await build_routes(blocked)
    literal = {**target, "url": f"http://127.0.0.1:{port}"}
    with pytest.raises(ConfigError, match=r"^routes\[0\]\.target\.url: http://127\.0\.0\.1"):
        config_from_mapping(
            {"routes": [{"name": "chat", "target": literal}], "upstreams": {"allow_private": False}}
        )
