"""The storage interface every backend implements.

A backend owns its SQL and its concurrency. Writes that must be durable
(`ingest`) return only once committed to disk. Positions (the ingest order)
ascend in commit order as readers see them: a reader paging by position never
passes an event that is still to commit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from tidings.model import EventInput, EventQuery, Group, Ingested, StoredEvent, Token


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
    async def find_events(
        self, scope: str, event_id: str, source: str | None, limit: int
    ) -> list[StoredEvent]:
        """Events in the subtree of `scope` with this CloudEvents id (and source)."""

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
