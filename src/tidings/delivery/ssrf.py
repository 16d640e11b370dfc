"""The SSRF guard: a sink may only be reached at a public address, over http(s).

A sink URL is customer input, so tidings must not become a way into its own
network. The guard works in three layers, each catching what the one before
cannot see:

1. `check_sink_url` / `check_sink` (when a sink is saved; `vet_sink_url`, their
   DNS-free part, before every delivery): the scheme is http or https, the URL
   has a host, a valid port and no userinfo; a host that is an IP literal in any
   form glibc accepts (``127.1``, ``2130706433``, ``0x7f000001``,
   ``0177.0.0.1``, ``[::ffff:127.0.0.1]``...) is judged; ``localhost`` and
   ``*.localhost`` are refused; a name is resolved and refused if any of its
   addresses is not public. A name that does not resolve *is accepted* here:
   DNS may be down or not yet set up, and the address is checked again when
   dialled.
2. `GuardedResolver`, the resolver of the delivery client: it refuses a name
   any of whose addresses is not public, at the moment of dialling. A name that
   was public when the sink was saved and points at 127.0.0.1 later (DNS
   rebinding) is refused here.
3. `guarded_socket_factory`, the `socket_factory` of the delivery client's
   aiohttp ``TCPConnector``: aiohttp does not ask the resolver about a host that
   looks like an IP literal (all digits and dots, or containing ``:``), so this
   last check sees every address actually dialled, literal or resolved.

An address is public unless it is loopback, private, link-local, CGNAT,
multicast, reserved, documentation, benchmarking or unspecified; IPv6
addresses that carry an IPv4 address (mapped, compatible, NAT64, 6to4, Teredo)
are judged by the IPv4 address inside. ``allow_private=True`` (tests, on-prem
installs) keeps only the syntax and scheme checks.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from aiohappyeyeballs import AddrInfoType
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

__all__ = [
    "GuardedResolver",
    "UnsafeAddressError",
    "UnsafeSink",
    "check_sink",
    "check_sink_url",
    "guarded_socket_factory",
    "is_public_address",
    "vet_sink_url",
]

_SCHEMES = frozenset({"http", "https"})
# What a host name may hold once yarl has IDNA-encoded it.
_HOSTNAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")


class UnsafeSink(Exception):
    """A sink URL or address that tidings refuses to deliver to; the message says why."""


class UnsafeAddressError(OSError, UnsafeSink):
    """A dial-time refusal: an OSError, so that aiohttp reports a connection error."""

    def __init__(self, message: str) -> None:
        super().__init__(None, message)

    def __str__(self) -> str:
        return str(self.strerror)


def _net4(text: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(text)


def _net6(text: str) -> ipaddress.IPv6Network:
    return ipaddress.IPv6Network(text)


# Not public, first match wins (IANA IPv4 special-purpose registry, and more).
_V4_REFUSED: tuple[tuple[ipaddress.IPv4Network, str], ...] = (
    (_net4("0.0.0.0/8"), "an unspecified ('this network') address"),
    (_net4("10.0.0.0/8"), "a private address"),
    (_net4("100.64.0.0/10"), "a shared (CGNAT) address"),
    (_net4("127.0.0.0/8"), "a loopback address"),
    (_net4("169.254.0.0/16"), "a link-local address"),
    (_net4("172.16.0.0/12"), "a private address"),
    (_net4("192.0.0.0/24"), "an IETF protocol assignment"),
    (_net4("192.0.2.0/24"), "a documentation address"),
    (_net4("192.88.99.0/24"), "a reserved (6to4 relay) address"),
    (_net4("192.168.0.0/16"), "a private address"),
    (_net4("198.18.0.0/15"), "a benchmarking address"),
    (_net4("198.51.100.0/24"), "a documentation address"),
    (_net4("203.0.113.0/24"), "a documentation address"),
    (_net4("224.0.0.0/4"), "a multicast address"),
    (_net4("255.255.255.255/32"), "the broadcast address"),
    (_net4("240.0.0.0/4"), "a reserved address"),
)

_GLOBAL_UNICAST = _net6("2000::/3")
# Outside 2000::/3 nothing is public; these only name the reason.
_V6_OUTSIDE: tuple[tuple[ipaddress.IPv6Network, str], ...] = (
    (_net6("fe80::/10"), "a link-local address"),
    (_net6("fec0::/10"), "a site-local address"),
    (_net6("fc00::/7"), "a unique local (private) address"),
    (_net6("ff00::/8"), "a multicast address"),
    (_net6("64:ff9b:1::/48"), "a local-use NAT64 address"),
    (_net6("100::/64"), "a discard-only address"),
    (_net6("5f00::/16"), "an SRv6 SID"),
)
# Inside 2000::/3, first match wins (6to4 and Teredo are judged before these).
_V6_INSIDE: tuple[tuple[ipaddress.IPv6Network, str], ...] = (
    (_net6("2001:db8::/32"), "a documentation address"),
    (_net6("3fff::/20"), "a documentation address"),
    (_net6("2001:2::/48"), "a benchmarking address"),
    (_net6("2001:10::/28"), "a reserved (ORCHID) address"),
    (_net6("2001:20::/28"), "a reserved (ORCHIDv2) address"),
    (_net6("2001::/23"), "an IETF protocol assignment"),
)
_MAPPED = _net6("::ffff:0:0/96")
_COMPATIBLE = _net6("::/96")
_NAT64 = _net6("64:ff9b::/96")
_SIX_TO_FOUR = _net6("2002::/16")
_TEREDO = _net6("2001::/32")


def _first_match(
    ip: IPAddress, table: Iterable[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]]
) -> str | None:
    for network, reason in table:
        if ip in network:
            return reason
    return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[list[ipaddress.IPv4Address], str] | None:
    """The IPv4 addresses an IPv6 address carries, and how, or None."""
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _MAPPED:
        return [low32], "IPv4-mapped"
    if ip in _COMPATIBLE:
        return [low32], "IPv4-compatible"
    if ip in _NAT64:
        return [low32], "NAT64"
    if ip in _SIX_TO_FOUR and ip.sixtofour is not None:
        return [ip.sixtofour], "6to4"
    if ip in _TEREDO and ip.teredo is not None:
        server, client = ip.teredo
        return [server, client], "Teredo"
    return None


def _refusal(ip: IPAddress) -> str | None:
    """Why `ip` is not public ("a loopback address"...), or None when it is."""
    if isinstance(ip, ipaddress.IPv4Address):
        return _first_match(ip, _V4_REFUSED)
    ip = ipaddress.IPv6Address(int(ip))  # drop any %scope
    if ip == ipaddress.IPv6Address("::"):
        return "an unspecified address"
    if ip == ipaddress.IPv6Address("::1"):
        return "a loopback address"
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        inner, how = embedded
        for v4 in inner:
            reason = _first_match(v4, _V4_REFUSED)
            if reason is not None:
                return f"{reason} ({how}, carrying {v4})"
        return None
    if ip not in _GLOBAL_UNICAST:
        return _first_match(ip, _V6_OUTSIDE) or "not a global unicast address"
    return _first_match(ip, _V6_INSIDE)


def is_public_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether a sink may be reached at `ip`."""
    return _refusal(ip) is None


