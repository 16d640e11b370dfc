"""Fixtures: a real SQLite file per test, the ASGI app, tenants and tokens."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests import databases
from tests.receivers import receivers  # noqa: F401 (a fixture for every test module)
from tidings import groups
from tidings.api import create_app
from tidings.config import Settings
from tidings.storage.base import Storage
from tidings.storage.migrations import migration_files
from tidings.storage.sqlite import split_statements
from tidings.tokens import new_token

TEST_TYPE = "dev.example.widget.created.v1"


# The database fixtures, for every test module.
backend = databases.backend
make_database = databases.make_database
database_url = databases.database_url
postgres_server = databases.postgres_server
schema_pool = databases.schema_pool


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Settings on a fresh database of the backend under test."""
    return Settings(database_url=database_url)


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    """The tidings ASGI app."""
    return create_app(settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    """A client of the running app (its lifespan started)."""
    with TestClient(app) as test_client:
        yield test_client


def storage_of(client: TestClient) -> Storage:
    """The storage behind the app under test."""
    app: Any = client.app
    storage: Storage = app.state.tidings.storage
    return storage


def make_token(client: TestClient, group: str, *roles: str, subject: str | None = None) -> str:
    """A token for `group` with `roles`, created straight in the database."""
    token, secret = new_token(group, list(roles), None, subject, None, time.time_ns())
    assert client.portal is not None
    client.portal.call(storage_of(client).create_token, token)
    return secret


def auth(token: str) -> dict[str, str]:
    """The Authorization header for `token`."""
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Tenant:
    """A root group and owner/producer/viewer tokens on it."""

    root: str
    owner: str
    producer: str
    viewer: str


def new_tenant(client: TestClient) -> Tenant:
    """A fresh root group with an owner, a producer and a viewer token."""
    root = groups.new_root()
    return Tenant(
        root=root,
        owner=make_token(client, root, "owner"),
        producer=make_token(client, root, "producer"),
        viewer=make_token(client, root, "viewer"),
    )


@pytest.fixture
def tenant(client: TestClient) -> Tenant:
    """A fresh tenant with one token per role."""
    return new_tenant(client)


def event(group: str, **overrides: Any) -> dict[str, Any]:
    """A valid structured-mode event in `group`; `overrides` replace attributes."""
    body: dict[str, Any] = {
        "specversion": "1.0",
        "source": "https://platform.example/widgets",
        "type": TEST_TYPE,
        "subject": f"{group}/0123456789abcdef",
        "group": group,
        "data": {"actor": {"subject": "user-1"}, "body": {"name": "w1"}},
    }
    body.update(overrides)
    return body


def migrated_before(path: str, migration: str) -> sqlite3.Connection:
    """A new SQLite file migrated as an earlier version left it: every migration before the
    one whose name starts with `migration`. Answers an autocommit connection to it."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE schema_migrations (name TEXT PRIMARY KEY, applied_ns INTEGER)")
    for name, sql in migration_files("sqlite"):
        if name.startswith(migration):
            break
        for statement in split_statements(sql):
            conn.execute(statement)
        conn.execute("INSERT INTO schema_migrations VALUES (?, ?)", (name, time.time_ns()))
    return conn
