"""Validation by the catalog: strict, warn and off; tenant types; the operator's catalog file."""

from __future__ import annotations

import copy
import gc
import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tests import servers
from tests.conftest import Tenant, auth, event, make_token, new_tenant
from tests.servers import Server, StartServer, database_url
from tidings import groups
from tidings.api import create_app
from tidings.catalog import body_errors, builtin_types, chainguard_examples, load_catalog_file
from tidings.cli import app as cli_app
from tidings.config import Settings

tidings_server = servers.tidings_server  # the fixture, usable in this module

BATCH = "application/cloudevents-batch+json"
POLICY_CREATED = "dev.chainguard.api.iam.policy.created.v1"
SUBSCRIPTION_CREATED = "dev.chainguard.api.events.subscription.created.v1"
GROUP_CREATED = "dev.chainguard.api.iam.group.created.v1"
BUILD_FINISHED = "com.acme.build.finished.v1"
DEPLOY_STARTED = "com.acme.deploy.started.v1"
DELETE = object()  # a value meaning "remove this field"

BUILD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["build_id", "ok"],
    "properties": {
        "build_id": {"type": "string", "description": "the build's id"},
        "ok": {"type": "boolean", "description": "whether it passed"},
    },
}
BUILD_EXAMPLE: dict[str, Any] = {
    "actor": {"subject": "ci"},
    "body": {"build_id": "b-1", "ok": True},
}


# --- helpers ---------------------------------------------------------------------------------


def post_event(client: TestClient, token: str, body: Any, content_type: str = "") -> Any:
    """POST /v1/events with `body` as JSON (a batch when it is a list)."""
    media = content_type or (BATCH if isinstance(body, list) else "application/json")
    return client.post(
        "/v1/events",
        content=json.dumps(body).encode(),
        headers={**auth(token), "content-type": media},
    )


def stored_events(client: TestClient, tenant: Tenant) -> list[dict[str, Any]]:
    """Every event of the tenant (at most 100)."""
    response = client.get("/v1/events", headers=auth(tenant.viewer))
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["events"]
    return found


def set_tenant_mode(client: TestClient, tenant: Tenant, mode: str) -> None:
    """PUT /v1/validation as the tenant's owner."""
    response = client.put("/v1/validation", json={"mode": mode}, headers=auth(tenant.owner))
    assert response.status_code == 200, response.text


def set_type_mode(client: TestClient, tenant: Tenant, event_type: str, mode: str) -> None:
    """PATCH /v1/types/{type} with a validation mode, as the tenant's owner."""
    response = client.patch(
        f"/v1/types/{event_type}", json={"validation": mode}, headers=auth(tenant.owner)
    )
    assert response.status_code == 200, response.text


def typed_event(group: str, event_type: str, body: Any, **overrides: Any) -> dict[str, Any]:
    """A structured event of `event_type` with `body` as data.body."""
    attributes: dict[str, Any] = {
        "specversion": "1.0",
        "source": "https://platform.example/things",
        "type": event_type,
        "group": group,
        "data": {"actor": {"subject": "user-1"}, "body": body},
    }
    attributes.update(overrides)
    return attributes


def seed_body(event_type: str) -> dict[str, Any]:
    """A copy of the newest seed example body of a built-in type."""
    body: dict[str, Any] = copy.deepcopy(builtin_types()[event_type].examples[0]["body"])
    return body


