"""The delivery worker driven by a fake clock: real SQLite, real receivers, the real transport."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests import databases
from tests.conftest import event
from tests.receivers import Received, Receiver
from tests.reports import result
from tidings import groups, wire
from tidings.config import Settings
from tidings.delivery.schedule import Schedule
from tidings.delivery.transport import AiohttpTransport
from tidings.delivery.worker import Worker, WorkerSettings
from tidings.model import Delivery, Subscription
from tidings.storage.sqlite import SQLiteStorage

NS = 1_000_000_000
DAY = 86_400
T0 = 1_750_000_000 * NS
EXACT = Schedule(jitter=0)

Receivers = Callable[..., Receiver]


class FakeClock:
    """A clock in ns that moves only when told to."""

    def __init__(self, ns: int = T0) -> None:
        self.ns = ns

    def __call__(self) -> int:
        return self.ns

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.ns += int(seconds * NS)


async def sign(group: str) -> str:
    """A stand-in for the issuer: every delivery carries the same token."""
    return f"token-for-{group}"


def answer(status: int, text: str = "", **headers: str) -> Callable[[Received], web.Response]:
    """A receiver answer: always `status` with `text` and `headers`."""
    return lambda _: web.Response(status=status, text=text, headers=headers)


@dataclass
class Gate:
    """Holds requests until released, counting how many are in flight (across receivers)."""

    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    current: int = 0
    peak: int = 0

    async def __call__(self, _: Received) -> web.StreamResponse:
        with self.lock:
            self.current += 1
            self.peak = max(self.peak, self.current)
        try:
            while not self.release.is_set():
                await asyncio.sleep(0.005)
        finally:
            with self.lock:
                self.current -= 1
        return web.Response(status=200, text="ok")


@dataclass
class Rig:
    """A storage, a transport and a fake clock, and helpers to drive a worker with them."""

    storage: SQLiteStorage
    transport: AiohttpTransport
    clock: FakeClock

    def worker(self, schedule: Schedule = EXACT, **settings: Any) -> Worker:
        """A worker on the rig's storage, transport and clock."""
        return Worker(
            self.storage,
            self.transport,
            sign,
            WorkerSettings(schedule=schedule, **settings),
            self.clock,
            random.Random(1),
        )

    async def subscribe(self, sink: str, group: str | None = None) -> Subscription:
        """An active webhook subscription of `group` (a new tenant by default) to `sink`."""
        parent = group or groups.new_root()
        now = self.clock()
        sub = Subscription(
            id=groups.new_child(parent),
            group=parent,
            kind="webhook",
            sink=sink,
            types=("dev.example.*",),
            roles=("owner",),
            created_ns=now,
            updated_ns=now,
        )
        await self.storage.create_subscription(sub, [], now)
        return sub

    async def publish(self, group: str, event_id: str | None = None) -> None:
        """Ingest one event in `group` at the fake clock's time."""
        body = event(group) if event_id is None else event(group, id=event_id)
        [ingested] = await self.storage.ingest([wire.parse_event(body)], self.clock())
        assert ingested.created

    async def deliveries(self, sub: Subscription) -> list[Delivery]:
        """The subscription's deliveries, oldest first."""
        return list(reversed(await self.storage.deliveries(sub.id, None, None, 1000)))

    async def only_delivery(self, sub: Subscription) -> Delivery:
        """The subscription's one delivery."""
        [delivery] = await self.deliveries(sub)
        return delivery

    async def subscription(self, sub: Subscription) -> Subscription:
        """The subscription as stored now."""
        stored = await self.storage.subscription(sub.id)
        assert stored is not None
        return stored

    async def drive(self, worker: Worker, delivery_id: int, rounds: int = 30) -> Delivery:
        """Run the worker at each due time until the delivery is no longer pending."""
        for _ in range(rounds):
            delivery = await self.storage.delivery(delivery_id)
            assert delivery is not None
            if delivery.status != "pending":
                return delivery
            self.clock.ns = max(self.clock.ns, delivery.due_ns)
            await worker.run_once()
        pytest.fail(f"delivery {delivery_id} still pending after {rounds} rounds")


