"""The HTTP client of deliveries: one POST to a sink, always an `HttpOutcome`, never an exception.

`AiohttpTransport` keeps one aiohttp session (created lazily inside the
running loop, so that the transport can be built anywhere) with a connection
pool of `limit` connections. Every request:

- is checked first by `ssrf.vet_sink_url` (syntax, scheme, userinfo, IP
  literals, localhost), and then, unless ``allow_private``, at dial time by
  `ssrf.GuardedResolver` (names) and `ssrf.guarded_socket_factory` (every
  address actually dialled, including IP literals, which aiohttp never shows
  to the resolver);
- never follows a redirect: a 3xx is the outcome, its Location is not fetched;
- ignores proxy environment variables (``trust_env=False``) and keeps no
  cookies;
- is cut at ``connect_timeout`` for the TCP connect and ``total_timeout`` for
  all of it, body included;
- reads at most `RESPONSE_LIMIT` bytes of the (gzip-decoded) body, and closes
  a connection whose body was not read to the end rather than drain it.

Headers carry bearer tokens: nothing here logs them or puts them in an error.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import errno
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Protocol

import aiohttp
from aiohttp.abc import AbstractResolver

from tidings import __version__
from tidings.delivery.ssrf import (
    GuardedResolver,
    UnsafeSink,
    guarded_socket_factory,
    vet_sink_url,
)

__all__ = [
    "RESPONSE_LIMIT",
    "AiohttpTransport",
    "HttpOutcome",
    "Transport",
    "parse_retry_after",
]

RESPONSE_LIMIT = 4096
_ERROR_LIMIT = 300


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpOutcome:
    """What came of one POST to a sink."""

    status: int | None  # None when no response was received
    latency_ms: float
    error: str | None  # e.g. "timed out after 15 s", "connection refused", "unsafe sink: ..."
    response: str  # the first 4 KB of the response body (decoded, errors replaced)
    retry_after_s: float | None  # parsed Retry-After (delta-seconds or HTTP-date), if any


class Transport(Protocol):
    """Sends deliveries."""

    async def post(self, url: str, headers: Mapping[str, str], body: bytes) -> HttpOutcome:
        """POST `body` to `url`; never raises."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), or None."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # HTTP-dates are always GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


async def _read_prefix(content: aiohttp.StreamReader, limit: int) -> bytes:
    """At most `limit` bytes from the start of a body, reading no more than that."""
    buffer = bytearray()
    while len(buffer) < limit:
        chunk = await content.read(limit - len(buffer))
        if not chunk:
            break
        buffer += chunk
    return bytes(buffer)


def _decode(raw: bytes, charset: str | None) -> str:
    """The body as text: its declared charset if Python knows it, else UTF-8."""
    encoding = "utf-8"
    if charset:
        with contextlib.suppress(LookupError):
            encoding = codecs.lookup(charset).name
    return raw.decode(encoding, errors="replace")


