"""`tidings worker`: the delivery worker in a process of its own, until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable

import structlog
from aiohttp import web

from tidings.config import Settings
from tidings.delivery.probes import serve_probes
from tidings.issuer import stored_issuer_url
from tidings.metrics import Metrics
from tidings.runtime import Delivery
from tidings.storage import storage_for
from tidings.storage.base import Storage

log = structlog.get_logger("tidings.worker")


async def run_standalone_worker(
    settings: Settings, probes_at: tuple[str, int] | None = None
) -> int:
    """Deliver from the configured database until told to stop; in-flight sends finish first.
    With `probes_at` (host, port), answer /healthz, /readyz and /metrics there meanwhile.

    The exit code: 0 when stopped, 1 when a task of the worker ended of itself (a defect,
    logged), so that the supervisor starts a new process rather than one that no longer
    delivers lives on. On the way out the deliveries drain, then the probes close (waiting at
    most a second for one being answered), then the storage."""
    async with contextlib.AsyncExitStack() as stack:
        storage = storage_for(settings)
        await storage.open()
        stack.push_async_callback(storage.close)
        issuer_url = await stored_issuer_url(storage, settings.issuer)
        metrics = Metrics()
        started = asyncio.Event()
        if probes_at is not None:  # before anything is made: a port in use stops it all
            runner = await _probes(storage, metrics, probes_at, started.is_set)
            stack.push_async_callback(runner.cleanup)
        delivery = await Delivery.start(settings, storage, issuer_url, metrics)
        started.set()
        stack.push_async_callback(delivery.stop)
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopped.set)
        log.info("worker started", issuer=issuer_url, probes=probes_at)
        stopping = asyncio.ensure_future(stopped.wait())
        ending = asyncio.ensure_future(delivery.ended())
        await asyncio.wait((stopping, ending), return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not ending.done():
            ending.cancel()
            log.info("worker stopping")
            return 0
        task = ending.result()
        log.error(
            "a task of the worker ended of itself; stopping",
            task=task.get_name(),
            exc_info=None if task.cancelled() else task.exception(),
        )
        return 1


async def _probes(
    storage: Storage, metrics: Metrics, at: tuple[str, int], started: Callable[[], bool]
) -> web.AppRunner:
    """The probes served at `at`, or ValueError naming the options when it cannot be bound."""
    host, port = at
    try:
        return await serve_probes(storage, metrics, host, port, started)
    except OSError as exc:
        raise ValueError(
            f"--metrics-host {host} --metrics-port {port}: {exc.strerror or exc}"
        ) from exc
