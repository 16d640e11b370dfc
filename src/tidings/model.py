"""The records tidings stores: events, groups and tokens, as frozen dataclasses."""

from __future__ import annotations

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

    def to_json(self) -> str:
        """The event as CloudEvents JSON (structured mode)."""
        return f'{self.attributes[:-1]},"data":{self.data}}}'


@dataclass(frozen=True, slots=True, kw_only=True)
class Ingested:
    """The outcome of ingesting one event: the stored event, and whether it is new."""

    event: StoredEvent
    created: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class EventQuery:
    """What to list: a visible subtree, filters, and where to start.

    `scope` is the group whose subtree is searched; the caller has checked it
    lies within the token's group. `after` is a position from a cursor: in
    ascending order the page starts above it, in descending order below it.
    """

    scope: str
    types: tuple[str, ...] = ()
    type_prefixes: tuple[str, ...] = ()
    source: str | None = None
    subject: str | None = None
    subject_prefix: str | None = None
    actor: str | None = None
    since_ns: int | None = None
    until_ns: int | None = None
    after: int | None = None
    descending: bool = False
    limit: int = 100


ROLES = ("viewer", "producer", "editor", "owner")


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