storage = databases.sqlite_storage  # the fixture, under the name these tests use


@pytest.fixture
async def transport() -> AsyncIterator[AiohttpTransport]:
    """The real delivery transport, allowed to reach 127.0.0.1."""
    client = AiohttpTransport(allow_private=True, total_timeout=5.0)
    yield client
    await client.close()


@pytest.fixture
def rig(storage: SQLiteStorage, transport: AiohttpTransport) -> Rig:
    """The storage, transport and a fake clock at T0."""
    return Rig(storage, transport, FakeClock())


def offsets(delivery: Delivery) -> list[float]:
    """Seconds from the first attempt to each attempt."""
    first = delivery.attempt_log[0].started_ns
    return [(a.started_ns - first) / NS for a in delivery.attempt_log]


async def test_failing_sink_gets_eight_attempts_on_the_default_schedule(
    rig: Rig, receivers: Receivers
) -> None:
    """A sink answering 500 gets 8 attempts, 0, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h apart, then it failed."""
    receiver = receivers(answer(500, "boom"))
    sub = await rig.subscribe(receiver.url + "/hook")
    await rig.publish(sub.group)
    delivery = await rig.only_delivery(sub)

    done = await rig.drive(rig.worker(), delivery.id)

    assert done.status == "failed"
    assert done.attempts == 8
    assert len(receiver.received()) == 8
    assert done.attempt_log[0].started_ns == T0
    gaps = [b - a for a, b in itertools.pairwise(offsets(done))]
    assert gaps == [5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 10 * 3600]
    for number, attempt in enumerate(done.attempt_log, start=1):
        assert attempt.number == number
        assert attempt.status_code == 500
        assert attempt.error is None
        assert attempt.response == "boom"
        assert attempt.latency_ms > 0
    assert (await rig.subscription(sub)).state == "active"


async def test_failed_delivery_is_not_attempted_again(rig: Rig, receivers: Receivers) -> None:
    """Once the schedule is exhausted, no later run sends the delivery."""
    receiver = receivers(answer(500))
    sub = await rig.subscribe(receiver.url)
    await rig.publish(sub.group)
    worker = rig.worker(Schedule((0, 1), jitter=0))
    done = await rig.drive(worker, (await rig.only_delivery(sub)).id)
    assert done.status == "failed"
    rig.clock.advance(DAY)
    assert await worker.run_once() == 0
    assert len(receiver.received()) == 2


async def test_success_is_recorded_with_its_attempt(rig: Rig, receivers: Receivers) -> None:
    """A 2xx marks the delivery delivered and records status code, latency and response."""
    receiver = receivers(answer(204))
    sub = await rig.subscribe(receiver.url)
    await rig.publish(sub.group, "e-1")
    assert await rig.worker().run_once() == 1
    delivery = await rig.only_delivery(sub)
    assert delivery.status == "delivered"
    [attempt] = delivery.attempt_log
    assert (attempt.number, attempt.status_code, attempt.error) == (1, 204, None)
    assert attempt.started_ns == T0
    assert attempt.response is None
    [got] = receiver.received()
    assert got.header("Ce-Id") == "e-1"
    assert got.header("Authorization") == f"Bearer token-for-{sub.group}"


async def test_429_retry_after_sets_the_next_attempt(rig: Rig, receivers: Receivers) -> None:
    """A 429 with Retry-After: 120 makes the next attempt due exactly 120 s later, jitter or not."""
    receiver = receivers(answer(429, "slow down", **{"Retry-After": "120"}))
    sub = await rig.subscribe(receiver.url)
    await rig.publish(sub.group)
    worker = rig.worker(Schedule())
    await worker.run_once()
    delivery = await rig.only_delivery(sub)
    assert delivery.status == "pending"
    assert delivery.attempt_log[0].status_code == 429
    assert delivery.due_ns == delivery.attempt_log[0].started_ns + 120 * NS
    rig.clock.advance(119)
    assert await worker.run_once() == 0
    rig.clock.advance(1)
    assert await worker.run_once() == 1
    assert len(receiver.received()) == 2