def changed(event_type: str, path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    """The seed body of `event_type` with the field at `path` set to `value` (or removed)."""
    body = seed_body(event_type)
    parent: Any = body
    for key in path[:-1]:
        parent = parent[key]
    if value is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return body


def register_build_type(client: TestClient, tenant: Tenant, **extra: Any) -> Any:
    """POST /v1/types for the tenant's build type (schema and example), as its owner."""
    spec = {
        "type": BUILD_FINISHED,
        "description": "a CI build finished",
        "schema": BUILD_SCHEMA,
        "example": BUILD_EXAMPLE,
        **extra,
    }
    return client.post("/v1/types", json=spec, headers=auth(tenant.owner))


# --- every seed example conforms -------------------------------------------------------------


def seed_event(group: str, number: int, example: dict[str, Any]) -> dict[str, Any]:
    """A seed example as an event of its type in `group`."""
    return {
        "specversion": "1.0",
        "id": f"seed-{number}",
        "source": example["ce_source"],
        "type": example["ce_type"],
        "group": group,
        "data": example["data"],
    }


def test_there_are_62_seed_examples() -> None:
    """The two Chainguard documents hold 62 examples of 46 types."""
    assert len(chainguard_examples()) == 62
    assert len({example["ce_type"] for example in chainguard_examples()}) == 46


def test_every_seed_example_is_accepted_unmarked_in_strict(
    client: TestClient, tenant: Tenant
) -> None:
    """Under the tenant's strict mode each of the 62 seed examples is stored, none marked."""
    set_tenant_mode(client, tenant, "strict")
    refused = {}
    for number, example in enumerate(chainguard_examples()):
        response = post_event(client, tenant.producer, seed_event(tenant.root, number, example))
        if response.status_code != 201:
            refused[example["seed"]] = response.text
    assert refused == {}
    stored = stored_events(client, tenant)
    assert len(stored) == 62
    assert [event for event in stored if "validationerror" in event] == []


# --- non-conforming bodies are refused in strict ----------------------------------------------


@dataclass(frozen=True)
class Bad:
    """A built-in type's seed body broken at one field; the pointer and rule it must be refused by."""

    id: str
    type_: str
    path: tuple[str | int, ...]
    value: Any
    pointer: str
    rule: str

    def body(self) -> dict[str, Any]:
        return changed(self.type_, self.path, self.value)


BAD_BODIES = [
    Bad("policy-id-missing", POLICY_CREATED, ("policy", "id"), DELETE, "/policy/id", "required"),
    Bad("sink-number", SUBSCRIPTION_CREATED, ("sink",), 5, "/sink", "type"),
    Bad(
        "subscription-id-missing",
        "dev.chainguard.api.events.subscription.deleted.v1",
        ("id",),
        DELETE,
        "/id",
        "required",
    ),
    Bad(
        "seconds-string",
        "dev.chainguard.api.iam.group_invite.created.v1",
        ("expiration", "seconds"),
        "100",
        "/expiration/seconds",
        "type",
    ),
    Bad("group-name-array", GROUP_CREATED, ("name",), ["x"], "/name", "type"),
    Bad("group-id-null", "dev.chainguard.api.iam.group.deleted.v1", ("id",), None, "/id", "type"),
    Bad(
        "identity-number",
        "dev.chainguard.api.iam.rolebindings.updated.v1",
        ("identity",),
        7,
        "/identity",
        "type",
    ),
    Bad(
        "cluster-id-boolean",
        "dev.chainguard.api.tenant.cluster.deleted.v1",
        ("id",),
        False,
        "/id",
        "type",
    ),
    Bad(
        "pull-status-string",
        "dev.chainguard.registry.pull.v1",
        ("error", "status"),
        "404",
        "/error/status",
        "type",
    ),
    Bad(
        "identity-name-number",
        "dev.chainguard.api.iam.identity.created.v1",
        ("identity", "name"),
        1,
        "/identity/name",
        "type",
    ),
    Bad(
        "identity-provider-string",
        "dev.chainguard.api.iam.identity_providers.created.v1",
        ("identity_provider",),
        "oidc",
        "/identity_provider",
        "type",
    ),
    Bad(
        "document-id-number",
        "dev.chainguard.api.iam.terms.accepted.v1",
        ("document_ids", 0),
        3,
        "/document_ids/0",
        "type",
    ),
    Bad(
        "repo-created-string",
        "dev.chainguard.api.platform.registry.chart.added.v1",
        ("repos", 0, "created"),
        "yes",
        "/repos/0/created",
        "type",
    ),
    Bad(
        "sync-source-number",
        "dev.chainguard.api.platform.registry.repo.created.v1",
        ("sync_config", "source"),
        1,
        "/sync_config/source",
        "type",
    ),
    Bad(
        "tag-digest-object",
        "dev.chainguard.api.platform.registry.tag.created.v1",
        ("digest",),
        {},
        "/digest",
        "type",
    ),
    Bad(
        "binding-mode-string",
        "dev.chainguard.api.policies.bindings.created.v1",
        ("mode",),
        "1",
        "/mode",
        "type",
    ),
    Bad(
        "image-id-missing",
        "dev.chainguard.policy.validation.changed.v1",
        ("image_id",),
        DELETE,
        "/image_id",
        "required",
    ),
    Bad(
        "nanos-fraction",
        "dev.chainguard.api.tenant.cluster.created.v1",
        ("cluster", "activity", "example activity", "last_seen", "nanos"),
        1.5,
        "/cluster/activity/example activity/last_seen/nanos",
        "type",
    ),
    Bad(
        "project-id-number",
        "dev.chainguard.api.iam.account_associations.created.v1",
        ("google", "project_id"),
        12,
        "/google/project_id",
        "type",
    ),
    Bad(
        "batch-binding-id-missing",
        "dev.chainguard.api.iam.rolebindings.created.batch.v1",
        ("role_bindings", 0, "id"),
        DELETE,
        "/role_bindings/0/id",
        "required",
    ),
]


def test_bad_bodies_are_twenty_across_types() -> None:
    """There are 20 hand-made non-conforming bodies, over at least 18 built-in types."""
    assert len(BAD_BODIES) == 20
    assert len({bad.id for bad in BAD_BODIES}) == 20
    assert len({bad.type_ for bad in BAD_BODIES}) >= 18
    assert all(bad.type_ in builtin_types() for bad in BAD_BODIES)


@pytest.mark.parametrize("bad", BAD_BODIES, ids=[bad.id for bad in BAD_BODIES])
def test_strict_refuses_a_bad_body_naming_pointer_and_rule(
    client: TestClient, tenant: Tenant, bad: Bad
) -> None:
    """In strict, a non-conforming body is a 422 naming the field's JSON pointer and the rule."""
    set_tenant_mode(client, tenant, "strict")
    response = post_event(client, tenant.producer, typed_event(tenant.root, bad.type_, bad.body()))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    pointer = "/data/body" + bad.pointer
    assert error["code"] == "unprocessable"
    assert error["message"].startswith(f"{pointer}: ")
    assert f"({bad.rule})" in error["message"]
    assert [(d["pointer"], d["rule"]) for d in error["details"]] == [(pointer, bad.rule)]
    assert stored_events(client, tenant) == []


def test_batch_refusal_names_the_index_of_the_bad_event(client: TestClient, tenant: Tenant) -> None:
    """In a strict batch, one bad event refuses the batch; its details carry its index."""
    set_tenant_mode(client, tenant, "strict")
    batch = [
        typed_event(tenant.root, GROUP_CREATED, seed_body(GROUP_CREATED)),
        typed_event(tenant.root, POLICY_CREATED, changed(POLICY_CREATED, ("policy", "id"), 3)),
        typed_event(tenant.root, GROUP_CREATED, seed_body(GROUP_CREATED)),
    ]
    response = post_event(client, tenant.producer, batch)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["message"].startswith("event 1: /data/body/policy/id: ")
    assert [(d["index"], d["pointer"], d["rule"]) for d in error["details"]] == [
        (1, "/data/body/policy/id", "type")
    ]
    assert stored_events(client, tenant) == []


def test_every_problem_of_a_body_is_listed(client: TestClient, tenant: Tenant) -> None:
    """A body with two faults is refused with both in the details, the message counting them."""
    set_tenant_mode(client, tenant, "strict")
    body = changed(GROUP_CREATED, ("name",), 1)
    body["description"] = 2
    response = post_event(client, tenant.producer, typed_event(tenant.root, GROUP_CREATED, body))
    assert response.status_code == 422
    error = response.json()["error"]
    assert {d["pointer"] for d in error["details"]} == {
        "/data/body/name",
        "/data/body/description",
    }
    assert error["message"].endswith("(and 1 more problem)")


# --- warn and off ----------------------------------------------------------------------------


def test_warn_is_the_default_mode(client: TestClient, tenant: Tenant) -> None:
    """A tenant that set nothing validates in warn: GET /v1/validation and every type say so."""
    assert client.get("/v1/validation", headers=auth(tenant.viewer)).json() == {"mode": "warn"}
    listed = client.get("/v1/types", headers=auth(tenant.viewer)).json()
    assert listed["validation"] == "warn"
    assert {entry["validation"] for entry in listed["types"]} == {"warn"}


def test_warn_stores_a_bad_event_marked_with_the_field(client: TestClient, tenant: Tenant) -> None:
    """In warn, a non-conforming event is stored with a validationerror naming the pointer."""
    set_tenant_mode(client, tenant, "warn")
    body = changed(POLICY_CREATED, ("policy", "name"), 42)
    response = post_event(client, tenant.producer, typed_event(tenant.root, POLICY_CREATED, body))
    assert response.status_code == 201, response.text
    (stored,) = stored_events(client, tenant)
    assert stored["validationerror"].startswith("/data/body/policy/name: ")
    assert "(type)" in stored["validationerror"]
    assert stored["data"]["body"] == body


def test_warn_leaves_a_conforming_event_unmarked(client: TestClient, tenant: Tenant) -> None:
    """In warn, an event whose body conforms carries no validationerror."""
    set_tenant_mode(client, tenant, "warn")
    event = typed_event(tenant.root, POLICY_CREATED, seed_body(POLICY_CREATED))
    assert post_event(client, tenant.producer, event).status_code == 201
    assert "validationerror" not in stored_events(client, tenant)[0]


def test_off_stores_a_bad_event_unmarked(client: TestClient, tenant: Tenant) -> None:
    """In off, a non-conforming event is stored as sent, with no validationerror."""
    set_tenant_mode(client, tenant, "off")
    body = changed(POLICY_CREATED, ("policy",), "not an object")
    response = post_event(client, tenant.producer, typed_event(tenant.root, POLICY_CREATED, body))
    assert response.status_code == 201, response.text
    (stored,) = stored_events(client, tenant)
    assert "validationerror" not in stored
    assert stored["data"]["body"] == body


def test_unknown_type_is_not_validated(client: TestClient, tenant: Tenant) -> None:
    """In strict, an event of a type outside the catalog is stored unmarked."""
    set_tenant_mode(client, tenant, "strict")
    event = typed_event(tenant.root, "dev.example.unknown.v1", {"anything": [1, 2]})
    assert post_event(client, tenant.producer, event).status_code == 201
    assert "validationerror" not in stored_events(client, tenant)[0]


@pytest.mark.parametrize("mode", ["loose", "", "STRICT"])
def test_unknown_tenant_mode_is_refused(client: TestClient, tenant: Tenant, mode: str) -> None:
    """PUT /v1/validation with a mode other than strict, warn or off is a 400 that changes nothing."""
    response = client.put("/v1/validation", json={"mode": mode}, headers=auth(tenant.owner))
    assert response.status_code == 400
    assert client.get("/v1/validation", headers=auth(tenant.viewer)).json() == {"mode": "warn"}


def test_only_a_root_owner_sets_the_tenant_mode(client: TestClient, tenant: Tenant) -> None:
    """A producer, or an owner of a child group, may not set the tenant's mode (403)."""
    child_owner = make_token(client, groups.new_child(tenant.root), "owner")
    for token in (tenant.producer, tenant.viewer, child_owner):
        response = client.put("/v1/validation", json={"mode": "off"}, headers=auth(token))
        assert response.status_code == 403
    assert client.get("/v1/validation", headers=auth(tenant.viewer)).json() == {"mode": "warn"}


# --- per-type modes --------------------------------------------------------------------------


def test_type_strict_overrides_a_warn_tenant(client: TestClient, tenant: Tenant) -> None:
    """A type set to strict refuses its bad events while the tenant's other types still warn."""
    set_type_mode(client, tenant, POLICY_CREATED, "strict")
    bad_policy = typed_event(tenant.root, POLICY_CREATED, changed(POLICY_CREATED, ("policy",), 1))
    bad_group = typed_event(tenant.root, GROUP_CREATED, changed(GROUP_CREATED, ("name",), 1))
    assert post_event(client, tenant.producer, bad_policy).status_code == 422
    assert post_event(client, tenant.producer, bad_group).status_code == 201
    (stored,) = stored_events(client, tenant)
    assert stored["type"] == GROUP_CREATED
    assert "/data/body/name" in stored["validationerror"]


def test_type_off_overrides_a_strict_tenant(client: TestClient, tenant: Tenant) -> None:
    """A type set to off stores its bad events unmarked under a strict tenant."""
    set_tenant_mode(client, tenant, "strict")
    set_type_mode(client, tenant, POLICY_CREATED, "off")
    bad = typed_event(tenant.root, POLICY_CREATED, changed(POLICY_CREATED, ("policy",), 1))
    assert post_event(client, tenant.producer, bad).status_code == 201
    assert "validationerror" not in stored_events(client, tenant)[0]


def test_type_mode_is_shown_by_the_catalog(client: TestClient, tenant: Tenant) -> None:
    """After PATCH, GET /v1/types/{type} and the list show the type's mode."""
    set_type_mode(client, tenant, POLICY_CREATED, "strict")
    one = client.get(f"/v1/types/{POLICY_CREATED}", headers=auth(tenant.viewer)).json()
    assert (one["validation"], one["origin"]) == ("strict", "builtin")
    listed = client.get("/v1/types", headers=auth(tenant.viewer)).json()["types"]
    modes = {entry["type"]: entry["validation"] for entry in listed}
    assert modes[POLICY_CREATED] == "strict"
    assert modes[GROUP_CREATED] == "warn"


def test_type_mode_applies_only_to_its_tenant(client: TestClient, tenant: Tenant) -> None:
    """A type made strict by one tenant still only warns in another."""
    other = new_tenant(client)
    set_type_mode(client, tenant, POLICY_CREATED, "strict")
    bad = changed(POLICY_CREATED, ("policy",), 1)
    response = post_event(client, other.producer, typed_event(other.root, POLICY_CREATED, bad))
    assert response.status_code == 201
    assert "validationerror" in stored_events(client, other)[0]
    seen = client.get(f"/v1/types/{POLICY_CREATED}", headers=auth(other.viewer)).json()
    assert seen["validation"] == "warn"


def test_tenant_mode_applies_only_to_its_tenant(client: TestClient, tenant: Tenant) -> None:
    """A tenant's strict default leaves another tenant's default at warn."""
    other = new_tenant(client)
    set_tenant_mode(client, tenant, "strict")
    bad = changed(POLICY_CREATED, ("policy",), 1)
    response = post_event(client, other.producer, typed_event(other.root, POLICY_CREATED, bad))
    assert response.status_code == 201
    assert client.get("/v1/validation", headers=auth(other.viewer)).json() == {"mode": "warn"}


def test_deleting_a_type_setting_restores_the_tenant_mode(
    client: TestClient, tenant: Tenant
) -> None:
    """DELETE /v1/types/{built-in type} forgets the tenant's mode for it; the default applies."""
    set_type_mode(client, tenant, POLICY_CREATED, "strict")
    response = client.delete(f"/v1/types/{POLICY_CREATED}", headers=auth(tenant.owner))
    assert response.status_code == 204
    bad = typed_event(tenant.root, POLICY_CREATED, changed(POLICY_CREATED, ("policy",), 1))
    assert post_event(client, tenant.producer, bad).status_code == 201
    one = client.get(f"/v1/types/{POLICY_CREATED}", headers=auth(tenant.viewer)).json()
    assert (one["validation"], one["origin"]) == ("warn", "builtin")


@pytest.mark.parametrize("slash", ["%2F", "/"])
def test_a_type_holding_a_slash_is_managed_by_its_name(
    client: TestClient, tenant: Tenant, slash: str
) -> None:
    """CloudEvents types may hold '/': such a type is read, changed and deleted at its URL
    (percent-encoded or not), as any other."""
    spec = {"type": "com.example/build.finished", "description": "d"}
    assert client.post("/v1/types", json=spec, headers=auth(tenant.owner)).status_code == 201
    url = f"/v1/types/com.example{slash}build.finished"
    assert client.get(url, headers=auth(tenant.viewer)).json()["description"] == "d"
    changed_ = client.patch(url, json={"description": "e"}, headers=auth(tenant.owner))
    assert changed_.status_code == 200, changed_.text
    assert client.delete(url, headers=auth(tenant.owner)).status_code == 204
    assert client.get(url, headers=auth(tenant.viewer)).status_code == 404


def test_builtin_type_accepts_only_a_validation_change(client: TestClient, tenant: Tenant) -> None:
    """PATCH of a built-in type's schema or description is a 403; its schema stays."""
    for change in ({"schema": {"type": "object"}}, {"description": "mine"}):
        response = client.patch(
            f"/v1/types/{POLICY_CREATED}", json=change, headers=auth(tenant.owner)
        )
        assert response.status_code == 403
    one = client.get(f"/v1/types/{POLICY_CREATED}", headers=auth(tenant.viewer)).json()
    assert one["schema"] == builtin_types()[POLICY_CREATED].schema


def test_unknown_type_mode_is_refused(client: TestClient, tenant: Tenant) -> None:
    """PATCH with a validation other than strict, warn or off is a 400."""
    response = client.patch(
        f"/v1/types/{POLICY_CREATED}", json={"validation": "hard"}, headers=auth(tenant.owner)
    )
    assert response.status_code == 400


def test_only_a_root_owner_sets_a_type_mode(client: TestClient, tenant: Tenant) -> None:
    """A producer or a child group's owner may not PATCH a type (403)."""
    child_owner = make_token(client, groups.new_child(tenant.root), "owner")
    for token in (tenant.producer, child_owner):
        response = client.patch(
            f"/v1/types/{POLICY_CREATED}", json={"validation": "strict"}, headers=auth(token)
        )
        assert response.status_code == 403
    one = client.get(f"/v1/types/{POLICY_CREATED}", headers=auth(tenant.viewer)).json()
    assert one["validation"] == "warn"


# --- tenant types ----------------------------------------------------------------------------


def test_owner_registers_a_tenant_type(client: TestClient, tenant: Tenant) -> None:
    """POST /v1/types answers 201 with the type: origin tenant, its schema and example."""
    response = register_build_type(client, tenant, validation="strict")
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["type"] == BUILD_FINISHED
    assert created["origin"] == "tenant"
    assert created["schema"] == BUILD_SCHEMA
    assert created["example"] == BUILD_EXAMPLE
    assert created["validation"] == "strict"


def test_tenant_type_is_listed_and_found(client: TestClient, tenant: Tenant) -> None:
    """The new type is in GET /v1/types with origin tenant, and GET /v1/types/{type} finds it."""
    created = register_build_type(client, tenant).json()
    listed = client.get("/v1/types", headers=auth(tenant.viewer)).json()["types"]
    origins = {entry["type"]: entry["origin"] for entry in listed}
    assert origins[BUILD_FINISHED] == "tenant"
    assert len(listed) == 47
    one = client.get(f"/v1/types/{BUILD_FINISHED}", headers=auth(tenant.viewer))
    assert one.status_code == 200
    assert one.json() == created


def test_tenant_type_is_enforced(client: TestClient, tenant: Tenant) -> None:
    """A strict tenant type refuses a body missing a required field, naming it, and takes a good one."""
    register_build_type(client, tenant, validation="strict")
    bad = typed_event(tenant.root, BUILD_FINISHED, {"build_id": "b-2"})
    response = post_event(client, tenant.producer, bad)
    assert response.status_code == 422
    assert response.json()["error"]["message"].startswith("/data/body/ok: ")
    good = typed_event(tenant.root, BUILD_FINISHED, {"build_id": "b-2", "ok": False})
    assert post_event(client, tenant.producer, good).status_code == 201
    assert [event["data"]["body"] for event in stored_events(client, tenant)] == [
        {"build_id": "b-2", "ok": False}
    ]


def test_tenant_type_is_unknown_to_other_tenants(client: TestClient, tenant: Tenant) -> None:
    """Another tenant neither sees the type nor has its events validated by it."""
    register_build_type(client, tenant, validation="strict")
    other = new_tenant(client)
    assert client.get(f"/v1/types/{BUILD_FINISHED}", headers=auth(other.viewer)).status_code == 404
    event = typed_event(other.root, BUILD_FINISHED, {"build_id": 1})
    assert post_event(client, other.producer, event).status_code == 201
    assert "validationerror" not in stored_events(client, other)[0]


@pytest.mark.parametrize(
    "schema",
    [{"type": "widget"}, {"required": "ok"}, {"properties": {"ok": {"minimum": "zero"}}}],
    ids=["unknown-type", "required-not-array", "minimum-not-number"],
)
def test_invalid_schema_is_a_400(client: TestClient, tenant: Tenant, schema: Any) -> None:
    """A type whose schema is not a valid JSON Schema is refused (400) and not registered."""
    response = register_build_type(client, tenant, schema=schema, example=None)
    assert response.status_code == 400, response.text
    assert "not a valid JSON Schema" in response.json()["error"]["message"]
    assert client.get(f"/v1/types/{BUILD_FINISHED}", headers=auth(tenant.viewer)).status_code == 404


def test_example_not_matching_the_schema_is_a_422(client: TestClient, tenant: Tenant) -> None:
    """A type whose example breaks its own schema is refused (422), naming the field."""
    example = {"actor": {"subject": "ci"}, "body": {"build_id": "b-1", "ok": "yes"}}
    response = register_build_type(client, tenant, example=example)
    assert response.status_code == 422, response.text
    assert "/data/body/ok" in response.json()["error"]["message"]
    assert client.get(f"/v1/types/{BUILD_FINISHED}", headers=auth(tenant.viewer)).status_code == 404


@pytest.mark.parametrize("name", [BUILD_FINISHED, POLICY_CREATED])
def test_existing_type_name_is_a_409(client: TestClient, tenant: Tenant, name: str) -> None:
    """Registering a name the tenant already knows (its own or built in) is a conflict."""
    assert register_build_type(client, tenant).status_code == 201
    response = register_build_type(client, tenant, type=name)
    assert response.status_code == 409
    one = client.get(f"/v1/types/{name}", headers=auth(tenant.viewer)).json()
    assert one["origin"] == ("tenant" if name == BUILD_FINISHED else "builtin")


def test_only_a_root_owner_registers_types(client: TestClient, tenant: Tenant) -> None:
    """A producer, a viewer, an editor or a child group's owner gets a 403."""
    child_owner = make_token(client, groups.new_child(tenant.root), "owner")
    editor = make_token(client, tenant.root, "editor")
    for token in (tenant.producer, tenant.viewer, editor, child_owner):
        spec = {"type": BUILD_FINISHED, "schema": BUILD_SCHEMA}
        assert client.post("/v1/types", json=spec, headers=auth(token)).status_code == 403
    assert client.get(f"/v1/types/{BUILD_FINISHED}", headers=auth(tenant.viewer)).status_code == 404


def test_patch_changes_a_tenant_types_schema(client: TestClient, tenant: Tenant) -> None:
    """After PATCH of the schema, the new schema is served and enforced."""
    register_build_type(client, tenant, validation="strict", example=None)
    schema = {**BUILD_SCHEMA, "required": ["build_id", "ok", "duration_s"]}
    response = client.patch(
        f"/v1/types/{BUILD_FINISHED}", json={"schema": schema}, headers=auth(tenant.owner)
    )
    assert response.status_code == 200, response.text
    assert response.json()["schema"] == schema
    old_good = typed_event(tenant.root, BUILD_FINISHED, {"build_id": "b", "ok": True})
    refused = post_event(client, tenant.producer, old_good)
    assert refused.status_code == 422
    assert refused.json()["error"]["details"][0]["pointer"] == "/data/body/duration_s"


def test_patch_with_a_schema_the_example_breaks_is_a_422(
    client: TestClient, tenant: Tenant
) -> None:
    """A new schema that the type's example does not match is refused; the old one stays."""
    register_build_type(client, tenant)
    schema = {**BUILD_SCHEMA, "required": ["build_id", "ok", "duration_s"]}
    response = client.patch(
        f"/v1/types/{BUILD_FINISHED}", json={"schema": schema}, headers=auth(tenant.owner)
    )
    assert response.status_code == 422
    one = client.get(f"/v1/types/{BUILD_FINISHED}", headers=auth(tenant.viewer)).json()
    assert one["schema"] == BUILD_SCHEMA


def test_delete_forgets_a_tenant_type(client: TestClient, tenant: Tenant) -> None:
    """DELETE answers 204; the type is then gone and its events are no longer checked."""
    register_build_type(client, tenant, validation="strict")
    response = client.delete(f"/v1/types/{BUILD_FINISHED}", headers=auth(tenant.owner))
    assert response.status_code == 204
    assert client.get(f"/v1/types/{BUILD_FINISHED}", headers=auth(tenant.viewer)).status_code == 404
    event = typed_event(tenant.root, BUILD_FINISHED, {"build_id": 5})
    assert post_event(client, tenant.producer, event).status_code == 201
    again = client.delete(f"/v1/types/{BUILD_FINISHED}", headers=auth(tenant.owner))
    assert again.status_code == 404


# --- the operator's catalog file -------------------------------------------------------------

CATALOG: dict[str, Any] = {
    "validation": "strict",
    "types": [
        {
            "type": DEPLOY_STARTED,
            "description": "a deployment started",
            "schema": {
                "type": "object",
                "required": ["service", "version"],
                "properties": {
                    "service": {"type": "string", "description": "what is deployed"},
                    "version": {"type": "string", "description": "which version"},
                },
            },
            "example": {
                "actor": {"subject": "deployer"},
                "body": {"service": "api", "version": "1.2.3"},
            },
        },
        {"type": "com.acme.note.v1", "description": "a free-form note"},
    ],
}


def write_catalog(tmp_path: Path, kind: str, document: Any = None) -> Path:
    """The catalog document written as a YAML or JSON file."""
    document = CATALOG if document is None else document
    path = tmp_path / f"catalog.{kind}"
    text = yaml.safe_dump(document) if kind == "yaml" else json.dumps(document, indent=2)
    path.write_text(text, "utf-8")
    return path


@contextmanager
def serving_with_catalog(tmp_path: Path, path: Path) -> Iterator[TestClient]:
    """A client of an app whose settings carry the catalog file at `path`."""
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'catalog.db'}", catalog_file=load_catalog_file(path)
    )
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.mark.parametrize("kind", ["yaml", "json"])
def test_catalog_file_types_are_known_to_every_tenant(tmp_path: Path, kind: str) -> None:
    """The file's types are listed for two tenants with origin catalog and the file's mode."""
    with serving_with_catalog(tmp_path, write_catalog(tmp_path, kind)) as client:
        for tenant in (new_tenant(client), new_tenant(client)):
            listed = client.get("/v1/types", headers=auth(tenant.viewer)).json()["types"]
            found = {entry["type"]: entry for entry in listed}
            assert len(found) == 48
            deploy = found[DEPLOY_STARTED]
            assert (deploy["origin"], deploy["validation"]) == ("catalog", "strict")
            assert deploy["description"] == "a deployment started"
            assert deploy["example"] == CATALOG["types"][0]["example"]
            assert found["com.acme.note.v1"]["schema"] is None


