"""The delivery transport against real aiohttp servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gzip
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.test_ssrf import StaticResolver
from tidings.delivery.ssrf import GuardedResolver, UnsafeAddressError, guarded_socket_factory
from tidings.delivery.transport import AiohttpTransport, HttpOutcome, parse_retry_after

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BIG = bytes(i % 251 for i in range(100 * 1024))
TEXT = "".join(f"line {i:06d}\n" for i in range(10_000))  # ~120 KB of text


@dataclass
class Seen:
    """One request as the sink received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Sink:
    """A running sink server and the requests it received."""

    server: TestServer
    seen: list[Seen] = field(default_factory=list)

    def url(self, path: str = "/hook") -> str:
        """The URL of `path` on this sink."""
        return str(self.server.make_url(path))

    @property
    def port(self) -> int:
        """The port the sink listens on."""
        assert self.server.port is not None
        return self.server.port


StartSink = Callable[[Handler], Awaitable[Sink]]
MakeTransport = Callable[..., AiohttpTransport]


@pytest.fixture
def release() -> asyncio.Event:
    """Set when a test ends, to let hanging handlers return."""
    return asyncio.Event()


@pytest.fixture
async def start_sink(release: asyncio.Event) -> AsyncIterator[StartSink]:
    """Starts sinks that answer with a handler and record every request."""
    servers: list[TestServer] = []

    async def start(handler: Handler) -> Sink:
        sink: Sink

        async def record(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            sink.seen.append(Seen(request.method, request.path, dict(request.headers), body))
            return await handler(request)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", record)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        sink = Sink(server)
        return sink

    yield start
    release.set()
    for server in servers:
        await server.close()


@pytest.fixture
async def make_transport() -> AsyncIterator[MakeTransport]:
    """Makes transports, and closes them when the test ends."""
    made: list[AiohttpTransport] = []

    def make(**options: Any) -> AiohttpTransport:
        options.setdefault("allow_private", True)
        transport = AiohttpTransport(**options)
        made.append(transport)
        return transport

    yield make
    for transport in made:
        await transport.close()


def answer(
    status: int = 200, body: bytes = b"ok", headers: dict[str, str] | None = None
) -> Handler:
    """A handler that always gives the same response."""

    async def handle(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=body, headers=headers)

    return handle


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_200_returns_the_first_4_kb_of_the_body(
    start_sink: StartSink, make_transport: MakeTransport
) -> None:
    """A 200 is an outcome with the status and only the first 4 KB of a 100 KB body."""
    sink = await start_sink(
        answer(body=BIG, headers={"Content-Type": "text/plain; charset=latin-1"})
    )
    outcome = await make_transport().post(sink.url(), {}, b"{}")
    assert outcome.status == 200
    assert outcome.error is None
    assert outcome.response == BIG[:4096].decode("latin-1")
    assert outcome.retry_after_s is None
    assert outcome.latency_ms > 0


async def test_gzip_responses_are_decoded(
    start_sink: StartSink, make_transport: MakeTransport
) -> None:
    """A gzip-encoded body is decoded, then cut to 4 KB."""
    sink = await start_sink(
        answer(body=gzip.compress(TEXT.encode()), headers={"Content-Encoding": "gzip"})
    )
    outcome = await make_transport().post(sink.url(), {}, b"{}")
    assert outcome.status == 200
    assert outcome.response == TEXT[:4096]


async def test_headers_and_body_arrive_exactly(
    start_sink: StartSink, make_transport: MakeTransport
) -> None:
    """The headers and body given to post are what the sink receives, Authorization included."""
    sink = await start_sink(answer(status=204, body=b""))
    headers = {
        "Authorization": "Bearer eyJhbGciOiJFUzI1NiJ9.e30.c2ln",
        "Content-Type": "application/json",
        "Ce-Id": "evt_01",
        "Ce-Type": "dev.example.widget.created.v1",
        "Webhook-Signature": "v1,abc=",
    }
    body = b'{"name":"w1"}'
    outcome = await make_transport().post(sink.url("/a/b?c=d"), headers, body)
    assert outcome.status == 204
    [seen] = sink.seen
    assert (seen.method, seen.path, seen.body) == ("POST", "/a/b", body)
    for name, value in headers.items():
        assert seen.headers[name] == value
    assert seen.headers["User-Agent"].startswith("tidings/")


async def test_a_request_user_agent_wins(
    start_sink: StartSink, make_transport: MakeTransport
) -> None:
    """The transport's User-Agent is a default that a request's own header replaces."""
    sink = await start_sink(answer())
    transport = make_transport(user_agent="tidings-test/1")
    await transport.post(sink.url(), {}, b"")
    await transport.post(sink.url(), {"User-Agent": "custom/2"}, b"")
    assert [seen.headers["User-Agent"] for seen in sink.seen] == ["tidings-test/1", "custom/2"]


async def test_redirects_are_not_followed(
    start_sink: StartSink, make_transport: MakeTransport
) -> None:
    """A 302 is returned as is, and its Location never receives a request."""
    elsewhere = await start_sink(answer())
    sink = await start_sink(
        answer(status=302, body=b"moved", headers={"Location": elsewhere.url("/next")})
    )
    outcome = await make_transport().post(sink.url(), {"Authorization": "Bearer t"}, b"{}")
    assert outcome.status == 302
    assert outcome.response == "moved"
    assert len(sink.seen) == 1
    assert elsewhere.seen == []


async def test_a_hanging_sink_is_cut_at_the_total_timeout(
    start_sink: StartSink, make_transport: MakeTransport, release: asyncio.Event
) -> None:
    """A sink that never answers gives status None and a timeout error after total_timeout."""

    async def hang(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response()

    sink = await start_sink(hang)
    outcome = await make_transport(total_timeout=0.5).post(sink.url(), {}, b"{}")
    assert outcome.status is None
    assert outcome.error == "timed out after 0.5 s"
    assert 400 <= outcome.latency_ms < 5000


async def test_a_body_that_stalls_keeps_the_status(
    start_sink: StartSink, make_transport: MakeTransport, release: asyncio.Event
) -> None:
    """When the status arrived but the body stalls, the status is kept and the error says so."""

    async def stall(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200)
        await response.prepare(request)
        await response.write(b"partial")
        await release.wait()
        return response

    sink = await start_sink(stall)
    outcome = await make_transport(total_timeout=0.5).post(sink.url(), {}, b"{}")
    assert outcome.status == 200
    assert outcome.error == "reading the response: timed out after 0.5 s"


async def test_a_closed_port_is_connection_refused(make_transport: MakeTransport) -> None:
    """Nothing listening gives status None and "connection refused"."""
    outcome = await make_transport().post(f"http://127.0.0.1:{closed_port()}/", {}, b"{}")
    assert outcome.status is None
    assert outcome.error == "connection refused"
    assert outcome.response == ""


@pytest.mark.parametrize(
    ("value", "low", "high"),
    [
        ("120", 120.0, 120.0),
        ("0", 0.0, 0.0),
        ("<HTTP-date in 120 s>", 110.0, 121.0),
        ("<HTTP-date an hour ago>", 0.0, 0.0),
    ],
)
async def test_retry_after_is_parsed(
    start_sink: StartSink, make_transport: MakeTransport, value: str, low: float, high: float
) -> None:
    """Retry-After in delta-seconds and as an HTTP-date becomes seconds to wait."""
    # HTTP-dates are made when the test runs, not when the module is collected.
    offsets = {"<HTTP-date in 120 s>": 120, "<HTTP-date an hour ago>": -3600}
    if value in offsets:
        value = formatdate(time.time() + offsets[value], usegmt=True)
    sink = await start_sink(answer(status=429, headers={"Retry-After": value}))
    outcome = await make_transport().post(sink.url(), {}, b"{}")
    assert outcome.status == 429
    assert outcome.retry_after_s is not None
    assert low <= outcome.retry_after_s <= high


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5", "Mon, 99 Foo 2024"])
def test_unusable_retry_after_is_none(value: str | None) -> None:
    """A missing or malformed Retry-After gives None."""
    assert parse_retry_after(value, time.time()) is None


async def test_proxy_variables_are_ignored(
    start_sink: StartSink, make_transport: MakeTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY and friends pointing at a dead port do not divert deliveries."""
    dead = f"http://127.0.0.1:{closed_port()}"
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, dead)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    sink = await start_sink(answer())
    outcome = await make_transport().post(sink.url(), {}, b"{}")
    assert (outcome.status, outcome.error) == (200, None)
    assert len(sink.seen) == 1


async def test_private_sinks_are_refused_before_any_request(
    start_sink: StartSink, make_transport: MakeTransport
) -> None:
    """Without allow_private, http://127.0.0.1:<port>/ is refused and the sink sees nothing."""
    sink = await start_sink(answer())
    transport = make_transport(allow_private=False)
    for url in (sink.url(), f"http://localhost:{sink.port}/", f"http://0x7f000001:{sink.port}/"):
        outcome = await transport.post(url, {}, b"{}")
        assert outcome.status is None
        assert outcome.error is not None
        assert outcome.error.startswith("unsafe sink: ")
    assert sink.seen == []


async def test_a_name_resolving_to_loopback_is_refused_at_dial_time(
    start_sink: StartSink, make_transport: MakeTransport
) -> None:
    """A name that passes the URL check but resolves to 127.0.0.1 when dialled is refused."""
    sink = await start_sink(answer())
    zone = StaticResolver({"hooks.example": "127.0.0.1"})
    transport = make_transport(allow_private=False, resolver=zone)
    outcome = await transport.post(f"http://hooks.example:{sink.port}/", {}, b"{}")
    assert outcome.status is None
    assert outcome.error == (
        "unsafe sink: sink host hooks.example resolves to 127.0.0.1, a loopback address"
    )
    assert zone.asked == ["hooks.example"]
    assert sink.seen == []


async def test_the_machine_name_is_refused_at_dial_time(
    start_sink: StartSink, make_transport: MakeTransport
) -> None:
    """With the system resolver, this machine's own name (a local address) is refused when dialled."""
    name = socket.gethostname()
    try:
        infos = socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)
    except OSError:
        pytest.skip(f"this machine's name {name!r} does not resolve")
    if not any(str(info[4][0]).startswith(("127.", "::1")) for info in infos):
        pytest.skip(f"this machine's name {name!r} does not resolve to a loopback address")
    sink = await start_sink(answer())
    outcome = await make_transport(allow_private=False).post(
        f"http://{name}:{sink.port}/", {}, b"{}"
    )
    assert outcome.status is None
    assert outcome.error is not None
    assert outcome.error.startswith(f"unsafe sink: sink host {name} resolves to ")
    assert sink.seen == []


async def test_aiohttp_skips_the_resolver_for_ip_literals_so_the_socket_factory_checks(
    start_sink: StartSink,
) -> None:
    """aiohttp never asks the resolver about 127.0.0.1; guarded_socket_factory refuses it."""
    sink = await start_sink(answer())
    zone = StaticResolver({})
    connector = aiohttp.TCPConnector(
        resolver=GuardedResolver(zone), socket_factory=guarded_socket_factory
    )
    async with aiohttp.ClientSession(connector=connector) as session:
        with pytest.raises(aiohttp.ClientConnectorError) as refused:
            await session.get(sink.url())
    assert isinstance(refused.value.os_error, UnsafeAddressError)
    assert zone.asked == []
    assert sink.seen == []


async def test_post_never_raises(make_transport: MakeTransport) -> None:
    """Malformed URLs, bad headers and a closed transport are outcomes, not exceptions."""
    transport = make_transport()
    outcomes: list[HttpOutcome] = [
        await transport.post("not a url", {}, b""),
        await transport.post(
            f"http://127.0.0.1:{closed_port()}/", {"Authorization": "Bearer s3cret\r\nX: y"}, b""
        ),
    ]
    await transport.close()
    outcomes.append(await transport.post("http://127.0.0.1/", {}, b""))
    for outcome in outcomes:
        assert outcome.status is None
        assert outcome.error
        assert "s3cret" not in outcome.error
    assert outcomes[-1].error == "transport is closed"
