"""Databases for tests, on both backends: an SQLite file, or a fresh PostgreSQL schema.

Every test that touches storage runs twice, once per backend. PostgreSQL comes
from `TIDINGS_TEST_DATABASE_URL` (default: the local server's `test` database);
each test session creates a database of its own and drops it at the end, and
each test gets a fresh schema in it. Where no PostgreSQL answers, its tests
are skipped with the reason, except in CI (`CI=true`), where they fail.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from tidings.storage.migrations import migration_files
from tidings.storage.sqlite import SQLiteStorage

BACKENDS = ("sqlite", "postgres")
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A database of this test session on the PostgreSQL server; dropped at the end."""
    admin_url = os.environ.get("TIDINGS_TEST_DATABASE_URL", DEFAULT_POSTGRES)
    name = f"tidings_test_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at {admin_url} is required in CI: {exc}")
        pytest.skip(f"no PostgreSQL at {admin_url} ({exc}); set TIDINGS_TEST_DATABASE_URL")
    try:
        yield _with_database(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def schema_url(server_url: str, schema: str) -> str:
    """The URL of a schema: it goes first on the search path. Tests need no fsync (they do not
    check what survives a crash of the machine), so commits skip it."""
    separator = "&" if "?" in server_url else "?"
    return f"{server_url}{separator}options=-csearch_path%3D{schema}%20-csynchronous_commit%3Doff"


def new_schema(server_url: str) -> str:
    """A new, empty schema in the session's database; returns its URL."""
    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return schema_url(server_url, schema)


# Every table of the schema, children before the tables they refer to.
_TABLES = (
    "delivery_attempts",
    "deliveries",
    "subscriptions",
    "event_scopes",
    "events",
    "event_ids",
    "tokens",
    "groups",
    "settings",
    "secrets",
    "signing_keys",
    "event_types",
    "webhooks",
)


class SchemaPool:
    """Migrated schemas reused from test to test, emptied in between: migrating a schema and
    making its partitions costs far more than emptying its tables."""

    def __init__(self, server_url: str):
        self.server_url = server_url
        self.schemas: list[str] = []

    def take(self, index: int) -> str:
        """The `index`-th schema of a test, empty (made and migrated on first use)."""
        if index == len(self.schemas):
            url = new_schema(self.server_url)
            asyncio.run(_migrate(url))
            self.schemas.append(url)
            return url
        url = self.schemas[index]
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '10s'")
            # DELETE, not TRUNCATE: a test leaves few rows, and TRUNCATE makes new files for each table.
            conn.execute("; ".join(f"DELETE FROM {table}" for table in _TABLES))
            conn.execute("ALTER SEQUENCE events_seq RESTART")
            # A test may have made the schema look unmigrated: put the record right.
            conn.execute("UPDATE schema_migrations SET name = replace(name, '-forgotten', '')")
        return url


async def postgres_migrated_before(url: str, migration: str) -> None:
    """The schema at `url` as an earlier version left it: every migration before the one whose
    name starts with `migration`."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(
            "CREATE TABLE schema_migrations (name text PRIMARY KEY, applied_ns bigint NOT NULL)"
        )
        for name, script in migration_files("postgres"):
            if name.startswith(migration):
                break
            await conn.execute(script.encode())
            await conn.execute(
                "INSERT INTO schema_migrations VALUES (%s, %s)", (name, time.time_ns())
            )


async def _migrate(url: str) -> None:
    from tidings.storage.postgres import PostgresStorage

    storage = PostgresStorage(url, min_size=1, max_size=2)
    await storage.open()
    await storage.close()


@pytest.fixture(scope="session")
def schema_pool(postgres_server: str) -> SchemaPool:
    """The session's reusable PostgreSQL schemas."""
    return SchemaPool(postgres_server)


MakeDatabase = Callable[[], str]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The storage backend under test."""
    backend_name: str = request.param
    return backend_name


@pytest.fixture
def make_database(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> MakeDatabase:
    """A factory of fresh, empty databases (URLs) of the backend under test."""
    made = 0

    def make() -> str:
        nonlocal made
        made += 1
        if backend == "sqlite":
            return f"sqlite:///{tmp_path / f'tidings-{made}.db'}"
        pool: SchemaPool = request.getfixturevalue("schema_pool")
        return pool.take(made - 1)

    return make


@pytest.fixture
def database_url(make_database: MakeDatabase) -> str:
    """A fresh database of the backend under test."""
    return make_database()


def query(database_url: str, sql: str) -> list[tuple[object, ...]]:
    """Rows of a plain query on a test database of either backend (to look behind the API)."""
    if database_url.startswith("sqlite"):
        import sqlite3
        from contextlib import closing

        with closing(sqlite3.connect(database_url.removeprefix("sqlite:///"))) as conn:
            return [tuple(row) for row in conn.execute(sql).fetchall()]
    with psycopg.connect(database_url, autocommit=True) as conn:
        return [tuple(row) for row in conn.execute(sql.encode()).fetchall()]


@pytest.fixture
async def sqlite_storage(tmp_path: Path) -> AsyncIterator[SQLiteStorage]:
    """A real SQLite file, migrated and open (for tests of the SQLite backend alone)."""
    store = SQLiteStorage(str(tmp_path / "tidings.db"))
    await store.open()
    yield store
    await store.close()
