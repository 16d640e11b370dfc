"""Operability: liveness, readiness, Prometheus metrics and the OpenAPI document."""

from __future__ import annotations

import re
import sqlite3
from typing import Any

import psycopg
from fastapi.testclient import TestClient

from tests.conftest import TEST_TYPE, Tenant, auth, event
from tidings.catalog import builtin_types
from tidings.storage import sqlite_path

CATALOG_TYPE = next(iter(builtin_types()))


def ingested(client: TestClient, label: str) -> float | None:
    """The value of tidings_events_ingested_total for a type label, or None if absent."""
    text = client.get("/metrics").text
    match = re.search(
        rf'^tidings_events_ingested_total\{{type="{re.escape(label)}"\}} (\S+)$', text, re.M
    )
    return None if match is None else float(match.group(1))


def test_healthz_answers_ok(client: TestClient) -> None:
    """The liveness probe answers 200 without a token."""
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_answers_ready_once_migrated(client: TestClient) -> None:
    """The readiness probe answers 200 when the database is migrated."""
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


def test_readyz_answers_503_when_a_migration_is_missing(client: TestClient, app: Any) -> None:
    """With a migration unrecorded the service is not ready, in tidings' error format."""
    url = app.state.tidings.settings.database_url
    forget = "DELETE FROM schema_migrations WHERE name = (SELECT max(name) FROM schema_migrations)"
    if url.startswith("sqlite"):
        with sqlite3.connect(sqlite_path(url)) as conn:
            conn.execute(forget)
        conn.close()
    else:
        with psycopg.connect(url, autocommit=True) as pg:
            pg.execute(
                forget.replace("DELETE FROM", "UPDATE").replace(
                    " WHERE", " SET name = name || '-forgotten' WHERE"
                )
            )
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "not_ready"


def test_metrics_count_a_catalog_type_by_name(client: TestClient, tenant: Tenant) -> None:
    """Ingesting an event of a catalog type counts it under its own type label."""
    body = event(tenant.root, type=CATALOG_TYPE)
    assert client.post("/v1/events", json=body, headers=auth(tenant.producer)).status_code == 201
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert ingested(client, CATALOG_TYPE) == 1.0
    assert ingested(client, "other") is None


def test_metrics_count_an_unknown_type_as_other(client: TestClient, tenant: Tenant) -> None:
    """A type outside the catalog is counted as 'other', never under its own name."""
    body = event(tenant.root, type=TEST_TYPE)
    assert client.post("/v1/events", json=body, headers=auth(tenant.producer)).status_code == 201
    assert ingested(client, "other") == 1.0
    assert TEST_TYPE not in client.get("/metrics").text


def test_metrics_count_only_newly_stored_events(client: TestClient, tenant: Tenant) -> None:
    """A repeated event is stored once and counted once."""
    body = event(tenant.root, type=CATALOG_TYPE, id="same")
    for _ in range(3):
        client.post("/v1/events", json=body, headers=auth(tenant.producer))
    assert ingested(client, CATALOG_TYPE) == 1.0


def test_openapi_lists_the_api_paths(client: TestClient) -> None:
    """The OpenAPI document describes the events, tokens, groups and types paths."""
    response = client.get("/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in ("/v1/events", "/v1/events/{event_id}", "/v1/tokens", "/v1/groups", "/v1/types"):
        assert path in paths, path
    assert "post" in paths["/v1/events"]
    assert "get" in paths["/v1/events"]


def test_openapi_documents_the_list_parameters(client: TestClient) -> None:
    """GET /v1/events documents limit (1..100), cursor, order (asc/desc) and a repeatable type."""
    document = client.get("/openapi.json").json()
    parameters = {p["name"]: p for p in document["paths"]["/v1/events"]["get"]["parameters"]}
    assert {"limit", "cursor", "order", "type"} <= set(parameters)
    assert all(parameters[name]["in"] == "query" for name in ("limit", "cursor", "order", "type"))
    limit = parameters["limit"]["schema"]
    assert (limit["minimum"], limit["maximum"], limit["default"]) == (1, 100, 100)
    assert set(_schema_values(parameters["order"]["schema"], "enum")) == {"asc", "desc"}
    assert "array" in _schema_values(parameters["type"]["schema"], "type")


def _schema_values(schema: dict[str, Any], key: str) -> list[Any]:
    """Every value under `key` in a schema and its anyOf branches."""
    values: list[Any] = []
    for branch in [schema, *schema.get("anyOf", [])]:
        value = branch.get(key)
        if isinstance(value, list):
            values.extend(value)
        elif value is not None:
            values.append(value)
    return values


def test_openapi_documents_errors_as_they_are_answered(client: TestClient) -> None:
    """Validation errors are documented as 400 in tidings' error format, never as FastAPI's 422."""
    document = client.get("/openapi.json").json()
    listing = document["paths"]["/v1/events"]["get"]["responses"]
    assert "422" not in listing
    assert listing["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }
    assert "HTTPValidationError" not in document["components"]["schemas"]
    assert listing["503"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }
    assert client.get("/v1/events", params={"limit": 1000}).status_code in (400, 401)
