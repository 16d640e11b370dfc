"""Real HTTP receivers on 127.0.0.1 for delivery tests: each records every request it gets.

A `Receiver` runs an aiohttp server in a thread of its own, so it answers
whatever else the test is doing. `answer` decides each response; by default 200.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def header(self, name: str) -> str | None:
        """A header by case-insensitive name."""
        lowered = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == lowered), None)


Answer = Callable[[Received], Awaitable[web.StreamResponse] | web.StreamResponse]


def ok(_: Received) -> web.StreamResponse:
    """Answer 200."""
    return web.Response(status=200, text="ok")


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 recording requests."""

    answer: Answer = ok
    requests: list[Received] = field(default_factory=list)
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        """The receiver's base URL."""
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        received = Received(
            request.method,
            request.path_qs,
            dict(request.headers),
            await request.read(),
            time.monotonic(),
        )
        with self._lock:
            self.requests.append(received)
        result = self.answer(received)
        if not isinstance(result, web.StreamResponse):
            result = await result
        return result

    def start(self) -> Receiver:
        """Start serving; returns once the port is bound."""
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application(client_max_size=64 << 20)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            server: Any = site._server
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def received(self) -> list[Received]:
        """A snapshot of the requests so far."""
        with self._lock:
            return list(self.requests)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Wait until at least `count` requests arrived; fail the test otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.received()
            if len(got) >= count:
                return got
            time.sleep(0.01)
        pytest.fail(
            f"the receiver got {len(self.received())} requests, expected {count} within {timeout} s"
        )


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    """A factory of started receivers, all stopped at the end of the test."""
    started: list[Receiver] = []

    def make(answer: Answer = ok) -> Receiver:
        receiver = Receiver(answer).start()
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        receiver.stop()
