"""The storage interface every backend implements.

A backend owns its SQL and its concurrency. Writes that must be durable
(`ingest`) return only once committed to disk. Positions (the ingest order)
ascend in commit order as readers see them: a reader paging by position never
passes an event that is still to commit.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence
from typing import Any

from tidings.catalog import EventType
from tidings.model import (
    AttemptResult,
    Claim,
    Delivery,
    EventInput,
    EventQuery,
    Group,
    Ingested,
    SigningKey,
    StoredEvent,
    Subscription,
    Token,
    Webhook,
)


class Storage(ABC):
    """Where tidings keeps events, groups, tokens and its own secrets."""

    @abstractmethod
    async def open(self) -> None:
        """Connect, and apply pending migrations."""

    @abstractmethod
    async def close(self) -> None:
        """Release every connection."""

    @abstractmethod
    async def migrate(self) -> list[str]:
        """Apply pending schema migrations; return the names applied."""

    @abstractmethod
    async def ready(self) -> bool:
        """Whether the database answers and its schema is current."""

    async def ready_within(self, seconds: float) -> bool:
        """`ready()`, or False if it does not answer within `seconds` (a probe must answer
        before its prober gives up, whatever the pool's wait for a connection)."""
        try:
            return await asyncio.wait_for(self.ready(), seconds)
        except TimeoutError:
            return False

    @abstractmethod
    async def secret(self, name: str, length: int = 32) -> bytes:
        """A random secret kept in the database, made on first use (e.g. the cursor key)."""

    @abstractmethod
    async def ingest(self, events: Sequence[EventInput], now_ns: int) -> list[Ingested]:
        """Store events atomically: all or none.

        A repeat of a stored `(source, id)` in the same tenant with the same
        fingerprint answers the stored event (`created=False`); with another
        fingerprint it raises `Conflict` naming the index.
        """

    @abstractmethod
    async def list_events(self, query: EventQuery) -> list[StoredEvent]:
        """Up to `query.limit` events matching the query, in position order."""

    @abstractmethod
    async def count_events(self, query: EventQuery) -> int:
        """How many events match the query, ignoring its cursor and limit."""

    @abstractmethod
    async def event_stats(
        self, query: EventQuery, group_by: Sequence[str], interval: str | None
    ) -> list[tuple[Any, ...]]:
        """Counts of matching events per `group_by` value (and `interval` bucket start, in ns),
        most first: rows of the group-by values, the bucket if any, then the count."""

    @abstractmethod
    async def event_payload(self, position: int) -> str | None:
        """The raw payload an inbound webhook received for the event at `position`."""

    @abstractmethod
    async def find_events(
        self, scope: str, event_id: str, source: str | None, limit: int, viewer_roles: int = 15
    ) -> list[StoredEvent]:
        """Events visible from `scope` (to a viewer with `viewer_roles`) with this id (and source)."""

    @abstractmethod
    async def create_group(self, group: Group) -> None:
        """Record a group; `Conflict` if it exists."""

    @abstractmethod
    async def get_group(self, path: str) -> Group | None:
        """A recorded group, or None."""

    @abstractmethod
    async def create_token(self, token: Token) -> None:
        """Record a token (its secret only hashed)."""

    @abstractmethod
    async def token_by_hash(self, secret_hash: str) -> Token | None:
        """The token whose secret hashes to `secret_hash`, or None."""

    @abstractmethod
    async def list_tokens(self, scope: str) -> list[Token]:
        """The tokens of groups in the subtree of `scope`."""

    @abstractmethod
    async def delete_token(self, scope: str, token_id: str) -> bool:
        """Delete a token in the subtree of `scope`; whether one was deleted."""

    @abstractmethod
    async def setting(self, name: str, default: str | None = None) -> str | None:
        """A stored setting; if absent and `default` is given, store and return `default`."""

    @abstractmethod
    async def put_setting(self, name: str, value: str) -> None:
        """Store a setting, replacing any earlier value."""

    @abstractmethod
    async def signing_keys(self) -> list[SigningKey]:
        """Every signing key of the issuer, oldest first."""

    @abstractmethod
    async def add_signing_key(self, key: SigningKey, retire_others_ns: int | None) -> None:
        """Store a new key; schedule every earlier unscheduled key to retire at `retire_others_ns`."""

    @abstractmethod
    async def remove_retired_keys(self, now_ns: int) -> int:
        """Delete keys retired before `now_ns`; return how many."""

    @abstractmethod
    async def create_subscription(
        self, sub: Subscription, events: Sequence[EventInput], now_ns: int
    ) -> list[Ingested]:
        """Store a subscription and ingest `events` (its audit events) in one transaction."""

    @abstractmethod
    async def update_subscription(self, sub: Subscription, fields: Collection[str]) -> None:
        """Write the given mutable fields of a subscription (and only those)."""

    @abstractmethod
    async def delete_subscription(
        self, sub_id: str, events: Sequence[EventInput], now_ns: int
    ) -> list[Ingested] | None:
        """Delete a subscription (and its deliveries) and ingest `events`; None if absent."""

    @abstractmethod
    async def subscription(self, sub_id: str) -> Subscription | None:
        """A subscription by id."""

    @abstractmethod
    async def subscriptions(self, scope: str) -> list[Subscription]:
        """The subscriptions of the subtree of `scope`."""

    @abstractmethod
    async def claim_deliveries(self, now_ns: int, lease_ns: int, limit: int) -> list[Claim]:
        """Claim up to `limit` due deliveries under a lease of `lease_ns`, with a claim token."""

    @abstractmethod
    async def release_claims(self, claims: Sequence[tuple[int, str, int]]) -> list[bool]:
        """Give claimed deliveries back unsent: (delivery id, claim token, due again at), in one
        write; for each, False if its claim was lost."""

    @abstractmethod
    async def record_attempts(self, results: Sequence[AttemptResult]) -> list[bool]:
        """Record attempts and their consequences in one write, as if one by one in order; for
        each, False (nothing of it recorded) if its lease was lost."""

    async def record_attempt(self, result: AttemptResult) -> bool:
        """Record one attempt; False if the lease was lost."""
        [recorded] = await self.record_attempts([result])
        return recorded

    @abstractmethod
    async def deliveries(
        self, sub_id: str, status: str | None, after: int | None, limit: int, viewer_roles: int = 15
    ) -> list[Delivery]:
        """A subscription's deliveries, newest first, below the id `after`: only those of
        events a reader with `viewer_roles` (a `roles_mask`) may see."""

    @abstractmethod
    async def delivery(self, delivery_id: int) -> Delivery | None:
        """One delivery with its attempts."""

    @abstractmethod
    async def retry_delivery(self, delivery_id: int, now_ns: int) -> bool:
        """Queue a finished delivery again with a fresh schedule; False if still pending."""

    @abstractmethod
    async def replay(self, sub: Subscription, since_ns: int, now_ns: int) -> int:
        """Queue every matching event stored since `since_ns`; return how many."""

    @abstractmethod
    async def delivery_backlog(self, now_ns: int) -> tuple[int, int, int | None]:
        """(due, in flight, the oldest due delivery's due time in ns)."""

    @abstractmethod
    async def tenant_types(self, tenant: str) -> list[EventType]:
        """The event types a tenant registered (or whose validation it set)."""

    @abstractmethod
    async def put_tenant_type(self, tenant: str, event_type: EventType, now_ns: int) -> None:
        """Register or replace a tenant's event type."""

    @abstractmethod
    async def delete_tenant_type(self, tenant: str, event_type: str) -> bool:
        """Forget a tenant's event type; whether there was one."""

    @abstractmethod
    async def create_webhook(self, webhook: Webhook) -> None:
        """Store an inbound webhook (its key only hashed)."""

    @abstractmethod
    async def webhook(self, webhook_id: str) -> Webhook | None:
        """An inbound webhook by id."""

    @abstractmethod
    async def webhooks(self, scope: str) -> list[Webhook]:
        """The inbound webhooks of the subtree of `scope`."""

    @abstractmethod
    async def delete_webhook(self, webhook_id: str) -> bool:
        """Delete an inbound webhook; whether there was one."""

    @abstractmethod
    async def expire(self, before_ns: int, batch: int = 1000) -> int:
        """Delete the events stored before `before_ns`, with their deliveries; return how many.

        Deletion goes in small batches (or whole partitions) so that ingest is never blocked long.
        """

    async def maintain(self, now_ns: int) -> None:  # noqa: B027 (a hook; most backends need nothing)
        """Periodic housekeeping (e.g. making the partitions of the coming days)."""

    async def watch(self, wake: Callable[[], None], stop: asyncio.Event) -> None:
        """Call `wake` when another process queues deliveries, until `stop` is set.

        Backends without notifications return at once when stopped; their workers poll.
        """
        await stop.wait()
