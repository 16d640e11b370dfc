"""The records tidings stores: events, groups and tokens, as frozen dataclasses."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tidings.timestamps import Timestamp


@dataclass(frozen=True, slots=True, kw_only=True)
class EventInput:
    """A validated event as a producer sent it, before it is stored.

    `id` and `time` are None when the producer left them out; storage fills
    them in (a UUIDv7, the ingest time). `fingerprint` identifies the content
    as sent, so that a repeat can be told from a conflicting reuse of an id.
    """

    id: str | None
    source: str
    type: str
    subject: str | None
    time: Timestamp | None
    group: str
    audience: str
    extensions: dict[str, Any]
    data: dict[str, Any]
    data_json: str
    fingerprint: str
    roles_mask: int = 0
    allowed_groups: tuple[str, ...] = ()
    eventkey: str | None = None
    raw: str | None = None

    @property
    def actor(self) -> str | None:
        """The subject of the actor that caused the event."""
        actor = self.data.get("actor")
        return actor.get("subject") if isinstance(actor, dict) else None


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredEvent:
    """An event as stored: its position in the ingest order and its two JSON texts.

    `attributes` is the CloudEvents JSON of every attribute but `data`;
    `data` is the data as compact JSON with sorted keys, byte for byte the body
    of a delivery.
    """

    position: int
    id: str
    source: str
    type: str
    group: str
    attributes: str
    data: str

    @classmethod
    def of_new(
        cls, event: EventInput, position: int, event_id: str, attributes: str
    ) -> StoredEvent:
        """A new event as just stored at `position` (under `event_id`, given or minted)."""
        return cls(
            position=position,
            id=event_id,
            source=event.source,
            type=event.type,
            group=event.group,
            attributes=attributes,
            data=event.data_json,
        )

    def to_json(self) -> str:
        """The event as CloudEvents JSON (structured mode)."""
        return f'{self.attributes[:-1]},"data":{self.data}}}'


@dataclass(frozen=True, slots=True, kw_only=True)
class Ingested:
    """The outcome of ingesting one event: the stored event, whether it is new, and how many
    deliveries it queued."""

    event: StoredEvent
    created: bool
    deliveries: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class EventQuery:
    """What to list: a visible subtree, filters, and where to start.

    `scope` is the group whose subtree is searched; the caller has checked it
    lies within the token's group. `after` is a position from a cursor: in
    ascending order the page starts above it, in descending order below it.
    `after_stored_ns`, when the cursor carries it, is when that position's event was stored:
    a hint for where to look first, never trusted for what the page holds.
    """

    scope: str
    types: tuple[str, ...] = ()
    type_prefixes: tuple[str, ...] = ()
    source: str | None = None
    subject: str | None = None
    subject_prefix: str | None = None
    actor: str | None = None
    eventkey: str | None = None
    text: str | None = None
    viewer_roles: int = (1 << 4) - 1
    since_ns: int | None = None
    until_ns: int | None = None
    after: int | None = None
    after_stored_ns: int | None = None
    descending: bool = False
    limit: int = 100


ROLES = ("viewer", "producer", "editor", "owner")
PAGE_LIMIT = 100  # the most events (or subscriptions, deliveries) a page of a list holds


def roles_mask(roles: Iterable[str]) -> int:
    """Roles as a bit mask (viewer 1, producer 2, editor 4, owner 8), for visibility checks in SQL."""
    return sum(1 << ROLES.index(role) for role in set(roles)) if roles else 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Group:
    """A group of a tenant tree."""

    path: str
    name: str | None
    created_ns: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Token:
    """An API credential: bound to a group, holding roles. Its secret is stored only hashed."""

    id: str
    group: str
    roles: tuple[str, ...]
    name: str | None = None
    subject: str | None = None
    expires_ns: int | None = None
    created_ns: int = 0
    secret_hash: str = field(default="", repr=False)


SUBSCRIPTION_KINDS = ("webhook", "slack")
SUBSCRIPTION_STATES = ("active", "disabled")


@dataclass(frozen=True, slots=True, kw_only=True)
class Subscription:
    """A group's endpoint: where its events go, which ones, and whether it is active.

    Its id is a UIDP under its group. `roles` are those of the token that made
    it: the subscription sees what that token could see.
    """

    id: str
    group: str
    kind: str
    sink: str
    types: tuple[str, ...] = ()
    subject_prefix: str | None = None
    description: str | None = None
    state: str = "active"
    state_reason: str | None = None
    slack_username: str | None = None
    slack_icon: str | None = None
    signing_secret: str | None = field(default=None, repr=False)
    roles: tuple[str, ...] = ()
    failing_since_ns: int | None = None
    created_ns: int = 0
    updated_ns: int = 0

    def matches(self, event_type: str, subject: str | None) -> bool:
        """Whether the filter lets an event of this type and subject through."""
        if self.types and not any(
            event_type == t or (t.endswith(".*") and event_type.startswith(t[:-1]))
            for t in self.types
        ):
            return False
        return self.subject_prefix is None or (
            subject is not None and subject.startswith(self.subject_prefix)
        )


DELIVERY_STATUSES = ("pending", "delivered", "failed")


@dataclass(frozen=True, slots=True, kw_only=True)
class Attempt:
    """One try at a delivery."""

    number: int
    started_ns: int
    status_code: int | None
    latency_ms: float
    error: str | None
    response: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """One event for one subscription, and how its attempts went."""

    id: int
    subscription_id: str
    event_position: int
    status: str
    attempts: int
    due_ns: int
    created_ns: int
    updated_ns: int
    event_id: str = ""
    event_source: str = ""
    event_type: str = ""
    attempt_log: tuple[Attempt, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Claim:
    """A delivery claimed by a worker: what it needs to send it, and the token to report back."""

    delivery_id: int
    claim_token: str
    attempts: int
    subscription: Subscription
    event: StoredEvent


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptResult:
    """What a worker reports after an attempt, and what follows from it.

    `status` is the delivery's new status; `next_due_ns` is set when it stays
    pending. `disable_reason` disables the subscription (e.g. on 410 Gone);
    after a failure, a subscription failing since before `disable_if_failing_since_ns`
    is disabled too.
    """

    delivery_id: int
    claim_token: str
    subscription_id: str
    attempt: Attempt
    status: str
    next_due_ns: int | None
    now_ns: int
    disable_reason: str | None = None
    disable_if_failing_since_ns: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SigningKey:
    """A key of tidings' token issuer. Published from `created_ns`, signs from `signs_from_ns`,
    unpublished at `retires_ns` (None: not yet scheduled). `private_key` is PKCS#8 PEM,
    encrypted when the operator gives a key for it."""

    kid: str
    private_key: bytes = field(repr=False)
    public_jwk: dict[str, Any]
    created_ns: int
    signs_from_ns: int
    retires_ns: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Webhook:
    """An inbound webhook: an address external systems post to, whose mapping turns payloads into events."""

    id: str
    group: str
    name: str
    mapping: dict[str, Any]
    key_hash: str = field(repr=False)
    rate_limit: float = 100.0
    created_ns: int = 0
