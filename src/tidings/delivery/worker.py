"""The delivery worker: claims due deliveries under a lease, sends them, records every attempt.

The worker never reads the time or sleeps on its own: it is given a clock (ns)
and a transport, so that the retry schedule, leases and timeouts are tested
with a fake clock and real local receivers. `run_once()` claims what is due
and waits for all of it; `run()` keeps a pipeline of up to `concurrency`
sends in flight and wakes as soon as `wake()` says work has arrived.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import structlog

from tidings.delivery.request import slack_request, webhook_request
from tidings.delivery.schedule import Schedule
from tidings.delivery.transport import HttpOutcome, Transport
from tidings.model import Attempt, AttemptResult, Claim, StoredEvent, Subscription
from tidings.storage.base import Storage

log = structlog.get_logger("tidings.worker")
NS = 1_000_000_000
DAY_NS = 86_400 * NS


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSettings:
    """How the worker claims and sends."""

    schedule: Schedule = field(default_factory=Schedule)
    lease_s: float = 60.0
    batch: int = 200
    concurrency: int = 128
    per_sink: int = 16
    poll_interval_s: float = 1.0
    disable_after_failing_s: float = 5 * 86_400.0


async def build_request(
    sub: Subscription,
    event: StoredEvent,
    message_id: str,
    sign: Callable[[str], Awaitable[str]],
    now_ns: int,
) -> tuple[dict[str, str], bytes]:
    """The headers and body that deliver `event` to `sub`."""
    if sub.kind == "slack":
        return slack_request(event, sub)
    token = await sign(sub.group)
    return webhook_request(event, token, message_id, sub.signing_secret, now_ns // NS)


class Worker:
    """Delivers what is due, through `transport`, signing with `sign(group)`."""

    def __init__(
        self,
        storage: Storage,
        transport: Transport,
        sign: Callable[[str], Awaitable[str]],
        settings: WorkerSettings | None = None,
        clock: Callable[[], int] = time.time_ns,
        rng: random.Random | None = None,
        on_attempt: Callable[[Claim, HttpOutcome, str], None] | None = None,
    ):
        self.storage = storage
        self.transport = transport
        self.sign = sign
        self.settings = settings or WorkerSettings()
        self.clock = clock
        self.rng = rng or random.Random()
        self.on_attempt = on_attempt
        self._wake = asyncio.Event()
        self._sinks: dict[str, asyncio.Semaphore] = {}
        self.lost_claims = 0

    def wake(self) -> None:
        """Work has arrived: stop waiting."""
        self._wake.set()

    async def run_once(self) -> int:
        """Claim every due delivery (a batch at a time), send all, record all; return how many."""
        total = 0
        while claims := await self._claim(self.settings.batch):
            await asyncio.gather(*(self.deliver(claim) for claim in claims))
            total += len(claims)
        return total

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set, keeping up to `concurrency` sends in flight."""
        in_flight: set[asyncio.Task[None]] = set()
        limit = self.settings.concurrency
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                claims = (
                    await self._claim(min(self.settings.batch, limit - len(in_flight)))
                    if len(in_flight) < limit
                    else []
                )
                for claim in claims:
                    task = asyncio.ensure_future(self.deliver(claim))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                if claims and len(in_flight) < limit:
                    continue
                self._wake.clear()
                waiters: set[asyncio.Future[Any]] = {
                    stopping,
                    asyncio.ensure_future(self._wake.wait()),
                }
                if in_flight:
                    waiters.add(
                        asyncio.ensure_future(
                            asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                        )
                    )
                _, pending = await asyncio.wait(
                    waiters,
                    timeout=self.settings.poll_interval_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for waiter in pending - {stopping}:
                    waiter.cancel()
        finally:
            stopping.cancel()
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)

    async def _claim(self, limit: int) -> list[Claim]:
        if limit <= 0:
            return []
        lease_ns = int(self.settings.lease_s * NS)
        try:
            return await self.storage.claim_deliveries(self.clock(), lease_ns, limit)
        except Exception:
            log.exception("claiming deliveries failed")
            return []

    def _sink_slot(self, url: str) -> asyncio.Semaphore:
        parts = urlsplit(url)
        key = f"{parts.scheme}://{parts.netloc}"
        slot = self._sinks.get(key)
        if slot is None:
            slot = self._sinks[key] = asyncio.Semaphore(self.settings.per_sink)
        return slot

    async def deliver(self, claim: Claim) -> None:
        """Send one claimed delivery and record the attempt."""
        sub = claim.subscription
        started_ns = self.clock()
        try:
            headers, body = await build_request(
                sub, claim.event, f"dlv_{claim.delivery_id}", self.sign, started_ns
            )
            async with self._sink_slot(sub.sink):
                outcome = await self.transport.post(sub.sink, headers, body)
        except Exception as exc:
            log.exception("preparing a delivery failed", delivery=claim.delivery_id)
            outcome = HttpOutcome(
                status=None,
                latency_ms=0.0,
                error=f"internal error: {exc}",
                response="",
                retry_after_s=None,
            )
        await self._record(claim, outcome, started_ns)

    async def _record(self, claim: Claim, outcome: HttpOutcome, started_ns: int) -> None:
        now = self.clock()
        number = claim.attempts + 1
        code = outcome.status
        disable_reason = None
        next_due = None
        if code is not None and 200 <= code < 300:
            status = "delivered"
        elif code == 410:
            status, disable_reason = "failed", "the sink answered 410 Gone"
        else:
            delay = self.settings.schedule.next_delay(number, code, outcome.retry_after_s, self.rng)
            status = "failed" if delay is None else "pending"
            next_due = None if delay is None else now + int(delay * NS)
        result = AttemptResult(
            delivery_id=claim.delivery_id,
            claim_token=claim.claim_token,
            subscription_id=claim.subscription.id,
            attempt=Attempt(
                number=number,
                started_ns=started_ns,
                status_code=code,
                latency_ms=outcome.latency_ms,
                error=outcome.error,
                response=outcome.response[:4096] if outcome.response else None,
            ),
            status=status,
            next_due_ns=next_due,
            now_ns=now,
            disable_reason=disable_reason,
            disable_if_failing_since_ns=now - int(self.settings.disable_after_failing_s * NS),
        )
        try:
            recorded = await self.storage.record_attempt(result)
        except Exception:
            log.exception(
                "recording an attempt failed; the lease will run out and it is sent again"
            )
            recorded = False
        if not recorded:
            self.lost_claims += 1
            log.warning(
                "a claim was lost before its result was recorded", delivery=claim.delivery_id
            )
        if self.on_attempt is not None:
            self.on_attempt(claim, outcome, status)
