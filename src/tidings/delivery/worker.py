"""The delivery worker: claims due deliveries under a lease, sends them, records every attempt.

The worker never reads the time or sleeps on its own: it is given a clock (ns)
and a transport, so that the retry schedule, leases and timeouts are tested
with a fake clock and real local receivers. `run_once()` claims what is due
and waits for all of it; `run()` keeps a pipeline of up to `concurrency`
deliveries in hand and wakes as soon as `wake()` says work has arrived. Results
(and deliveries handed back unsent) are written in batches: when a batch is
full, a few ms after its first item, or at once when no send is in flight.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

import structlog

from tidings.delivery.batcher import Batcher
from tidings.delivery.request import slack_request, webhook_request
from tidings.delivery.schedule import Schedule
from tidings.delivery.transport import HttpOutcome, Transport
from tidings.model import Attempt, AttemptResult, Claim, StoredEvent, Subscription
from tidings.storage.base import Storage

log = structlog.get_logger("tidings.worker")
T = TypeVar("T")
NS = 1_000_000_000
_BUSY_NS = NS  # how long a delivery to a busy sink waits before it is claimed again
DAY_NS = 86_400 * NS
# How long a worker told to stop still waits for a claim under way: one that waits for a lock
# (SQLite's, held by another process a moment) is taken and delivered; one that waits for a
# connection during an outage is given up.
CLAIM_GRACE_S = 2.0
# Requests built for unsigned webhooks, kept so that the deliveries of one event to
# several subscriptions (claimed together) build its headers once.
_REQUEST_CACHE = 512


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
    record_batch: int = 100
    record_delay_s: float = 0.005


@dataclass(slots=True)
class _Sink:
    """One host: its requests in flight, and how many deliveries wait for one to end."""

    slots: asyncio.Semaphore
    waiting: int = 0


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
        self._sinks: dict[str, _Sink] = {}
        self._requests: dict[tuple[int, str, str], tuple[dict[str, str], bytes]] = {}
        self._unsent = 0  # deliveries started and not yet sent (or handed back)
        batch, delay = self.settings.record_batch, self.settings.record_delay_s
        self._results = Batcher(self._write_results, batch, delay)
        self._releases = Batcher(self._write_releases, batch, delay)
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
        """Deliver until `stop` is set, keeping up to `concurrency` deliveries in hand.

        A delivery holds its slot while it waits for its sink and while it is sent.
        Recording its attempt (waiting for the commit) goes on beside the next sends,
        for at most `concurrency` more deliveries: a slow commit does not idle the sends.
        """
        limit = self.settings.concurrency
        sending: set[object] = set()  # a token per delivery waiting for its sink or being sent
        tasks: set[asyncio.Task[None]] = set()  # every delivery until its attempt is recorded
        stopping = asyncio.ensure_future(stop.wait())
        # Set by wake() and by every send that finishes (a slot is free): either way, claim.
        ready = self._wake

        def sent(token: object) -> None:
            sending.discard(token)
            ready.set()

        def finished(token: object, task: asyncio.Task[None]) -> None:
            sending.discard(token)
            tasks.discard(task)
            ready.set()

        def room() -> int:
            return min(limit - len(sending), 2 * limit - len(tasks))

        try:
            while not stop.is_set():
                ready.clear()
                free = room()
                claims = await self._claim_unless(stopping, free) if free > 0 else []
                if claims is None:
                    break
                for claim in claims:
                    token = object()
                    sending.add(token)
                    task = asyncio.ensure_future(
                        self.deliver(claim, partial(sent, token), release_if_busy=True)
                    )
                    tasks.add(task)
                    task.add_done_callback(partial(finished, token))
                if claims and room() > 0:
                    continue
                if ready.is_set():  # work arrived or a send finished while claiming
                    continue
                waiter = asyncio.ensure_future(ready.wait())
                await asyncio.wait(
                    (stopping, waiter),
                    timeout=self.settings.poll_interval_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                waiter.cancel()
        finally:
            stopping.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _claim_unless(self, stopping: asyncio.Future[Any], free: int) -> list[Claim] | None:
        """A batch of claims for `free` slots (delivered though the worker stops), or None if
        told to stop and the database has not answered within CLAIM_GRACE_S more: during an
        outage a claim waits for a connection as long as the pool does (30 s). A claim given
        up is no loss: one the database made meanwhile runs out with its lease and falls due
        again."""
        claiming = asyncio.ensure_future(self._claim(min(self.settings.batch, free)))
        await asyncio.wait((claiming, stopping), return_when=asyncio.FIRST_COMPLETED)
        if not claiming.done():
            await asyncio.wait((claiming,), timeout=CLAIM_GRACE_S)
        if claiming.done():
            return claiming.result()
        claiming.cancel()
        return None

    async def _claim(self, limit: int) -> list[Claim]:
        if limit <= 0:
            return []
        lease_ns = int(self.settings.lease_s * NS)
        now = self.clock()
        try:
            claims = await self.storage.claim_deliveries(now, lease_ns, limit)
        except Exception:
            log.exception("claiming deliveries failed")
            return []
        if claims:
            # At debug level every claim is logged, so that operators (and tests) can check that
            # no delivery was ever held by two workers at once.
            log.debug(
                "claimed",
                deliveries=[claim.delivery_id for claim in claims],
                claim_token=claims[0].claim_token,
                claimed_ns=now,
                lease_until_ns=now + lease_ns,
            )
        return claims

    def _sink(self, url: str) -> _Sink:
        parts = urlsplit(url)
        key = f"{parts.scheme}://{parts.netloc}"
        sink = self._sinks.get(key)
        if sink is None:
            sink = self._sinks[key] = _Sink(asyncio.Semaphore(self.settings.per_sink))
        return sink

    async def _take_slot(self, sink: _Sink, bounded: bool) -> bool:
        """Take one of the sink's slots, waiting for it if need be. With `bounded`, a delivery
        does not wait behind `per_sink` others, and gives the slot up if it waited longer than
        a quarter of the lease: False then, and no slot held."""
        if not bounded or not (sink.waiting or sink.slots.locked()):
            await sink.slots.acquire()
            return True
        if sink.waiting >= self.settings.per_sink:
            return False
        sink.waiting += 1
        began = self.clock()
        try:
            await sink.slots.acquire()
        finally:
            sink.waiting -= 1
        if self.clock() - began > self.settings.lease_s * NS / 4:
            sink.slots.release()
            return False
        return True

    async def _request(self, claim: Claim, now_ns: int) -> tuple[dict[str, str], bytes]:
        """`build_request`, built once per event and token for unsigned webhooks.

        Without a signing secret a webhook request depends only on the event and
        the bearer token (the message id and the time only go into signatures), so
        the deliveries of one event to the subscriptions of one group share it.
        """
        sub, event = claim.subscription, claim.event
        if sub.kind != "webhook" or sub.signing_secret is not None:
            return await build_request(sub, event, f"dlv_{claim.delivery_id}", self.sign, now_ns)
        token = await self.sign(sub.group)
        key = (event.position, event.id, token)
        built = self._requests.get(key)
        if built is None:
            built = webhook_request(event, token, f"dlv_{claim.delivery_id}", None, now_ns // NS)
            if len(self._requests) >= _REQUEST_CACHE:
                del self._requests[next(iter(self._requests))]
            self._requests[key] = built
        headers, body = built
        return dict(headers), body

    async def deliver(
        self, claim: Claim, on_sent: Callable[[], None] | None = None, release_if_busy: bool = False
    ) -> None:
        """Send one claimed delivery and record the attempt; `on_sent()` once it is sent.

        With `release_if_busy`, a delivery whose sink already has `per_sink` requests in flight
        and `per_sink` deliveries waiting, or that waited a quarter of its lease, is handed back
        unsent (due again shortly): holding it longer would keep a slot of the worker and let
        its lease run out behind a slow sink, starving the others. (A delivery waits for at
        most `per_sink` requests to end: no longer than the transport's timeout.)
        """
        sink = self._sink(claim.subscription.sink)
        self._unsent += 1
        outcome, started_ns = None, 0
        try:
            if await self._take_slot(sink, bounded=release_if_busy):
                try:
                    started_ns = self.clock()
                    outcome = await self._send(claim, started_ns)
                finally:
                    sink.slots.release()
        finally:
            self._unsent -= 1
            if on_sent is not None:
                on_sent()
        if outcome is None:
            await self._queued(
                self._releases, (claim.delivery_id, claim.claim_token, self.clock() + _BUSY_NS)
            )
        else:
            await self._record(claim, outcome, started_ns)

    async def _send(self, claim: Claim, started_ns: int) -> HttpOutcome:
        try:
            headers, body = await self._request(claim, started_ns)
            return await self.transport.post(claim.subscription.sink, headers, body)
        except Exception as exc:
            log.exception("preparing a delivery failed", delivery=claim.delivery_id)
            return HttpOutcome(
                status=None,
                latency_ms=0.0,
                error=f"internal error: {exc}",
                response="",
                retry_after_s=None,
            )

    async def _queued(self, batcher: Batcher[T, bool], item: T) -> bool:
        """Queue `item` for its batch write; written at once when no send is in flight (no
        more results are coming soon). Whether it was written."""
        written = batcher.add(item)
        if self._unsent == 0:
            self._results.flush()
            self._releases.flush()
        return await written

    async def _write_results(self, results: list[AttemptResult]) -> list[bool]:
        try:
            return await self.storage.record_attempts(results)
        except Exception:
            log.exception(
                "recording attempts failed; their leases will run out and they are sent again",
                count=len(results),
            )
            return [False] * len(results)

    async def _write_releases(self, claims: list[tuple[int, str, int]]) -> list[bool]:
        try:
            return await self.storage.release_claims(claims)
        except Exception:
            log.exception(
                "handing back deliveries failed; their leases will run out", count=len(claims)
            )
            return [False] * len(claims)

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
        if not await self._queued(self._results, result):
            self.lost_claims += 1
            log.warning(
                "a claim was lost before its result was recorded", delivery=claim.delivery_id
            )
        if self.on_attempt is not None:
            self.on_attempt(claim, outcome, status)