def _unsafe_in(exc: BaseException) -> UnsafeSink | None:
    """The SSRF refusal behind `exc`, if that is what it is."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, UnsafeSink):
            return current
        if isinstance(current, aiohttp.ClientConnectorError) and isinstance(
            current.os_error, UnsafeSink
        ):
            return current.os_error
        current = current.__cause__ or current.__context__
    return None


def _short(text: str) -> str:
    """`text` on one line, cut to a length fit for an attempt record."""
    text = " ".join(text.split())
    return text if len(text) <= _ERROR_LIMIT else text[: _ERROR_LIMIT - 1] + "…"


class AiohttpTransport:
    """The delivery client, on aiohttp; see the module docstring for what it guarantees."""

    def __init__(
        self,
        *,
        allow_private: bool,
        connect_timeout: float = 5.0,
        total_timeout: float = 15.0,
        limit: int = 256,
        user_agent: str | None = None,
        clock: Callable[[], float] = time.perf_counter,
        resolver: AbstractResolver | None = None,
    ) -> None:
        """`resolver` replaces the system resolver (wrapped by the guard unless `allow_private`).

        `user_agent` defaults to ``tidings/<version>``; a User-Agent in a
        request's headers wins over it. The transport closes `resolver`.
        """
        self._allow_private = allow_private
        self._connect_timeout = connect_timeout
        self._total_timeout = total_timeout
        self._limit = limit
        self._user_agent = user_agent or f"tidings/{__version__}"
        self._clock = clock
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def _session_now(self) -> aiohttp.ClientSession:
        """The session, created on first use inside the running loop."""
        if self._session is None:
            if not self._allow_private:
                self._resolver = GuardedResolver(self._resolver)
            connector = aiohttp.TCPConnector(
                limit=self._limit,
                resolver=self._resolver,
                socket_factory=None if self._allow_private else guarded_socket_factory,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(
                    total=self._total_timeout, sock_connect=self._connect_timeout
                ),
                headers={"User-Agent": self._user_agent},
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
                auto_decompress=True,
                raise_for_status=False,
            )
        return self._session

    def _ms_since(self, started: float) -> float:
        return (self._clock() - started) * 1000.0

    def _describe(self, exc: BaseException, elapsed_ms: float) -> str:
        """A short, header-free account of why a request failed."""
        unsafe = _unsafe_in(exc)
        if unsafe is not None:
            return _short(f"unsafe sink: {unsafe}")
        if isinstance(exc, aiohttp.ConnectionTimeoutError) and (
            elapsed_ms < self._total_timeout * 1000.0 * 0.99
        ):
            return f"connection timed out after {self._connect_timeout:g} s"
        if isinstance(exc, asyncio.TimeoutError):
            return f"timed out after {self._total_timeout:g} s"
        if isinstance(exc, aiohttp.ClientConnectorDNSError):
            return _short(f"could not resolve {exc.host}: {exc.strerror}")
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            return _short(f"TLS certificate error: {exc.certificate_error}")
        if isinstance(exc, aiohttp.ClientConnectorSSLError):
            return _short(f"TLS error: {exc.os_error}")
        if isinstance(exc, aiohttp.ClientConnectorError):
            if exc.errno == errno.ECONNREFUSED:
                return "connection refused"
            return _short(f"could not connect: {exc.strerror or exc.os_error}")
        if isinstance(exc, aiohttp.InvalidURL):
            return _short(f"invalid sink URL: {exc}")
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            return "server disconnected before a complete response"
        if isinstance(exc, aiohttp.ClientPayloadError):
            return _short(f"malformed response body: {exc}")
        if isinstance(exc, aiohttp.ClientResponseError):
            return _short(f"malformed response: {exc.message}")
        if isinstance(exc, aiohttp.ClientOSError) and exc.errno == errno.ECONNRESET:
            return "connection reset by the sink"
        return _short(f"{type(exc).__name__}: {exc}")

    def _failure(self, started: float, exc: BaseException | str) -> HttpOutcome:
        """The outcome of a request that got no response."""
        elapsed = self._ms_since(started)
        error = exc if isinstance(exc, str) else self._describe(exc, elapsed)
        return HttpOutcome(
            status=None, latency_ms=elapsed, error=error, response="", retry_after_s=None
        )

    async def post(self, url: str, headers: Mapping[str, str], body: bytes) -> HttpOutcome:
        """POST `body` with `headers` to `url`; every failure is an outcome, never an exception."""
        started = self._clock()
        if self._closed:
            return self._failure(started, "transport is closed")
        try:
            target = vet_sink_url(url, self._allow_private)
        except UnsafeSink as exc:
            return self._failure(started, _short(f"unsafe sink: {exc}"))
        try:
            session = self._session_now()
            async with session.post(
                target, headers=headers, data=body, allow_redirects=False
            ) as response:
                status = response.status
                retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
                error: str | None = None
                try:
                    raw = await _read_prefix(response.content, RESPONSE_LIMIT)
                except Exception as exc:
                    raw = b""
                    error = f"reading the response: {self._describe(exc, self._ms_since(started))}"
                text = _decode(raw, response.charset)
        except Exception as exc:
            return self._failure(started, exc)
        return HttpOutcome(
            status=status,
            latency_ms=self._ms_since(started),
            error=error,
            response=text,
            retry_after_s=retry_after,
        )

    async def close(self) -> None:
        """Close the session, its connections and the resolver; later posts fail."""
        if self._closed:
            return
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        if self._resolver is not None:
            await self._resolver.close()