def test_catalog_file_type_is_enforced(tmp_path: Path) -> None:
    """A body breaking a catalog type's schema is refused under the file's strict default."""
    with serving_with_catalog(tmp_path, write_catalog(tmp_path, "yaml")) as client:
        tenant = new_tenant(client)
        bad = typed_event(tenant.root, DEPLOY_STARTED, {"service": "api"})
        response = post_event(client, tenant.producer, bad)
        assert response.status_code == 422
        assert response.json()["error"]["details"][0]["pointer"] == "/data/body/version"
        assert stored_events(client, tenant) == []


def test_catalog_file_mode_is_every_tenants_default(tmp_path: Path) -> None:
    """The file's validation is the default mode: a bad built-in body is refused too."""
    with serving_with_catalog(tmp_path, write_catalog(tmp_path, "json")) as client:
        tenant = new_tenant(client)
        assert client.get("/v1/validation", headers=auth(tenant.viewer)).json() == {
            "mode": "strict"
        }
        bad = typed_event(tenant.root, POLICY_CREATED, changed(POLICY_CREATED, ("policy",), 1))
        assert post_event(client, tenant.producer, bad).status_code == 422


def test_tenant_mode_overrides_the_catalog_file_default(tmp_path: Path) -> None:
    """A tenant that sets warn stores (and marks) what the file's strict default would refuse."""
    with serving_with_catalog(tmp_path, write_catalog(tmp_path, "yaml")) as client:
        tenant = new_tenant(client)
        set_tenant_mode(client, tenant, "warn")
        bad = typed_event(tenant.root, DEPLOY_STARTED, {"service": "api"})
        assert post_event(client, tenant.producer, bad).status_code == 201
        assert "/data/body/version" in stored_events(client, tenant)[0]["validationerror"]


