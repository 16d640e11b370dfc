"""Settings, read once from `TIDINGS_*` environment variables at the edge."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_DATABASE_URL = "sqlite:///tidings.db"


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything tidings can be told; each field names its variable."""

    database_url: str = DEFAULT_DATABASE_URL  # TIDINGS_DATABASE_URL
    sqlite_synchronous: str = "FULL"  # TIDINGS_SQLITE_SYNCHRONOUS: FULL or NORMAL
    max_event_bytes: int = 1 << 20  # a single event
    max_batch_bytes: int = 16 << 20  # a batch request
    max_batch_events: int = 1000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from the environment (or a given mapping)."""
        env = os.environ if env is None else env
        synchronous = env.get("TIDINGS_SQLITE_SYNCHRONOUS", "FULL").upper()
        if synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError("TIDINGS_SQLITE_SYNCHRONOUS must be FULL, NORMAL or EXTRA")
        return cls(
            database_url=env.get("TIDINGS_DATABASE_URL") or DEFAULT_DATABASE_URL,
            sqlite_synchronous=synchronous,
        )
