"""Assembling the delivery side of a process: issuer, transport and worker, from the settings."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from tidings import __version__
from tidings.config import Settings
from tidings.delivery.transport import AiohttpTransport, HttpOutcome
from tidings.delivery.worker import Worker, WorkerSettings
from tidings.issuer import Issuer
from tidings.metrics import Metrics
from tidings.model import Claim
from tidings.storage.base import Storage


def worker_settings(settings: Settings) -> WorkerSettings:
    """The worker's part of the settings."""
    return WorkerSettings(
        schedule=settings.retry_schedule,
        lease_s=settings.delivery_lease_s,
        concurrency=settings.delivery_concurrency,
        per_sink=settings.delivery_per_sink,
        poll_interval_s=settings.delivery_poll_s,
    )


def transport_for(settings: Settings) -> AiohttpTransport:
    """The HTTP transport deliveries are sent with."""
    return AiohttpTransport(
        allow_private=settings.allow_private_sinks,
        connect_timeout=settings.delivery_connect_timeout_s,
        total_timeout=settings.delivery_timeout_s,
        user_agent=f"tidings/{__version__}",
    )


def issuer_for(settings: Settings, storage: Storage, url: str, clock: Callable[[], int]) -> Issuer:
    """The token issuer at `url`."""
    return Issuer(storage, url, clock, settings.key_encryption_key)


NS = 1_000_000_000
WAKEUPS = "tidings-wakeups"
log = structlog.get_logger("tidings.runtime")


async def run_retention(storage: Storage, settings: Settings, now_ns: int) -> int:
    """One round of housekeeping: the coming days' partitions, then expiring old events."""
    await storage.maintain(now_ns)
    expired = await storage.expire(now_ns - int(settings.retention_days * 86_400 * NS))
    if expired:
        log.info("expired old events", count=expired, retention_days=settings.retention_days)
    return expired


async def _housekeeping(
    storage: Storage, settings: Settings, clock: Callable[[], int], stop: asyncio.Event
) -> None:
    while not stop.is_set():
        try:
            await run_retention(storage, settings, clock())
        except Exception:
            log.exception("housekeeping failed; it runs again later")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=settings.maintenance_interval_s)


@dataclass
class Delivery:
    """A running process's background side: the worker, its wake-ups, and housekeeping."""

    issuer: Issuer
    transport: AiohttpTransport
    worker: Worker | None
    _stop: asyncio.Event
    _tasks: list[asyncio.Task[None]]

    @classmethod
    async def start(
        cls,
        settings: Settings,
        storage: Storage,
        issuer_url: str,
        metrics: Metrics,
        clock: Callable[[], int] = time.time_ns,
        run_worker: bool = True,
        housekeeping: bool = False,
    ) -> Delivery:
        """Build the issuer (making its first key if need be), the transport and, if asked,
        the worker (woken by the storage's notifications) and the housekeeping loop."""
        issuer = issuer_for(settings, storage, issuer_url, clock)
        await issuer.ensure_key()
        transport = transport_for(settings)
        stop = asyncio.Event()
        worker = None
        tasks = []
        if run_worker:

            def observe(claim: Claim, outcome: HttpOutcome, status: str) -> None:
                metrics.attempted(outcome.status, outcome.latency_ms, claim.attempts + 1, status)

            worker = Worker(
                storage,
                transport,
                issuer.token_for,
                worker_settings(settings),
                clock,
                on_attempt=observe,
            )
            tasks.append(asyncio.create_task(worker.run(stop), name="tidings-worker"))
            tasks.append(
                asyncio.create_task(storage.watch(worker.wake, stop), name="tidings-wakeups")
            )
        if housekeeping:
            tasks.append(
                asyncio.create_task(
                    _housekeeping(storage, settings, clock, stop), name="tidings-retention"
                )
            )
        return cls(issuer, transport, worker, stop, tasks)

    async def ended(self) -> asyncio.Task[None]:
        """Wait until a background task ends of itself (each runs until `stop`, and catches
        the failures it expects: one ending is a defect); the task that ended."""
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        return done.pop()

    async def stop(self) -> None:
        """Let in-flight sends finish, then close the transport."""
        self._stop.set()
        for task in self._tasks:
            if task.done():  # ended of itself: its failure was the caller's to report (`ended`)
                continue
            if task.get_name() == WAKEUPS:
                task.cancel()  # it only listens; nothing is lost by stopping it at once
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.transport.close()
