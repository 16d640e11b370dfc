"""Retention on both backends: events spread over 120 days, then one run keeps exactly the last 90.

Events are ingested through the storage API with `now_ns` as their stored time (a fake
clock), so that 120 days pass in a second; the PostgreSQL backend makes each day's
partitions as the ingests need them. `run_retention` must keep every event stored at or
after the cutoff (now - 90 days) and drop every one before, to the nanosecond, with their
deliveries and attempts; on PostgreSQL the whole days before the cutoff go by dropping their
partitions. `tidings retention` does the same once, against a database named by the env.
"""

from __future__ import annotations

import time
from dataclasses import replace

from tests.conftest import event
from tests.databases import query
from tests.servers import run_tidings
from tidings import groups, wire
from tidings.config import Settings
from tidings.model import Attempt, AttemptResult, EventInput, EventQuery, Subscription
from tidings.runtime import run_retention
from tidings.storage import open_storage
from tidings.storage.base import Storage
from tidings.storage.postgres_partitions import DAY_NS, day_of

NS = 1_000_000_000
# A fixed "now" in the middle of a day, so that the cutoff falls inside a day too.
NOW = 1_760_000_000 * NS + 12_345_678_901
CUTOFF = NOW - 90 * DAY_NS
# Days ago at which events are stored (a spread over 120 days; not every day, as every
# PostgreSQL day costs two partitions to make). Around the boundary, densely.
DAYS_AGO = (119, 110, 100, 95, 91, 89, 85, 60, 30, 7, 1, 0)


def make_event(group: str, event_id: str, raw: bool = False) -> EventInput:
    """A test event with `event_id` in `group` (with an inbound payload if `raw`)."""
    parsed = wire.parse_event(event(group, id=event_id))
    return replace(parsed, raw='{"inbound": true}') if raw else parsed


async def count(storage: Storage, root: str) -> int:
    """Every event of the tenant, as the root sees them."""
    return await storage.count_events(EventQuery(scope=root))


async def listed_ids(storage: Storage, root: str) -> list[str]:
    """The ids of every event of the tenant, in position order (paging 100 at a time)."""
    ids: list[str] = []
    after = None
    while page := await storage.list_events(EventQuery(scope=root, after=after, limit=100)):
        ids.extend(found.id for found in page)
        after = page[-1].position
    return ids


async def subscribe(storage: Storage, root: str, now_ns: int) -> Subscription:
    """A webhook subscription of the tenant to every test event (nothing is sent)."""
    sub = Subscription(
        id=groups.new_child(root),
        group=root,
        kind="webhook",
        sink="http://127.0.0.1:9/",
        types=("dev.example.*",),
        roles=("owner",),
        created_ns=now_ns,
        updated_ns=now_ns,
    )
    await storage.create_subscription(sub, [], now_ns)
    return sub


async def deliver_everything(storage: Storage, now_ns: int) -> int:
    """Claim every delivery and record one attempt (delivered) for each; return how many."""
    total = 0
    while claims := await storage.claim_deliveries(now_ns, 60 * NS, 500):
        for claim in claims:
            recorded = await storage.record_attempt(
                AttemptResult(
                    delivery_id=claim.delivery_id,
                    claim_token=claim.claim_token,
                    subscription_id=claim.subscription.id,
                    attempt=Attempt(
                        number=1,
                        started_ns=now_ns,
                        status_code=200,
                        latency_ms=1.0,
                        error=None,
                        response="ok",
                    ),
                    status="delivered",
                    next_due_ns=None,
                    now_ns=now_ns + 1,
                )
            )
            assert recorded
        total += len(claims)
    return total


def partition_days(database_url: str) -> dict[str, set[int]]:
    """The days of the existing partitions of `events` and `event_scopes` (PostgreSQL)."""
    found: dict[str, set[int]] = {"events": set(), "event_scopes": set()}
    for parent, bound in query(
        database_url,
        "SELECT p.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent"
        " JOIN pg_namespace n ON n.oid = p.relnamespace"
        " WHERE p.relname IN ('events', 'event_scopes') AND n.nspname = current_schema()",
    ):
        low = int(str(bound).split("(")[1].split(")")[0].strip("'"))
        found[str(parent)].add(day_of(low))
    return found


def scalar(database_url: str, sql: str) -> int:
    """The one number a query answers."""
    [(value,)] = query(database_url, sql)
    return int(str(value))


