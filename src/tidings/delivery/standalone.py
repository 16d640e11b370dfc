"""`tidings worker`: the delivery worker in a process of its own, until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import signal

import structlog

from tidings.config import Settings
from tidings.issuer import stored_issuer_url
from tidings.metrics import Metrics
from tidings.runtime import Delivery
from tidings.storage import storage_for

log = structlog.get_logger("tidings.worker")


async def run_standalone_worker(settings: Settings) -> None:
    """Deliver from the configured database until told to stop; in-flight sends finish first."""
    storage = storage_for(settings)
    await storage.open()
    try:
        issuer_url = await stored_issuer_url(storage, settings.issuer)
        delivery = await Delivery.start(settings, storage, issuer_url, Metrics())
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopped.set)
        log.info("worker started", issuer=issuer_url)
        await stopped.wait()
        log.info("worker stopping")
        await delivery.stop()
    finally:
        await storage.close()