async def test_503_http_date_retry_after_sets_the_next_attempt(
    rig: Rig, receivers: Receivers
) -> None:
    """A 503 whose Retry-After is an HTTP-date ten minutes ahead delays the next attempt ten minutes."""
    receiver = receivers(
        lambda _: web.Response(
            status=503, headers={"Retry-After": formatdate(time.time() + 600, usegmt=True)}
        )
    )
    sub = await rig.subscribe(receiver.url)
    await rig.publish(sub.group)
    await rig.worker().run_once()
    delivery = await rig.only_delivery(sub)
    assert delivery.status == "pending"
    assert delivery.attempt_log[0].status_code == 503
    delay = (delivery.due_ns - delivery.attempt_log[0].started_ns) / NS
    assert 598 <= delay <= 600


async def test_retry_after_is_capped_at_the_longest_delay(rig: Rig, receivers: Receivers) -> None:
    """A Retry-After of a day is cut to the schedule's longest delay."""
    receiver = receivers(answer(429, **{"Retry-After": str(DAY)}))
    sub = await rig.subscribe(receiver.url)
    await rig.publish(sub.group)
    await rig.worker(Schedule((0, 5, 60), jitter=0)).run_once()
    delivery = await rig.only_delivery(sub)
    assert delivery.due_ns == delivery.attempt_log[0].started_ns + 60 * NS


async def test_retry_after_is_ignored_on_a_500(rig: Rig, receivers: Receivers) -> None:
    """A Retry-After on a 500 does not change the schedule's delay."""
    receiver = receivers(answer(500, **{"Retry-After": "120"}))
    sub = await rig.subscribe(receiver.url)
    await rig.publish(sub.group)
    await rig.worker().run_once()
    delivery = await rig.only_delivery(sub)
    assert delivery.due_ns == delivery.attempt_log[0].started_ns + 5 * NS


async def test_410_gone_disables_the_subscription(rig: Rig, receivers: Receivers) -> None:
    """A 410 fails the delivery, disables the subscription, and nothing more goes to it."""
    receiver = receivers(answer(410, "gone"))
    sub = await rig.subscribe(receiver.url)
    await rig.publish(sub.group, "first")
    await rig.publish(sub.group, "second")
    worker = rig.worker(batch=1)
    await worker.run_once()

    stored = await rig.subscription(sub)
    assert stored.state == "disabled"
    assert "410" in (stored.state_reason or "")
    assert len(receiver.received()) == 1
    gone, orphan = sorted(await rig.deliveries(sub), key=lambda d: d.attempts, reverse=True)
    assert (gone.status, gone.attempts, gone.attempt_log[0].status_code) == ("failed", 1, 410)
    # The delivery queued before the 410 is failed without being sent.
    assert (orphan.status, orphan.attempts) == ("failed", 0)

    rig.clock.advance(3600)
    await rig.publish(sub.group, "later")
    assert await worker.run_once() == 0
    assert len(receiver.received()) == 1
    assert len(await rig.deliveries(sub)) == 2


async def test_redirect_is_a_failure_and_is_not_followed(rig: Rig, receivers: Receivers) -> None:
    """A 302 fails the attempt and its Location is never fetched."""
    elsewhere = receivers()
    redirecting = receivers(answer(302, Location=elsewhere.url + "/stolen"))
    sub = await rig.subscribe(redirecting.url)
    await rig.publish(sub.group)
    done = await rig.drive(rig.worker(Schedule((0,), jitter=0)), (await rig.only_delivery(sub)).id)
    assert done.status == "failed"
    assert done.attempt_log[0].status_code == 302
    assert len(redirecting.received()) == 1
    await asyncio.sleep(0.05)
    assert elsewhere.received() == []


