"""Storage: one interface, chosen by `TIDINGS_DATABASE_URL`."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from tidings.storage.base import Storage

if TYPE_CHECKING:
    from tidings.config import Settings

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def open_storage(
    url: str, sqlite_synchronous: str = "FULL", pool_min: int = 2, pool_max: int = 16
) -> Storage:
    """The storage for a database URL: `postgresql://...`, `sqlite:///path`, or a bare path;
    ValueError for a URL of another scheme (a bare path never holds "://")."""
    scheme = _SCHEME.match(url)
    if scheme is not None and scheme[1] not in ("postgres", "postgresql", "sqlite"):
        raise ValueError(
            f"TIDINGS_DATABASE_URL: tidings stores in SQLite or PostgreSQL, not {scheme[1]!r};"
            " give sqlite:///path or postgresql://user@host/database"
        )
    if url.startswith(("postgres://", "postgresql://")):
        from tidings.storage.postgres import PostgresStorage

        return PostgresStorage(url, min_size=pool_min, max_size=max(pool_min, pool_max))
    from tidings.storage.sqlite import SQLiteStorage

    return SQLiteStorage(sqlite_path(url), sqlite_synchronous)


def storage_for(settings: Settings) -> Storage:
    """The storage the settings name."""
    return open_storage(
        settings.database_url, settings.sqlite_synchronous, settings.pool_min, settings.pool_max
    )


def sqlite_path(url: str) -> str:
    """The file path of an SQLite URL: `sqlite:///relative.db`, `sqlite:////abs.db`, or a path."""
    if url.startswith("sqlite://"):
        return url.removeprefix("sqlite://").removeprefix("/") or "tidings.db"
    return url


__all__ = ["Storage", "open_storage", "sqlite_path", "storage_for"]
