"""Assembling the delivery side of a process: issuer, transport and worker, from the settings."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass
class Delivery:
    """A running delivery side: the worker task and what it needs."""

    issuer: Issuer
    transport: AiohttpTransport
    worker: Worker | None
    _stop: asyncio.Event
    _task: asyncio.Task[None] | None

    @classmethod
    async def start(
        cls,
        settings: Settings,
        storage: Storage,
        issuer_url: str,
        metrics: Metrics,
        clock: Callable[[], int] = time.time_ns,
        run_worker: bool = True,
    ) -> Delivery:
        """Build the issuer (making its first key if need be), the transport and, if asked, the worker."""
        issuer = issuer_for(settings, storage, issuer_url, clock)
        await issuer.ensure_key()
        transport = transport_for(settings)
        stop = asyncio.Event()
        worker = task = None
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
            task = asyncio.create_task(worker.run(stop), name="tidings-worker")
        return cls(issuer, transport, worker, stop, task)

    async def stop(self) -> None:
        """Let in-flight sends finish, then close the transport."""
        self._stop.set()
        if self._task is not None:
            await self._task
        await self.transport.close()
