"""Storage: one interface, chosen by `TIDINGS_DATABASE_URL`."""

from __future__ import annotations

from tidings.storage.base import Storage


def open_storage(url: str, sqlite_synchronous: str = "FULL") -> Storage:
    """The storage for a database URL (`sqlite:///path` or a bare path)."""
    if url.startswith(("postgres://", "postgresql://")):
        raise NotImplementedError("the PostgreSQL backend is not available yet")
    from tidings.storage.sqlite import SQLiteStorage

    return SQLiteStorage(sqlite_path(url), sqlite_synchronous)


def sqlite_path(url: str) -> str:
    """The file path of an SQLite URL: `sqlite:///relative.db`, `sqlite:////abs.db`, or a path."""
    if url.startswith("sqlite://"):
        return url.removeprefix("sqlite://").removeprefix("/") or "tidings.db"
    return url


__all__ = ["Storage", "open_storage", "sqlite_path"]
