"""`tidings worker --metrics-port`: the worker's liveness, readiness and Prometheus metrics over
HTTP, as an API process answers them (/healthz, /readyz, /metrics), so that a scraper sees the
delivery counters and latencies where deliveries are made."""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from tidings.errors import NOT_READY
from tidings.metrics import PROBE_WAIT_S, Metrics
from tidings.storage.base import Storage

STARTING = "the worker is starting"


async def serve_probes(
    storage: Storage, metrics: Metrics, host: str, port: int, started: Callable[[], bool]
) -> web.AppRunner:
    """Start answering the probes on `host:port`; the caller cleans the runner up. /readyz
    answers 503 until `started()` (the probes are bound before the worker makes its key and
    starts delivering), then as the database answers."""

    def not_ready(message: str) -> web.Response:
        return web.json_response(
            {"error": {"code": "not_ready", "message": message, "details": []}}, status=503
        )

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        if not started():
            return not_ready(STARTING)
        if await storage.ready_within(PROBE_WAIT_S):
            return web.json_response({"status": "ready"})
        return not_ready(NOT_READY)

    async def metrics_page(_: web.Request) -> web.Response:
        body = await metrics.exposition(storage, time.time_ns())
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    # A stopping worker waits at most a second for a probe still being answered.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
