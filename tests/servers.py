"""Real `tidings serve` processes for tests: start on a free port, wait for health, always stop.

Use the `tidings_server` fixture (a factory) by naming it in a test module::

    from tests import servers

    tidings_server = servers.tidings_server

    def test_something(tidings_server: StartServer, tmp_path: Path) -> None:
        server = tidings_server(tmp_path / "tidings.db", env={"TIDINGS_SQLITE_SYNCHRONOUS": "NORMAL"})
        httpx.get(f"{server.url}/healthz")

or the `serving()` context manager where a fixture does not fit. Every server
started either way is killed when the test ends, whatever happens.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

BIN = Path(sys.executable).parent
TIDINGS = str(BIN / "tidings")
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_tidings(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`tidings ARGS` run to its end in a process of its own, with `tidings_env(**env)`; its
    output captured as text."""
    return subprocess.run(
        [TIDINGS, *args],
        env=tidings_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@contextmanager
def taken_port() -> Iterator[int]:
    """A port on 127.0.0.1 that a socket listens on until the block ends."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port: int = sock.getsockname()[1]
        yield port


def database_url(database: Path) -> str:
    """The TIDINGS_DATABASE_URL of an SQLite file."""
    return f"sqlite:///{database.resolve()}"


def tidings_env(database: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment for a `tidings` process: ours without any TIDINGS_*, plus `extra`.

    COLUMNS is wide so that rich tables are not truncated when stdout is a pipe.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("TIDINGS_")}
    env["COLUMNS"] = "250"
    env["NO_COLOR"] = "1"
    if database is not None:
        env["TIDINGS_DATABASE_URL"] = database_url(database)
    env.update(extra)
    return env


class Server:
    """One `tidings serve` process on `database`; `start()` it, then `stop()` or `kill()` it."""

    def __init__(
        self, database: Path, env: Mapping[str, str] | None = None, args: Sequence[str] = ()
    ):
        self.database = database
        self.env = tidings_env(database, **dict(env or {}))
        self.args = list(args)  # more options of `tidings serve`
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log = database.with_name(f"{database.name}.serve.log")

    @property
    def url(self) -> str:
        """The base URL of the running server."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, port: int | None = None) -> Server:
        """Start the server and wait until /healthz answers; retry on another port if taken."""
        attempts = 1 if port is not None else 3
        for attempt in range(attempts):
            self.port = port if port is not None else free_port()
            if self._launch_and_wait():
                return self
            self.kill()
            if attempt == attempts - 1:
                break
        raise RuntimeError(f"tidings serve did not become healthy:\n{self.log_text()[-4000:]}")

    def _launch_and_wait(self) -> bool:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [TIDINGS, "serve", "--port", str(self.port), *self.args],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT
        with httpx.Client(timeout=1.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    return False
                try:
                    if client.get(f"{self.url}/healthz").status_code == 200:
                        return True
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        return False

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.process is not None and self.process.poll() is None

    def stop(self) -> int | None:
        """Stop gracefully (SIGTERM), killing it if it does not exit in time; its exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL the process: no shutdown, no flush, no cleanup."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(STOP_TIMEOUT)

    def restart(self) -> Server:
        """Stop (if running) and start again on the same database and a fresh port."""
        self.stop()
        return self.start()

    def log_text(self) -> str:
        """What the server has logged so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""


StartServer = Callable[..., Server]


@contextmanager
def serving(database: Path, env: Mapping[str, str] | None = None) -> Iterator[Server]:
    """A started server on `database`, stopped (or killed) on exit."""
    server = Server(database, env)
    try:
        yield server.start()
    finally:
        try:
            server.stop()
        finally:
            server.kill()


@pytest.fixture
def tidings_server(tmp_path: Path) -> Iterator[StartServer]:
    """A factory: `tidings_server(database=None, env=None, args=())` starts a server; all
    stop at teardown."""
    started: list[Server] = []

    def start(
        database: Path | None = None,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
    ) -> Server:
        server = Server(database or tmp_path / "tidings.db", env, args)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        try:
            server.stop()
        finally:
            server.kill()


def post_batch(server: Server, token: str, events: Sequence[Mapping[str, object]]) -> None:
    """Ingest `events` as one batch straight through the API (setup, not under test)."""
    response = httpx.post(
        f"{server.url}/v1/events",
        json=list(events),
        headers={
            "authorization": f"Bearer {token}",
            "content-type": "application/cloudevents-batch+json",
        },
        timeout=30,
        trust_env=False,
    )
    assert response.status_code == 201, response.text