async def test_retention_keeps_exactly_the_last_90_days(backend: str, database_url: str) -> None:
    """120 days of events: one run leaves exactly those stored at or after now - 90 days,
    to the nanosecond, with their deliveries and attempts; whole older days are gone."""
    storage = open_storage(database_url)
    await storage.open()
    try:
        root = groups.new_root()
        other = groups.new_root()  # another tenant: retention is not per tenant
        team = groups.new_child(root)  # the boundary's events have scope rows to expire too
        await subscribe(storage, root, NOW - 120 * DAY_NS)
        stored_at: dict[str, int] = {}
        for days in DAYS_AGO:
            at = NOW - days * DAY_NS
            batch = [make_event(root, f"d{days}-{n}", raw=n == 0) for n in range(5)]
            batch.append(make_event(other, f"other-d{days}"))
            await storage.ingest(batch, at)
            stored_at.update({e.id or "": at for e in batch if groups.root_of(e.group) == root})
        # The boundary, to the nanosecond (and the start of the boundary's day).
        for name, at in (
            ("before-1ns", CUTOFF - 1),
            ("at-cutoff", CUTOFF),
            ("after-1ns", CUTOFF + 1),
            ("day-start", day_of(CUTOFF) * DAY_NS),
            ("day-before-end", day_of(CUTOFF) * DAY_NS - 1),
        ):
            await storage.ingest([make_event(team, name)], at)
            stored_at[name] = at
        assert await deliver_everything(storage, NOW) == len(stored_at)
        assert await count(storage, root) == len(stored_at)
        # A search finds them all (and so every event is in the full-text index before expiry).
        assert await storage.count_events(EventQuery(scope=root, text="widget")) == len(stored_at)
        if backend == "postgres":
            days_before = partition_days(database_url)
            assert min(days_before["events"]) <= day_of(NOW - 119 * DAY_NS)

        expired = await run_retention(storage, Settings(retention_days=90), NOW)

        kept = {name for name, at in stored_at.items() if at >= CUTOFF}
        gone = set(stored_at) - kept
        assert {"at-cutoff", "after-1ns"} <= kept
        assert {"before-1ns", "day-start", "day-before-end"} <= gone
        assert expired == len(gone) + sum(1 for days in DAYS_AGO if days > 90)  # + the other's
        assert await count(storage, root) == len(kept)
        assert await storage.count_events(EventQuery(scope=team)) == 2  # at-cutoff, after-1ns
        assert sorted(await listed_ids(storage, root)) == sorted(kept)
        assert await count(storage, other) == sum(1 for days in DAYS_AGO if days <= 90)
        assert scalar(database_url, "SELECT count(*) FROM events") == await count(
            storage, root
        ) + await count(storage, other)
        # Their deliveries, and the deliveries' attempts, went with them (and only theirs).
        [sub] = await storage.subscriptions(root)
        delivered = await storage.deliveries(sub.id, None, None, 1000)
        assert sorted(d.event_id for d in delivered) == sorted(kept)
        assert all(d.status == "delivered" and len(d.attempt_log) == 1 for d in delivered)
        assert scalar(database_url, "SELECT count(*) FROM deliveries") == len(kept)
        assert scalar(database_url, "SELECT count(*) FROM delivery_attempts") == len(kept)
        if backend == "postgres":
            assert scalar(database_url, "SELECT count(*) FROM event_ids") == len(kept) + sum(
                1 for days in DAYS_AGO if days <= 90
            )
            assert (
                scalar(
                    database_url, f"SELECT count(*) FROM event_scopes WHERE stored_ns < {CUTOFF}"
                )
                == 0
            )
            assert scalar(database_url, "SELECT count(*) FROM event_scopes") == 2
            days_after = partition_days(database_url)
            for table, days in days_after.items():
                # Every whole day before the cutoff's was dropped; the cutoff's own day stays
                # (what it held before the cutoff went row by row), and so does every later day.
                assert min(days) == day_of(CUTOFF), table
                made = days_before[table] | {day_of(NOW), day_of(NOW) + 1}  # maintain(): tomorrow's
                assert days == {day for day in made if day >= day_of(CUTOFF)}
        else:
            assert (
                scalar(
                    database_url,
                    "SELECT count(*) FROM event_scopes WHERE position NOT IN"
                    " (SELECT position FROM events)",
                )
                == 0
            )
            assert scalar(database_url, "SELECT count(*) FROM events_text") == len(kept) + sum(
                1 for days in DAYS_AGO if days <= 90
            )
            assert scalar(database_url, "SELECT count(*) FROM event_payloads") == sum(
                1 for days in DAYS_AGO if days <= 90
            )

        # A second run finds nothing more to expire; ingest goes on as before.
        assert await run_retention(storage, Settings(retention_days=90), NOW) == 0
        [fresh] = await storage.ingest([make_event(root, "after-retention")], NOW)
        assert fresh.created
        assert await count(storage, root) == len(kept) + 1
    finally:
        await storage.close()


async def test_retention_of_a_fraction_of_a_day(backend: str, database_url: str) -> None:
    """A retention shorter than a day cuts inside today: nothing whole to drop, rows go one by one."""
    storage = open_storage(database_url)
    await storage.open()
    try:
        root = groups.new_root()
        for hours in (30, 13, 11, 1):
            await storage.ingest([make_event(root, f"h{hours}")], NOW - hours * 3600 * NS)
        assert await run_retention(storage, Settings(retention_days=0.5), NOW) == 2
        assert sorted(await listed_ids(storage, root)) == ["h1", "h11"]
    finally:
        await storage.close()


async def test_tidings_retention_runs_it_once(backend: str, database_url: str) -> None:
    """`tidings retention` expires what TIDINGS_RETENTION_DAYS says is old, now, and says how many."""
    storage = open_storage(database_url)
    await storage.open()
    root = groups.new_root()
    now = time.time_ns()
    try:
        for days_ago in (120, 91, 89, 1):
            await storage.ingest(
                [make_event(root, f"d{days_ago}-{n}") for n in range(3)], now - days_ago * DAY_NS
            )
    finally:
        await storage.close()
    result = run_tidings(
        "retention", TIDINGS_DATABASE_URL=database_url, TIDINGS_RETENTION_DAYS="90"
    )
    assert result.returncode == 0, result.stderr
    assert "expired 6 events older than 90 days" in " ".join(result.stderr.split())
    storage = open_storage(database_url)
    await storage.open()
    try:
        assert sorted(await listed_ids(storage, root)) == [
            f"d{d}-{n}" for d in (1, 89) for n in range(3)
        ]
    finally:
        await storage.close()
