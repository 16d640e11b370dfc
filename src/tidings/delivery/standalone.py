"""`tidings worker`: the delivery worker in a process of its own, until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import signal

import structlog

from tidings.config import Settings
from tidings.delivery.probes import serve_probes
from tidings.issuer import stored_issuer_url
from tidings.metrics import Metrics
from tidings.runtime import Delivery
from tidings.storage import storage_for

log = structlog.get_logger("tidings.worker")


async def run_standalone_worker(
    settings: Settings, probes_at: tuple[str, int] | None = None
) -> int:
    """Deliver from the configured database until told to stop; in-flight sends finish first.
    With `probes_at` (host, port), answer /healthz, /readyz and /metrics there meanwhile.

    The exit code: 0 when stopped, 1 when a task of the worker ended of itself (a defect,
    logged), so that the supervisor starts a new process rather than one that no longer
    delivers lives on."""
    storage = storage_for(settings)
    await storage.open()
    probes = None
    try:
        issuer_url = await stored_issuer_url(storage, settings.issuer)
        metrics = Metrics()
        if probes_at is not None:
            try:
                probes = await serve_probes(storage, metrics, *probes_at)
            except OSError as exc:
                host, port = probes_at
                raise ValueError(
                    f"--metrics-host {host} --metrics-port {port}: {exc.strerror or exc}"
                ) from exc
        delivery = await Delivery.start(settings, storage, issuer_url, metrics)
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopped.set)
        log.info("worker started", issuer=issuer_url, probes=probes_at)
        stopping = asyncio.ensure_future(stopped.wait())
        ending = asyncio.ensure_future(delivery.ended())
        await asyncio.wait((stopping, ending), return_when=asyncio.FIRST_COMPLETED)
        code = 0
        if ending.done():
            task = ending.result()
            failure = None if task.cancelled() else task.exception()
            log.error(
                "a task of the worker ended of itself; stopping",
                task=task.get_name(),
                exc_info=failure,
            )
            code = 1
        else:
            ending.cancel()
        stopping.cancel()
        log.info("worker stopping")
        if probes is not None:  # first: the drain below may wait for the database
            await probes.cleanup()
            probes = None
        await delivery.stop()
        return code
    finally:
        if probes is not None:
            await probes.cleanup()
        await storage.close()
