"""`/v1/types`: the built-in catalog of the 46 Chainguard event types."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.conftest import Tenant, auth
from tidings.catalog import chainguard_examples

SUBSCRIPTION_CREATED = "dev.chainguard.api.events.subscription.created.v1"


def list_types(client: TestClient, tenant: Tenant) -> list[dict[str, Any]]:
    response = client.get("/v1/types", headers=auth(tenant.viewer))
    assert response.status_code == 200
    types: list[dict[str, Any]] = response.json()["types"]
    return types


def test_catalog_lists_exactly_the_46_builtin_types(client: TestClient, tenant: Tenant) -> None:
    """The list holds each type of the Chainguard examples once, and nothing else."""
    names = [entry["type"] for entry in list_types(client, tenant)]
    assert len(names) == 46
    assert len(set(names)) == 46
    assert set(names) == {example["ce_type"] for example in chainguard_examples()}


def test_every_type_has_a_description_and_an_example(client: TestClient, tenant: Tenant) -> None:
    """Each entry carries a non-empty description and an example event data {actor, body}."""
    for entry in list_types(client, tenant):
        assert isinstance(entry["description"], str)
        assert entry["description"].strip(), entry["type"]
        example = entry["example"]
        assert set(example) == {"actor", "body"}, entry["type"]
        assert example["actor"]["subject"]
        assert example == entry["examples"][0]


def test_sixteen_types_have_two_examples(client: TestClient, tenant: Tenant) -> None:
    """16 types appear in both Chainguard documents and carry both examples; the rest carry one."""
    counts = [len(entry["examples"]) for entry in list_types(client, tenant)]
    assert counts.count(2) == 16
    assert counts.count(1) == 30
    assert sum(counts) == len(chainguard_examples())


def test_one_type_is_found_by_name(client: TestClient, tenant: Tenant) -> None:
    """GET /v1/types/{type} answers the same entry as the list."""
    response = client.get(f"/v1/types/{SUBSCRIPTION_CREATED}", headers=auth(tenant.viewer))
    assert response.status_code == 200
    listed = {entry["type"]: entry for entry in list_types(client, tenant)}
    assert response.json() == listed[SUBSCRIPTION_CREATED]


def test_unknown_type_is_a_404(client: TestClient, tenant: Tenant) -> None:
    """A type outside the catalog is not found, in tidings' error format."""
    response = client.get("/v1/types/dev.example.nothing.v1", headers=auth(tenant.viewer))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_catalog_needs_a_token(client: TestClient) -> None:
    """The catalog is served to authenticated callers only."""
    assert client.get("/v1/types").status_code == 401
    assert client.get(f"/v1/types/{SUBSCRIPTION_CREATED}").status_code == 401