def test_catalog_type_name_cannot_be_registered_by_a_tenant(tmp_path: Path) -> None:
    """POST /v1/types with a catalog file type's name is a 409."""
    with serving_with_catalog(tmp_path, write_catalog(tmp_path, "yaml")) as client:
        tenant = new_tenant(client)
        response = client.post(
            "/v1/types", json={"type": DEPLOY_STARTED}, headers=auth(tenant.owner)
        )
        assert response.status_code == 409


def test_catalog_file_is_read_from_the_environment(tmp_path: Path) -> None:
    """Settings.from_env reads TIDINGS_CATALOG into the catalog file's types and mode."""
    path = write_catalog(tmp_path, "yaml")
    settings = Settings.from_env({"TIDINGS_CATALOG": str(path)})
    assert settings.catalog_file is not None
    assert settings.catalog_file.validation == "strict"
    assert sorted(settings.catalog_file.types) == ["com.acme.deploy.started.v1", "com.acme.note.v1"]
    assert settings.catalog_file.types[DEPLOY_STARTED].origin == "catalog"


MALFORMED: dict[str, tuple[str, str]] = {
    "bad-yaml": ("types: [\n  - type: x\n  bad", "not valid YAML or JSON"),
    "not-an-object": ("- type: x\n", "must be an object with a list 'types'"),
    "types-not-a-list": ("types: {type: x}\n", "must be an object with a list 'types'"),
    "type-without-name": ("types:\n  - description: nameless\n", "type must be a non-empty name"),
    "invalid-schema": (
        "types:\n  - type: x.v1\n    schema: {type: widget}\n",
        "x.v1: schema is not a valid JSON Schema",
    ),
    "unknown-mode": ("validation: hard\ntypes: []\n", "validation must be one of"),
    "example-breaks-schema": (
        "types:\n  - type: x.v1\n    schema: {type: object, required: [a]}\n"
        "    example: {actor: {subject: s}, body: {}}\n",
        "x.v1: the example does not match the schema",
    ),
    "misspelt-type-key": (
        "types:\n  - type: q.v1\n    shema: {type: object, required: [a]}\n",
        "type 'q.v1' has unknown keys ['shema']; it may hold ['description', 'example',"
        " 'schema', 'type', 'validation']",
    ),
    "misspelt-file-key": (
        "validaton: strict\ntypes: []\n",
        "the file has unknown keys ['validaton']; it may hold ['types', 'validation']",
    ),
    "type-not-a-mapping": (
        "types: [foo.v1]\n",
        "each of 'types' must be a mapping with 'type', got 'foo.v1'",
    ),
    "type-listed-twice": (
        "types:\n  - type: q.v1\n  - type: q.v1\n    description: again\n",
        "type 'q.v1' is listed twice",
    ),
    "look-around-pattern": (
        "types:\n  - type: x.v1\n    schema: {type: string, pattern: 'a(?=b)'}\n",
        "x.v1: schema: pattern 'a(?=b)' is not supported",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_catalog_file_fails_from_env(tmp_path: Path, case: str) -> None:
    """Settings.from_env fails with a ValueError naming the file and what is wrong."""
    text, expected = MALFORMED[case]
    path = tmp_path / "catalog.yaml"
    path.write_text(text, "utf-8")
    with pytest.raises(ValueError) as raised:
        Settings.from_env({"TIDINGS_CATALOG": str(path)})
    message = str(raised.value)
    assert str(path) in message
    assert expected in message


# --- `tidings types` -------------------------------------------------------------------------


def invoke(env: dict[str, str | None], *args: str) -> tuple[int, str, str]:
    """Run `tidings ARGS` in-process; its exit code, stdout and stderr.

    The API commands leave their HTTP client for the process's exit to close; in-process it
    is collected here at once, its unclosed-socket ResourceWarning ignored.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        result = CliRunner(env={"COLUMNS": "250", **env}).invoke(cli_app, list(args))
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        ran = (result.exit_code, result.stdout, result.stderr)
        del result
        gc.collect()
    return ran


def viewer_on(server: Server) -> str:
    """A viewer token of a new tenant, made by the CLI on the server's database."""
    env: dict[str, str | None] = {
        "TIDINGS_DATABASE_URL": database_url(server.database),
        "TIDINGS_TOKEN": None,
    }
    code, root, _ = invoke(env, "groups", "create", "--name", "acme")
    assert code == 0
    code, token, _ = invoke(env, "tokens", "create", "--group", root.strip(), "--role", "viewer")
    assert code == 0
    return token.strip()


def test_types_cli_lists_origin_and_validation(tidings_server: StartServer, tmp_path: Path) -> None:
    """`tidings types` against a server with TIDINGS_CATALOG shows each type's origin and mode."""
    path = write_catalog(tmp_path, "yaml")
    server = tidings_server(env={"TIDINGS_CATALOG": str(path)})
    token = viewer_on(server)
    code, stdout, stderr = invoke({"TIDINGS_URL": server.url, "TIDINGS_TOKEN": token}, "types")
    assert code == 0, stderr
    cells = [[cell.strip() for cell in line.split("│")[1:-1]] for line in stdout.splitlines()]
    rows = {row[0]: (row[1], row[2], row[3]) for row in cells if row and "." in row[0]}
    assert rows[DEPLOY_STARTED] == ("catalog", "strict", "yes")
    assert rows["com.acme.note.v1"] == ("catalog", "strict", "no")
    assert rows[POLICY_CREATED] == ("builtin", "strict", "yes")
    assert len(rows) == 48


def test_a_backtracking_pattern_cannot_stall_validation(client: TestClient) -> None:
    """Patterns are matched in linear time: `^(a+)+$` against a long near-miss answers at once."""
    tenant = new_tenant(client)
    schema = {"type": "object", "properties": {"x": {"type": "string", "pattern": "^(a+)+$"}}}
    spec = {"type": "dev.example.redos.v1", "schema": schema, "validation": "strict"}
    assert client.post("/v1/types", json=spec, headers=auth(tenant.owner)).status_code == 201
    body = event(
        tenant.root,
        type="dev.example.redos.v1",
        data={"actor": {"subject": "u"}, "body": {"x": "a" * 5000 + "!"}},
    )
    response = client.post("/v1/events", json=body, headers=auth(tenant.producer))
    assert response.status_code == 422
    assert "/data/body/x" in response.json()["error"]["message"]
    assert "(pattern)" in response.json()["error"]["message"]
    assert len(response.json()["error"]["message"]) < 300  # the long string is cut short


@pytest.mark.parametrize(
    ("schema", "pattern"),
    [
        ({"type": "string", "pattern": "^(?=.*[0-9])[a-z0-9]+$"}, "^(?=.*[0-9])[a-z0-9]+$"),
        ({"type": "string", "pattern": "(?<!x)y"}, "(?<!x)y"),
        ({"type": "string", "pattern": "^(a)\\1$"}, "^(a)\\1$"),
        (
            {"type": "object", "patternProperties": {"^(?!tmp_)": {"type": "string"}}},
            "^(?!tmp_)",
        ),
    ],
    ids=["look-ahead", "look-behind", "back-reference", "pattern-properties-look-ahead"],
)
def test_a_pattern_that_needs_backtracking_is_a_400(
    client: TestClient, tenant: Tenant, schema: dict[str, Any], pattern: str
) -> None:
    """Look-arounds and back-references cannot run in linear time: the type is refused (400)."""
    response = register_build_type(client, tenant, schema=schema, example=None)
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert f"pattern {pattern!r} is not supported" in message
    assert client.get(f"/v1/types/{BUILD_FINISHED}", headers=auth(tenant.viewer)).status_code == 404


def test_a_remote_reference_is_a_400_and_not_fetched(client: TestClient, tenant: Tenant) -> None:
    """A `$ref` to another document is refused (400): the service fetches no schema."""
    schema = {"$ref": "http://127.0.0.1:9/schema.json"}
    response = register_build_type(client, tenant, schema=schema, example=None)
    assert response.status_code == 400, response.text
    assert "not a valid JSON Schema" in response.json()["error"]["message"]
    assert "127.0.0.1:9/schema.json" in response.json()["error"]["message"]


def test_a_local_reference_is_followed(client: TestClient, tenant: Tenant) -> None:
    """A `$ref` into the schema's own `$defs` is enforced like the schema it names."""
    schema = {
        "type": "object",
        "properties": {"build_id": {"$ref": "#/$defs/id"}},
        "$defs": {"id": {"type": "string"}},
    }
    assert (
        register_build_type(client, tenant, schema=schema, validation="strict").status_code == 201
    )
    response = post_event(
        client, tenant.producer, typed_event(tenant.root, BUILD_FINISHED, {"build_id": 1})
    )
    assert response.status_code == 422
    assert [(d["pointer"], d["rule"]) for d in response.json()["error"]["details"]] == [
        ("/data/body/build_id", "type")
    ]


def test_body_errors_name_pointer_rule_and_message() -> None:
    """Errors come sorted by where they are, pointers escaped, a required member named itself."""
    schema = {
        "type": "object",
        "required": ["a/b~c"],
        "properties": {
            "list": {"type": "array", "items": {"type": "integer"}},
            "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
            "closed": {"properties": {"a": {}}, "additionalProperties": False},
            "empty": {"type": "object", "additionalProperties": False},
            "never": False,
        },
    }
    body = {
        "list": [1, "two", 3, "four"],
        "code": "abc",
        "closed": {"a": 0, "x": 1},
        "empty": {"y": 2},
        "never": 0,
    }
    errors = body_errors(schema, body)
    assert [(e["pointer"], e["rule"]) for e in errors] == [
        ("/data/body/a~1b~0c", "required"),
        ("/data/body/closed", "additionalProperties"),
        ("/data/body/code", "pattern"),
        ("/data/body/empty", "additionalProperties"),
        ("/data/body/list/1", "type"),
        ("/data/body/list/3", "type"),
        ("/data/body/never", "false"),
    ]
    for error in errors:
        assert error["message"].startswith(error["pointer"] + ": ")
        assert error["message"].endswith(f" ({error['rule']})")
    assert "'x'" in errors[1]["message"]
    assert "abc" in errors[2]["message"]
    assert "^[A-Z]{3}$" in errors[2]["message"]
    fixed = {**body, "a/b~c": 1, "list": [], "code": "ABC", "closed": {}, "empty": {}}
    assert body_errors(schema, fixed) == [
        {
            "pointer": "/data/body/never",
            "rule": "false",
            "message": "/data/body/never: False schema does not allow 0 (false)",
        }
    ]
    assert body_errors(schema, {"a/b~c": None}) == []