def _text_refusal(address: str) -> str | None:
    """Why the numeric address `address` may not be dialled; unparseable ones are refused."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "not a numeric IP address"
    return _refusal(ip)


def _literal_addresses(host: str) -> list[IPAddress] | None:
    """The addresses an IP-literal host means to glibc (no DNS), or None for a name."""
    if ":" in host:
        try:
            return [ipaddress.IPv6Address(host)]
        except ValueError:
            raise UnsafeSink(f"sink host {host!r} is not a valid IPv6 address") from None
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError):
        infos = []
    found = [ipaddress.ip_address(info[4][0]) for info in infos]
    if not found:
        try:  # legacy forms that inet_aton takes and getaddrinfo might not
            found = [ipaddress.IPv4Address(socket.inet_aton(host))]
        except OSError:
            return None
    return found


def _is_local_name(host: str) -> bool:
    name = host.rstrip(".")
    return name == "localhost" or name.endswith(".localhost")


def _judge(host: str, addresses: Iterable[IPAddress], resolved: bool) -> None:
    for ip in addresses:
        reason = _refusal(ip)
        if reason is not None:
            if resolved:
                raise UnsafeSink(f"sink host {host} resolves to {ip}, {reason}")
            if str(ip) != host:
                raise UnsafeSink(f"sink host {host} means {ip}, {reason}")
            raise UnsafeSink(f"sink host {host} is {reason}")


def vet_sink_url(url: str | URL, allow_private: bool) -> URL:
    """Check all that needs no DNS (syntax, scheme, userinfo, IP literals, localhost); the parsed URL."""
    try:
        parsed = url if isinstance(url, URL) else URL(url)
        port = parsed.port
        if isinstance(url, str):
            # yarl reads a port as int() does ("+80", "1_0", fullwidth digits); whatever later
            # reads the stored text (urllib) takes ASCII digits only.
            urlsplit(url).port  # noqa: B018
    except (ValueError, TypeError) as exc:
        raise UnsafeSink(f"sink URL is not valid: {exc}") from None
    if parsed.scheme not in _SCHEMES:
        shown = parsed.scheme or "none"
        raise UnsafeSink(f"sink URL scheme must be http or https, not {shown!r}")
    if parsed.raw_user is not None or parsed.raw_password is not None:
        raise UnsafeSink("sink URL must not contain userinfo (user:password@)")
    host = parsed.raw_host
    if not parsed.is_absolute() or not host:
        raise UnsafeSink("sink URL has no host")
    if port is None or not 0 < port < 65536:
        raise UnsafeSink(f"sink URL port {port} is not valid")
    if ":" not in host and not _HOSTNAME.fullmatch(host):
        raise UnsafeSink(f"sink host {host!r} is not a valid host name")
    try:
        decoded = parsed.host or host
    except UnicodeError:  # an "xn--" label that is not punycode
        raise UnsafeSink(f"sink host {host!r} is not a valid host name") from None
    if allow_private:
        return parsed
    literal = _literal_addresses(decoded if ":" in host else host)
    if literal is not None:
        _judge(host, literal, resolved=False)
    elif _is_local_name(host):
        raise UnsafeSink(f"sink host {host} is a local name")
    return parsed


def _name_to_resolve(parsed: URL) -> str | None:
    """The host of a vetted URL when it is a name (not an IP literal)."""
    host = parsed.raw_host
    assert host is not None
    if ":" in host or _literal_addresses(host) is not None:
        return None
    return host


def _addresses(infos: Iterable[tuple[object, ...]]) -> list[IPAddress]:
    """The addresses in getaddrinfo's answer."""
    found: list[IPAddress] = []
    for *_, sockaddr in infos:
        assert isinstance(sockaddr, tuple)
        found.append(ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]))
    return found