async def test_hanging_sink_is_cut_at_the_total_timeout(
    rig: Rig, storage: SQLiteStorage, receivers: Receivers
) -> None:
    """A sink that never answers is cut at the transport's total timeout and the attempt says so."""
    gate = Gate()
    receiver = receivers(gate)
    sub = await rig.subscribe(receiver.url)
    await rig.publish(sub.group)
    short = AiohttpTransport(allow_private=True, total_timeout=0.5)
    worker = Worker(storage, short, sign, WorkerSettings(schedule=EXACT), rig.clock)
    try:
        started = time.monotonic()
        await worker.run_once()
        elapsed = time.monotonic() - started
    finally:
        gate.release.set()
        await short.close()
    delivery = await rig.only_delivery(sub)
    [attempt] = delivery.attempt_log
    assert attempt.status_code is None
    assert attempt.error == "timed out after 0.5 s"
    assert 400 <= attempt.latency_ms < 3000
    assert 0.4 <= elapsed < 3
    assert delivery.status == "pending"
    assert delivery.due_ns == attempt.started_ns + 5 * NS


def test_default_timeouts_are_5_s_to_connect_and_15_s_in_all() -> None:
    """The transport and the settings default to a 5 s connect and a 15 s total timeout."""
    parameters = inspect.signature(AiohttpTransport).parameters
    assert parameters["connect_timeout"].default == 5.0
    assert parameters["total_timeout"].default == 15.0
    settings = Settings()
    assert (settings.delivery_connect_timeout_s, settings.delivery_timeout_s) == (5.0, 15.0)


@pytest.mark.parametrize("body", ["x" * 100_000, "é" * 50_000])
async def test_response_excerpt_is_at_most_4_kb(rig: Rig, receivers: Receivers, body: str) -> None:
    """Only the first 4 KB of a response body is recorded."""
    receiver = receivers(answer(500, body))
    sub = await rig.subscribe(receiver.url)
    await rig.publish(sub.group)
    await rig.worker().run_once()
    [attempt] = (await rig.only_delivery(sub)).attempt_log
    assert attempt.response is not None
    assert 0 < len(attempt.response.encode()) <= 4096
    assert body.startswith(attempt.response)
    assert len(attempt.response.encode()) > 4000


async def test_success_clears_the_failing_streak(rig: Rig, receivers: Receivers) -> None:
    """A 2xx resets the failing streak, so failures before it do not count toward 5 days."""
    receiver = receivers(lambda r: web.Response(status=200 if r.header("Ce-Id") == "good" else 500))
    sub = await rig.subscribe(receiver.url)
    worker = rig.worker(Schedule((0,), jitter=0))
    await rig.publish(sub.group, "bad-1")
    await worker.run_once()
    assert (await rig.subscription(sub)).failing_since_ns == T0

    rig.clock.advance(4 * DAY)
    await rig.publish(sub.group, "good")
    await worker.run_once()
    assert (await rig.subscription(sub)).failing_since_ns is None

    rig.clock.advance(DAY + 60)
    await rig.publish(sub.group, "bad-2")
    await worker.run_once()
    stored = await rig.subscription(sub)
    assert stored.state == "active"
    assert stored.failing_since_ns == rig.clock()
    assert [d.status for d in await rig.deliveries(sub)] == ["failed", "delivered", "failed"]


async def test_failing_for_five_days_disables_the_subscription(
    rig: Rig, receivers: Receivers
) -> None:
    """A subscription whose deliveries have all failed for 5 days is disabled, not before."""
    receiver = receivers(answer(500))
    sub = await rig.subscribe(receiver.url)
    await rig.publish(sub.group)
    delivery = await rig.only_delivery(sub)
    worker = rig.worker(Schedule((0, *[DAY] * 7), jitter=0))
    for day in range(6):
        current = await rig.storage.delivery(delivery.id)
        assert current is not None
        assert current.status == "pending"
        assert (await rig.subscription(sub)).state == "active"
        rig.clock.ns = current.due_ns
        assert rig.clock() == T0 + day * DAY * NS
        assert await worker.run_once() == 1
    stored = await rig.subscription(sub)
    assert stored.state == "disabled"
    assert "5 days" in (stored.state_reason or "")
    # The rest of its schedule is not sent: the delivery fails when next due.
    done = await rig.drive(worker, delivery.id)
    assert (done.status, done.attempts) == ("failed", 6)
    assert len(receiver.received()) == 6


