"""Recording attempts, and handing claims back, in batches: on both backends.

A batch is recorded as if its results were recorded one by one, in order, in one
transaction; a result whose claim was lost (a stale claim token) is refused, and
nothing of it is recorded, while the others of its batch are.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import event
from tests.reports import FIVE_DAYS_NS, NS, result
from tidings import groups, wire
from tidings.model import Claim, Delivery, Subscription
from tidings.storage import open_storage
from tidings.storage.base import Storage

DAY_NS = 86_400 * NS
T0 = 1_760_000_000 * NS
LEASE_NS = 60 * NS


@pytest.fixture
async def storage(database_url: str) -> AsyncIterator[Storage]:
    """An open storage on a fresh database of the backend under test."""
    store = open_storage(database_url)
    await store.open()
    yield store
    await store.close()


async def subscribe(storage: Storage, root: str, name: str) -> Subscription:
    """A webhook subscription of `root` to every test event (nothing is sent)."""
    sub = Subscription(
        id=f"{root}/{name}",
        group=root,
        kind="webhook",
        sink=f"https://{name}.example/hook",
        types=("dev.example.*",),
        roles=("owner",),
        created_ns=T0,
        updated_ns=T0,
    )
    await storage.create_subscription(sub, [], T0)
    return sub


async def publish(storage: Storage, root: str, count: int, now_ns: int = T0) -> None:
    """Ingest `count` test events in `root`."""
    batch = [wire.parse_event(event(root, id=f"e-{now_ns}-{n}")) for n in range(count)]
    await storage.ingest(batch, now_ns)


async def delivery(storage: Storage, delivery_id: int) -> Delivery:
    found = await storage.delivery(delivery_id)
    assert found is not None
    return found


async def subscription(storage: Storage, sub: Subscription) -> Subscription:
    found = await storage.subscription(sub.id)
    assert found is not None
    return found


def by_subscription(claims: list[Claim]) -> dict[str, Claim]:
    """The one claim of each subscription."""
    found = {claim.subscription.id: claim for claim in claims}
    assert len(found) == len(claims)
    return found


async def test_a_batch_records_every_result_but_the_stale_one(storage: Storage) -> None:
    """A success, a retryable failure, a 410 and a stale claim in one call: the stale one is
    refused, and nothing of it is recorded (its 410 disables nothing); the others are."""
    root = groups.new_root()
    ok, retry, gone, stale = [
        await subscribe(storage, root, name) for name in ("ok", "retry", "gone", "stale")
    ]
    await publish(storage, root, 1)
    first = by_subscription(await storage.claim_deliveries(T0, LEASE_NS, 10))
    # The lease runs out and the deliveries are claimed again: the first tokens are stale.
    now = T0 + LEASE_NS + NS
    again = by_subscription(await storage.claim_deliveries(now, LEASE_NS, 10))
    assert {c.claim_token for c in first.values()}.isdisjoint(c.claim_token for c in again.values())

    retry_at = now + 5 * NS
    recorded = await storage.record_attempts(
        [
            result(again[ok.id], now, 200),
            result(again[retry.id], now, 503, next_due_ns=retry_at),
            result(again[gone.id], now, 410, disable_reason="the sink answered 410 Gone"),
            result(first[stale.id], now, 410, disable_reason="the sink answered 410 Gone"),
        ]
    )
    assert recorded == [True, True, True, False]

    done = await delivery(storage, again[ok.id].delivery_id)
    assert (done.status, done.attempts) == ("delivered", 1)
    assert [(a.number, a.status_code, a.response) for a in done.attempt_log] == [
        (1, 200, "answered 200")
    ]
    waiting = await delivery(storage, again[retry.id].delivery_id)
    assert (waiting.status, waiting.attempts, waiting.due_ns) == ("pending", 1, retry_at)
    assert [a.status_code for a in waiting.attempt_log] == [503]
    failed = await delivery(storage, again[gone.id].delivery_id)
    assert (failed.status, failed.attempts) == ("failed", 1)
    refused = await delivery(storage, again[stale.id].delivery_id)
    assert (refused.status, refused.attempts, refused.attempt_log) == ("pending", 0, ())

    assert (await subscription(storage, ok)).failing_since_ns is None
    assert (await subscription(storage, retry)).failing_since_ns == now
    disabled = await subscription(storage, gone)
    assert (disabled.state, disabled.state_reason) == ("disabled", "the sink answered 410 Gone")
    assert disabled.updated_ns == now
    untouched = await subscription(storage, stale)
    assert (untouched.state, untouched.failing_since_ns) == ("active", None)

    # The current claim still holds: its result is recorded; recording it twice is refused.
    later = now + NS
    assert await storage.record_attempts([result(again[stale.id], later, 200)]) == [True]
    assert await storage.record_attempt(result(again[stale.id], later, 200)) is False
    assert (await delivery(storage, again[stale.id].delivery_id)).status == "delivered"


async def test_a_batch_applies_its_results_in_order(storage: Storage) -> None:
    """Two subscriptions failing for 5 days get a success and a failure in one batch each:
    a failure before the success disables its subscription (then the streak ends); a
    failure after it starts a new streak. Several results of one subscription, as recorded
    one by one."""
    root = groups.new_root()
    fails_first, succeeds_first = [
        await subscribe(storage, root, name) for name in ("fails-first", "succeeds-first")
    ]
    await publish(storage, root, 1)
    first = await storage.claim_deliveries(T0, LEASE_NS, 10)
    assert await storage.record_attempts(
        [result(claim, T0, 500, next_due_ns=T0 + DAY_NS) for claim in first]
    ) == [True, True]
    for sub in (fails_first, succeeds_first):
        assert (await subscription(storage, sub)).failing_since_ns == T0

    now = T0 + FIVE_DAYS_NS + NS
    await publish(storage, root, 1, now)
    claims = await storage.claim_deliveries(now, LEASE_NS, 10)
    assert len(claims) == 4  # the retries and the new event, for both subscriptions
    results = []
    for sub, order in ((fails_first, (500, 200)), (succeeds_first, (200, 500))):
        mine = [claim for claim in claims if claim.subscription.id == sub.id]
        for claim, code in zip(mine, order, strict=True):
            results.append(result(claim, now, code, next_due_ns=now + DAY_NS))
    assert await storage.record_attempts(results) == [True] * 4

    disabled = await subscription(storage, fails_first)
    assert disabled.state == "disabled"
    assert disabled.state_reason == "every delivery has failed for 5 days"
    assert disabled.failing_since_ns is None
    active = await subscription(storage, succeeds_first)
    assert (active.state, active.failing_since_ns) == ("active", now)


async def test_claims_are_handed_back_together_but_a_stale_one(storage: Storage) -> None:
    """Handing back claims in one call: each is due again when it says, with no claim; a
    claim whose lease ran out (and was claimed again) is left to its new holder."""
    root = groups.new_root()
    await subscribe(storage, root, "busy")
    await publish(storage, root, 2)
    stale, kept = await storage.claim_deliveries(T0, LEASE_NS, 10)
    now = T0 + LEASE_NS + NS
    [taken_over] = await storage.claim_deliveries(now, LEASE_NS, 1)
    assert taken_over.delivery_id == stale.delivery_id
    kept_due = now + NS

    assert await storage.release_claims(
        [
            (kept.delivery_id, kept.claim_token, kept_due),
            (stale.delivery_id, stale.claim_token, now),
        ]
    ) == [True, False]
    assert (await delivery(storage, kept.delivery_id)).due_ns == kept_due
    assert (await delivery(storage, stale.delivery_id)).due_ns == now + LEASE_NS
    assert await storage.release_claims([]) == []
    assert await storage.record_attempts([]) == []
    # The one handed back is claimed again once due; the new holder's claim still holds.
    assert await storage.claim_deliveries(kept_due - 1, LEASE_NS, 10) == []
    [again] = await storage.claim_deliveries(kept_due, LEASE_NS, 10)
    assert again.delivery_id == kept.delivery_id
    assert await storage.record_attempts(
        [result(taken_over, kept_due, 200), result(again, kept_due, 200)]
    ) == [True, True]
