"""The SSRF guard: which sink URLs and addresses are refused, and when."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from tidings.delivery.ssrf import (
    GuardedResolver,
    UnsafeAddressError,
    UnsafeSink,
    check_sink,
    check_sink_url,
    guarded_socket_factory,
    is_public_address,
    vet_sink_url,
)

REFUSED = [
    "http://127.0.0.1/",
    "http://127.1/",
    "http://2130706433/",
    "http://0x7f000001/",
    "http://0177.0.0.1/",
    "http://017700000001/",
    "http://0/",
    "http://localhost/",
    "http://LOCALHOST./",
    "http://hooks.localhost/",
    "http://0.0.0.0/",
    "http://10.0.0.1/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://169.254.169.254/",
    "http://100.64.0.1/",
    "http://198.18.0.1/",
    "http://240.0.0.1/",
    "http://255.255.255.255/",
    "http://[::1]/",
    "http://[::]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::127.0.0.1]/",
    "http://[fe80::1]/",
    "http://[fe80::1%25eth0]/",
    "http://[fd00::1]/",
    "http://[64:ff9b::7f00:1]/",
    "http://[64:ff9b:1::808:808]/",
    "http://[2002:7f00:1::1]/",
    # Teredo: server 65.54.227.120, client 10.0.0.1 (stored inverted: f5ff:fffe).
    "http://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/",
    "http://evil.example@127.0.0.1/",
    "http://user:pass@example.com/",
    "file:///etc/passwd",
    "gopher://x/",
    "ftp://example.com/",
    "http://224.0.0.1/",
    "http://[ff02::1]/",
    "http://192.0.2.1/",
    "http://198.51.100.7/",
    "http://203.0.113.9/",
    "http://[2001:db8::1]/",
    "http://[3fff::1]/",
    "http://[2001:2::1]/",
    "http://\u2460\u2461\u2466.0.0.1/",  # circled digits, which IDNA maps to 127.0.0.1
    "http://127.0.0.%31/",
    "http:///nohost",
    "http://example.com:0/",
    "http://example.com:99999/",
    "not a url",
]

ACCEPTED = [
    "https://93.184.216.34/hook",
    "https://[2606:4700::1111]/",
    "http://8.8.8.8:8080/x?y=1#frag",
    "https://[::ffff:93.184.216.34]/",
    "https://[64:ff9b::808:808]/",
    "https://[2002:808:808::1]/",
]


@pytest.mark.parametrize("url", REFUSED)
def test_unsafe_urls_are_refused(url: str) -> None:
    """Every non-public, non-http(s), userinfo or malformed sink URL raises UnsafeSink."""
    with pytest.raises(UnsafeSink) as refused:
        check_sink_url(url, allow_private=False)
    assert str(refused.value)


@pytest.mark.parametrize("url", REFUSED)
async def test_unsafe_urls_are_refused_async(url: str) -> None:
    """The async check refuses exactly what the blocking one does."""
    with pytest.raises(UnsafeSink):
        await check_sink(url, allow_private=False)


@pytest.mark.parametrize("url", ACCEPTED)
def test_public_urls_are_accepted(url: str) -> None:
    """Public IP literals, in IPv4 and IPv6 and IPv4-carrying forms, pass."""
    check_sink_url(url, allow_private=False)


@pytest.mark.parametrize("url", ACCEPTED)
async def test_public_urls_are_accepted_async(url: str) -> None:
    """The async check accepts public IP literals too."""
    await check_sink(url, allow_private=False)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://evil.example@127.0.0.1/", "userinfo"),
        ("file:///etc/passwd", "http or https"),
        ("http://127.1/", "127.0.0.1, a loopback address"),
        ("http://[::ffff:10.1.2.3]/", "private address (IPv4-mapped, carrying 10.1.2.3)"),
        ("http://169.254.169.254/", "link-local"),
        ("http://100.64.0.1/", "CGNAT"),
        ("http://localhost/", "local name"),
        ("http://xn--/", "'xn--' is not a valid host name"),
        ("http://xn--zz.example/", "not a valid host name"),
    ],
)
def test_refusals_say_what_is_wrong(url: str, words: str) -> None:
    """The UnsafeSink message names the problem."""
    with pytest.raises(UnsafeSink, match=words.replace("(", r"\(").replace(")", r"\)")):
        check_sink_url(url, allow_private=False)


@pytest.mark.parametrize("port", ["\uff18\uff10", "+80", "1_0", " 80", "80 ", "-1", "99999"])
@pytest.mark.parametrize("allow_private", [False, True])
def test_a_port_is_ascii_digits_only(port: str, allow_private: bool) -> None:
    """What int() takes is not all a port: the stored sink is read again by urllib."""
    with pytest.raises(UnsafeSink, match="sink URL is not valid"):
        check_sink_url(f"http://example.com:{port}/hook", allow_private=allow_private)


def test_allow_private_keeps_only_syntax_checks() -> None:
    """With allow_private, private addresses pass but a bad scheme or userinfo does not."""
    check_sink_url("http://127.0.0.1:8080/x", allow_private=True)
    check_sink_url("http://localhost:8080/x", allow_private=True)
    check_sink_url("http://[::1]/", allow_private=True)
    for url in ("file:///etc/passwd", "http://evil.example@127.0.0.1/", "http:///x"):
        with pytest.raises(UnsafeSink):
            check_sink_url(url, allow_private=True)


def test_unresolvable_names_are_accepted_for_now() -> None:
    """A name that does not resolve passes: it is checked again when dialled."""
    check_sink_url("https://nothing-here.invalid/hook", allow_private=False)


def test_names_resolving_to_private_addresses_are_refused() -> None:
    """A name is refused when any address it resolves to is not public."""
    name = socket.gethostname()
    try:
        infos = socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)
    except OSError:
        pytest.skip(f"this machine's name {name!r} does not resolve")
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if all(is_public_address(ip) for ip in addresses):
        pytest.skip(f"this machine's name {name!r} resolves to public addresses only")
    with pytest.raises(UnsafeSink, match="resolves to"):
        check_sink_url(f"http://{name}/", allow_private=False)


def test_vet_needs_no_dns_and_returns_the_parsed_url() -> None:
    """vet_sink_url judges literals and localhost, leaves other names, and returns the URL."""
    url = vet_sink_url("https://Hooks.Example.com:8443/a?b=c", allow_private=False)
    assert (url.host, url.port, url.path_qs) == ("hooks.example.com", 8443, "/a?b=c")
    with pytest.raises(UnsafeSink):
        vet_sink_url("http://0x7f000001/", allow_private=False)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("8.8.8.8", True),
        ("2606:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("100.127.255.255", False),
        ("100.128.0.0", True),
        ("172.31.255.255", False),
        ("172.32.0.0", True),
        ("::ffff:8.8.8.8", True),
        ("::ffff:192.168.0.1", False),
        ("fe80::1%lo", False),
        ("fc00::1", False),
        ("ff05::2", False),
        ("2001:db8::", False),
        ("::2", False),
        ("4000::1", False),
    ],
)
def test_is_public_address(address: str, public: bool) -> None:
    """is_public_address draws the line where the IANA registries do."""
    assert is_public_address(ipaddress.ip_address(address)) is public


class StaticResolver(AbstractResolver):
    """A resolver with a fixed, changeable table (a stand-in for a DNS zone)."""

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The table's address for `host`."""
        self.asked.append(host)
        if host not in self.table:
            raise OSError(f"{host} is not in the table")
        address = self.table[host]
        kind = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [
            ResolveResult(hostname=host, host=address, port=port, family=kind, proto=0, flags=0)
        ]

    async def close(self) -> None:
        """Nothing to release."""


