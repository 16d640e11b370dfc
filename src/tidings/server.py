"""Running the service under uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator

import uvicorn
import uvloop
from fastapi import FastAPI

from tidings.gc_tuning import tune_for_service


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


def serve(app: FastAPI, host: str, port: int) -> None:
    """Serve `app` until SIGINT or SIGTERM, then stop gracefully and return (exit code 0).

    The app's lifespan runs here, around uvicorn (whose own is off): a start that fails (a
    database that cannot be reached, a signing key that cannot be read) raises to the command,
    which says why in one line, where uvicorn logged the whole traceback. The order stays
    uvicorn's: the app starts before the port is bound and stops after the last answer.
    uvicorn's own signal handling is left out: it raised the signal again as its server
    returned, which would now end the process before the app had stopped."""
    tune_for_service()
    config = uvicorn_config(app, host, port)
    config.lifespan = "off"
    server = _Server(config)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, server.handle_exit, signum, None)
        async with app.router.lifespan_context(app):
            await server.serve()

    uvloop.run(run())