async def test_lost_lease_cannot_record_and_the_new_claim_can(
    rig: Rig, receivers: Receivers
) -> None:
    """After A's lease ran out B claims with a new token; A's result is refused, B's recorded."""
    sub = await rig.subscribe(receivers().url)
    await rig.publish(sub.group)
    lease = 60 * NS
    [claim_a] = await rig.storage.claim_deliveries(rig.clock(), lease, 10)
    rig.clock.advance(61)
    [claim_b] = await rig.storage.claim_deliveries(rig.clock(), lease, 10)
    assert claim_b.delivery_id == claim_a.delivery_id
    assert claim_b.claim_token != claim_a.claim_token

    assert await rig.storage.record_attempt(result(claim_a, rig.clock(), 200)) is False
    delivery = await rig.storage.delivery(claim_a.delivery_id)
    assert delivery is not None
    assert (delivery.status, delivery.attempts, delivery.attempt_log) == ("pending", 0, ())

    assert await rig.storage.record_attempt(result(claim_b, rig.clock(), 200)) is True
    delivery = await rig.storage.delivery(claim_a.delivery_id)
    assert delivery is not None
    assert (delivery.status, delivery.attempts, len(delivery.attempt_log)) == ("delivered", 1, 1)
    assert await rig.storage.record_attempt(result(claim_a, rig.clock(), 200)) is False


async def test_expired_lease_cannot_record_even_unclaimed(rig: Rig, receivers: Receivers) -> None:
    """A worker whose lease ran out cannot record, even if no one else claimed the delivery."""
    receiver = receivers()
    sub = await rig.subscribe(receiver.url)
    await rig.publish(sub.group)
    worker = rig.worker(lease_s=30)
    [claim] = await rig.storage.claim_deliveries(rig.clock(), 30 * NS, 10)
    rig.clock.advance(30)
    await worker.deliver(claim)
    assert len(receiver.received()) == 1
    assert worker.lost_claims == 1
    delivery = await rig.only_delivery(sub)
    assert (delivery.status, delivery.attempts, delivery.attempt_log) == ("pending", 0, ())
    # It is due again and the next claim delivers it.
    assert await worker.run_once() == 1
    assert (await rig.only_delivery(sub)).status == "delivered"


async def test_a_claim_is_not_given_twice_while_its_lease_holds(
    rig: Rig, tmp_path: Path, receivers: Receivers
) -> None:
    """Concurrent claims (also from a second connection to the file) never share a delivery."""
    sub = await rig.subscribe(receivers().url)
    for index in range(20):
        await rig.publish(sub.group, f"e-{index}")
    other = SQLiteStorage(str(tmp_path / "worker.db"))
    await other.open()
    try:
        lease = 60 * NS
        batches = await asyncio.gather(
            *(store.claim_deliveries(rig.clock(), lease, 7) for store in [rig.storage, other] * 3)
        )
        claimed = [c.delivery_id for batch in batches for c in batch]
        assert len(claimed) == len(set(claimed)) == 20
        assert len({c.claim_token for batch in batches for c in batch}) == sum(
            1 for batch in batches if batch
        )
        rig.clock.advance(59.999)
        assert await other.claim_deliveries(rig.clock(), lease, 100) == []
        assert await rig.storage.claim_deliveries(rig.clock(), lease, 100) == []
    finally:
        await other.close()