def check_sink_url(url: str, allow_private: bool) -> None:
    """Refuse (UnsafeSink) a sink URL that is malformed or reaches a non-public address.

    Blocking: a host name is resolved with getaddrinfo, and refused if any of its
    addresses is not public. A name that does not resolve is accepted, since
    `GuardedResolver` checks it again when it is dialled.
    """
    parsed = vet_sink_url(url, allow_private)
    name = None if allow_private else _name_to_resolve(parsed)
    if name is None:
        return
    try:
        infos = socket.getaddrinfo(name, parsed.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return
    _judge(name, _addresses(infos), resolved=True)


async def check_sink(url: str, allow_private: bool) -> None:
    """`check_sink_url`, resolving with the running loop's getaddrinfo."""
    parsed = vet_sink_url(url, allow_private)
    name = None if allow_private else _name_to_resolve(parsed)
    if name is None:
        return
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(name, parsed.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return
    _judge(name, _addresses(infos), resolved=True)


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that refuses a name any of whose addresses is not public.

    It wraps `inner` (by default aiohttp's ThreadedResolver, created on first use
    inside the running loop) and raises `UnsafeAddressError`, an OSError, which
    aiohttp reports as a ClientConnectorDNSError.
    """

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The addresses of `host`, all of them public."""
        if self._inner is None:
            self._inner = ThreadedResolver()
        results = await self._inner.resolve(host, port, family)
        for result in results:
            reason = _text_refusal(result["host"])
            if reason is not None:
                raise UnsafeAddressError(f"sink host {host} resolves to {result['host']}, {reason}")
        return results

    async def close(self) -> None:
        """Close the wrapped resolver."""
        if self._inner is not None:
            await self._inner.close()


def guarded_socket_factory(addr_info: AddrInfoType) -> socket.socket:
    """A socket for `addr_info`, refused (UnsafeAddressError) when its address is not public.

    For aiohttp's ``TCPConnector(socket_factory=...)``: it sees every address
    dialled, including IP-literal hosts that never reach the resolver.
    """
    family, kind, proto, _, sockaddr = addr_info
    address = str(sockaddr[0])
    reason = _text_refusal(address)
    if reason is not None:
        raise UnsafeAddressError(f"refusing to connect to {address}: {reason}")
    return socket.socket(family, kind, proto)
