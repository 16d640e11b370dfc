"""Running the service under uvicorn."""

from __future__ import annotations

import uvicorn
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


def serve(app: FastAPI, host: str, port: int) -> None:
    """Serve `app` until interrupted."""
    tune_for_service()
    uvicorn.Server(uvicorn_config(app, host, port)).run()