async def test_per_sink_bound_holds_while_another_sink_proceeds(
    rig: Rig, receivers: Receivers
) -> None:
    """With per_sink=2 a slow sink never has more than 2 requests in flight; another sink is not held up."""
    gate = Gate()
    slow, fast = receivers(gate), receivers()
    root = groups.new_root()
    await rig.subscribe(slow.url, root)
    await rig.subscribe(fast.url, root)
    for index in range(6):
        await rig.publish(root, f"e-{index}")
    worker = rig.worker(per_sink=2)
    run = asyncio.create_task(worker.run_once())
    try:
        await wait_until(lambda: len(fast.received()) == 6 and gate.current == 2)
        await asyncio.sleep(0.1)
        assert len(slow.received()) == 2
        assert not run.done()
    finally:
        gate.release.set()
    assert await run == 12
    assert gate.peak == 2
    assert len(slow.received()) == 6


async def test_overall_bound_holds_across_sinks(rig: Rig, receivers: Receivers) -> None:
    """With concurrency=3, run() never has more than 3 sends in flight across all sinks."""
    gate = Gate()
    first, second = receivers(gate), receivers(gate)
    root = groups.new_root()
    await rig.subscribe(first.url, root)
    await rig.subscribe(second.url, root)
    for index in range(4):
        await rig.publish(root, f"e-{index}")
    worker = rig.worker(concurrency=3, poll_interval_s=0.02)
    stop = asyncio.Event()
    run = asyncio.create_task(worker.run(stop))
    try:
        await wait_until(lambda: gate.current == 3)
        await asyncio.sleep(0.1)
        assert len(first.received()) + len(second.received()) == 3
    finally:
        gate.release.set()
    try:
        await wait_until(lambda: len(first.received()) + len(second.received()) == 8)
    finally:
        stop.set()
        await run
    assert gate.peak == 3
    root_subs = await rig.storage.subscriptions(root)
    statuses = [d.status for sub in root_subs for d in await rig.deliveries(sub)]
    assert statuses == ["delivered"] * 8


