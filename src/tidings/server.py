"""Running the service under uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import signal
import socket
from collections.abc import Callable, Iterator
from typing import Any

import structlog
import uvicorn
import uvloop
from fastapi import FastAPI

from tidings.gc_tuning import tune_for_service

log = structlog.get_logger("tidings.server")


def uvicorn_config(app: FastAPI, host: str, port: int) -> uvicorn.Config:
    """The server configuration tidings runs with: uvloop, httptools, no access log."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        server_header=False,
        timeout_graceful_shutdown=10,
    )


class _Server(uvicorn.Server):
    """uvicorn's server, leaving the signals to `serve` (below)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def listening_socket(host: str, port: int, shared: bool = False) -> socket.socket:
    """A TCP socket bound to `host:port` and listening (OSError if the port is taken). With
    `shared`, each of several processes binds its own (SO_REUSEPORT): the kernel spreads new
    connections over them evenly, where one socket they all accepted from would hand a burst of
    connections (a client's pool, opened at once) to whichever process woke first."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except BaseException:
        sock.close()
        raise
    return sock


def supervise(target: Callable[..., None], args: tuple[Any, ...], processes: int) -> int:
    """Run `target(*args)` in `processes` new processes until SIGINT or SIGTERM, which they
    are sent too, or until one ends of itself (a failed start, a crash), which stops the others.

    The exit code: 0 when all stopped on a signal (those still starting end by it), else the
    exit code of the first to end (1 if a signal ended it), so that a supervisor above
    restarts the whole service. Each that ends of itself is logged."""
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=target, args=args, name=f"tidings-api-{number}")
        for number in range(processes)
    ]
    signalled: list[int] = []

    def terminate() -> None:
        for child in children:
            if child.pid is not None and child.exitcode is None:
                child.terminate()  # SIGTERM: a graceful stop, even when told twice

    def stop(signum: int, frame: object) -> None:
        signalled.append(signum)
        terminate()

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        for child in children:
            child.start()
        if signalled:  # told to stop while they were starting
            stop(signalled[0], None)
        ended = multiprocessing.connection.wait([child.sentinel for child in children])
        first = next(child for child in children if child.sentinel in ended)
        if not signalled:
            first.join()
            log.error(
                "a process of the service ended; stopping the others",
                process=first.name,
                exit_code=first.exitcode,
            )
            terminate()
        for child in children:
            child.join()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if signalled:
        stopped = (0, -signal.SIGTERM)
        return 0 if all(child.exitcode in stopped for child in children) else 1
    code = first.exitcode
    return code if code is not None and code > 0 else 1


def serve(app: FastAPI, host: str, port: int, sock: socket.socket | None = None) -> None:
    """Serve `app` until SIGINT or SIGTERM, then stop gracefully and return (exit code 0).

    The app's lifespan runs here, around uvicorn (whose own is off): a start that fails (a
    database that cannot be reached, a signing key that cannot be read) raises to the command,
    which says why in one line, where uvicorn logged the whole traceback. The order stays
    uvicorn's: the app starts before the port is bound and stops after the last answer.
    uvicorn's own signal handling is left out: it raised the signal again as its server
    returned, which would now end the process before the app had stopped. With `sock` (see
    `listening_socket`) it serves there instead of binding `host:port` itself; in a process
    `supervise` started, it also stops gracefully when that supervisor is gone (killed, say),
    rather than live on holding the port."""
    tune_for_service()
    config = uvicorn_config(app, host, port)
    config.lifespan = "off"
    server = _Server(config)
    parent = multiprocessing.parent_process()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, server.handle_exit, signum, None)
        if parent is not None:  # its sentinel turns readable when it ends
            loop.add_reader(parent.sentinel, server.handle_exit, signal.SIGTERM, None)
        async with app.router.lifespan_context(app):
            await server.serve(sockets=None if sock is None else [sock])

    uvloop.run(run())