async def test_guarded_resolver_refuses_localhost() -> None:
    """The system resolver's answer for localhost is refused, as an OSError."""
    resolver = GuardedResolver()
    try:
        with pytest.raises(UnsafeAddressError, match="loopback") as refused:
            await resolver.resolve("localhost", 80, socket.AF_UNSPEC)
        assert isinstance(refused.value, OSError)
        assert isinstance(refused.value, UnsafeSink)
    finally:
        await resolver.close()


async def test_guarded_resolver_refuses_a_rebound_name() -> None:
    """A name that resolved to a public address and now resolves to 127.0.0.1 is refused."""
    zone = StaticResolver({"hooks.example": "93.184.216.34"})
    resolver = GuardedResolver(zone)
    answer = await resolver.resolve("hooks.example", 443)
    assert [result["host"] for result in answer] == ["93.184.216.34"]
    zone.table["hooks.example"] = "127.0.0.1"
    with pytest.raises(UnsafeAddressError, match=r"hooks\.example resolves to 127\.0\.0\.1"):
        await resolver.resolve("hooks.example", 443)
    zone.table["hooks.example"] = "::ffff:169.254.169.254"
    with pytest.raises(UnsafeAddressError, match="link-local"):
        await resolver.resolve("hooks.example", 443)
    await resolver.close()


def test_guarded_socket_factory_refuses_non_public_addresses() -> None:
    """The socket factory refuses a private address and opens a socket for a public one."""
    private = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("10.0.0.1", 80))
    with pytest.raises(UnsafeAddressError, match="private"):
        guarded_socket_factory(private)
    public = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("8.8.8.8", 80))
    with guarded_socket_factory(public) as sock:  # not connected: nothing is sent
        assert sock.family == socket.AF_INET