def count_batches(storage: SQLiteStorage, monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """The sizes of the batches `storage.<name>` (record_attempts or release_claims) is given,
    each counted once its write has ended (so a test that waits for a count reads the result)."""
    sizes: list[int] = []
    write = getattr(storage, name)

    async def counted(items: Any) -> list[bool]:
        found: list[bool] = await write(items)
        sizes.append(len(items))
        return found

    monkeypatch.setattr(storage, name, counted)
    return sizes


async def test_results_are_recorded_together_once_no_send_is_in_flight(
    rig: Rig, receivers: Receivers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20 deliveries answered at once are recorded in one call: the last to end writes all."""
    gate = Gate()
    sub = await rig.subscribe(receivers(gate).url)
    for index in range(20):
        await rig.publish(sub.group, f"e-{index}")
    batches = count_batches(rig.storage, monkeypatch, "record_attempts")
    worker = rig.worker(record_delay_s=60.0)
    run = asyncio.create_task(worker.run_once())
    await wait_until(lambda: gate.current == 16)
    gate.release.set()
    assert await run == 20
    assert batches == [20]  # the 4 that waited for the sink were still to send
    assert [d.status for d in await rig.deliveries(sub)] == ["delivered"] * 20


async def test_a_result_waits_for_its_batch_at_most_the_record_delay(
    rig: Rig, receivers: Receivers
) -> None:
    """While a slow sink holds a send, a fast sink's result is recorded after record_delay_s."""
    gate = Gate()
    root = groups.new_root()
    slow = await rig.subscribe(receivers(gate).url, root)
    fast = await rig.subscribe(receivers().url, root)
    await rig.publish(root)
    run = asyncio.create_task(rig.worker(record_delay_s=0.05).run_once())
    try:
        began = time.monotonic()
        while (await rig.only_delivery(fast)).status != "delivered":
            assert time.monotonic() - began < 5
            await asyncio.sleep(0.01)
        assert gate.current == 1
        assert (await rig.only_delivery(slow)).status == "pending"
    finally:
        gate.release.set()
    assert await run == 2
    assert (await rig.only_delivery(slow)).status == "delivered"


async def test_a_busy_sink_keeps_per_sink_waiting_and_hands_the_rest_back(
    rig: Rig, receivers: Receivers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """per_sink=2: 2 deliveries are sent, 2 wait for the sink, and the 5th is handed back
    (due again in a second, with the others' hand-backs in one call); all arrive once."""
    gate = Gate()
    receiver = receivers(gate)
    sub = await rig.subscribe(receiver.url)
    for index in range(5):
        await rig.publish(sub.group, f"e-{index}")
    released = count_batches(rig.storage, monkeypatch, "release_claims")
    worker = rig.worker(per_sink=2, poll_interval_s=0.02)
    stop = asyncio.Event()
    run = asyncio.create_task(worker.run(stop))
    try:
        await wait_until(lambda: gate.current == 2 and released == [1])
        due = sorted(d.due_ns for d in await rig.deliveries(sub))
        assert due == [T0 + NS] + [T0 + 60 * NS] * 4
        gate.release.set()
        await wait_until(lambda: len(receiver.received()) == 4)
        rig.clock.advance(1)
        worker.wake()
        await wait_until(lambda: len(receiver.received()) == 5)
    finally:
        gate.release.set()
        stop.set()
        await run
    assert gate.peak == 2
    assert [d.status for d in await rig.deliveries(sub)] == ["delivered"] * 5
    assert len({r.header("Ce-Id") for r in receiver.received()}) == 5


async def test_a_delivery_that_waited_a_quarter_of_its_lease_is_handed_back(
    rig: Rig, receivers: Receivers
) -> None:
    """With a 4 s lease, a delivery that waited more than 1 s for its sink is not sent but
    handed back: it would risk its lease running out while it is sent."""
    gate = Gate()
    receiver = receivers(gate)
    sub = await rig.subscribe(receiver.url)
    for index in range(2):
        await rig.publish(sub.group, f"e-{index}")
    worker = rig.worker(per_sink=1, lease_s=4, poll_interval_s=0.02)
    stop = asyncio.Event()
    run = asyncio.create_task(worker.run(stop))
    try:
        await wait_until(lambda: gate.current == 1)
        rig.clock.advance(2)
        gate.release.set()
        await wait_until(lambda: len(receiver.received()) == 1)
        for _ in range(250):  # the attempt and the hand-back are written after the answer
            delivered, handed_back = await rig.deliveries(sub)
            if delivered.status == "delivered" and handed_back.due_ns == rig.clock() + NS:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)  # neither sent nor claimed again meanwhile
        assert len(receiver.received()) == 1
        delivered, handed_back = await rig.deliveries(sub)
        assert delivered.status == "delivered"
        assert (handed_back.status, handed_back.attempts) == ("pending", 0)
        assert handed_back.due_ns == rig.clock() + NS
    finally:
        gate.release.set()
        stop.set()
        await run


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Yield to the loop until `condition` holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        await asyncio.sleep(0.005)


@pytest.mark.parametrize(("claim_takes", "delivered"), [(0.3, True), (60.0, False)])
async def test_a_claim_under_way_when_told_to_stop(
    rig: Rig,
    receivers: Receivers,
    monkeypatch: pytest.MonkeyPatch,
    claim_takes: float,
    delivered: bool,
) -> None:
    """A claim that answers within the grace (a lock held a moment) is delivered though the
    worker stops; one that does not (a connection awaited through an outage) is given up, and
    the worker stops without waiting for it."""
    receiver = receivers()
    root = groups.new_root()
    await rig.subscribe(receiver.url, root)
    await rig.publish(root, "e-1")
    claim = rig.storage.claim_deliveries
    claiming = asyncio.Event()

    async def slow_claim(*args: Any) -> Any:
        claiming.set()
        await asyncio.sleep(claim_takes)
        return await claim(*args)

    monkeypatch.setattr(rig.storage, "claim_deliveries", slow_claim)
    stop = asyncio.Event()
    run = asyncio.create_task(rig.worker(poll_interval_s=0.02).run(stop))
    await asyncio.wait_for(claiming.wait(), 5)
    stop.set()
    began = time.monotonic()
    await asyncio.wait_for(run, 10)
    assert time.monotonic() - began < 5
    assert len(receiver.received()) == (1 if delivered else 0)
