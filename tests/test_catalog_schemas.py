"""`data/chainguard-schemas.json`: a JSON Schema for the `data.body` of each built-in type."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from tidings.catalog import builtin_types, chainguard_examples

Path = tuple[str | int, ...]

NAMESPACE = "dev.chainguard.admission.namespace.v1"
ADMISSION = "dev.chainguard.admission.v1"
VALIDATION = "dev.chainguard.policy.validation.changed.v1"
REGISTERED = "dev.chainguard.api.auth.registered.v1"
ASSOCIATION_CREATED = "dev.chainguard.api.iam.account_associations.created.v1"
INVITE_CREATED = "dev.chainguard.api.iam.group_invite.created.v1"
POLICY_CREATED = "dev.chainguard.api.iam.policy.created.v1"
ROLEBINDING_CREATED = "dev.chainguard.api.iam.rolebindings.created.v1"
ROLEBINDING_BATCH = "dev.chainguard.api.iam.rolebindings.created.batch.v1"
CLUSTER_CREATED = "dev.chainguard.api.tenant.cluster.created.v1"
CLUSTER_UPDATED = "dev.chainguard.api.tenant.cluster.updated.v1"
PULL = "dev.chainguard.registry.pull.v1"
PUSH = "dev.chainguard.registry.push.v1"
IDP_UPDATED = "dev.chainguard.api.iam.identity_providers.updated.v1"
TERMS = "dev.chainguard.api.iam.terms.accepted.v1"
CHART_ADDED = "dev.chainguard.api.platform.registry.chart.added.v1"
BINDING_CREATED = "dev.chainguard.api.policies.bindings.created.v1"

POLICY = "name of the evaluated policy"
ACTIVITY = "example activity"


@cache
def schemas() -> dict[str, dict[str, Any]]:
    text = resources.files("tidings.data").joinpath("chainguard-schemas.json").read_text("utf-8")
    loaded: dict[str, dict[str, Any]] = json.loads(text)["schemas"]
    return loaded


def validator(type_: str) -> Draft202012Validator:
    return Draft202012Validator(
        schemas()[type_], format_checker=Draft202012Validator.FORMAT_CHECKER
    )


def seed_body(type_: str) -> dict[str, Any]:
    """A deep copy of the first (newest) seed example body of a type."""
    body: dict[str, Any] = copy.deepcopy(builtin_types()[type_].examples[0]["body"])
    return body


def with_value(type_: str, path: Path, value: Any) -> dict[str, Any]:
    """The type's seed body with the field at `path` set to `value`."""
    body = seed_body(type_)
    parent: Any = body
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return body


def without(type_: str, path: Path) -> dict[str, Any]:
    """The type's seed body with the field at `path` removed."""
    body = seed_body(type_)
    parent: Any = body
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    return body


def fault_path(error: ValidationError) -> Path:
    """The path of the field at fault: for a missing field, its parent's path plus its name."""
    path: Path = tuple(error.absolute_path)
    if error.validator == "required":
        missing = [name for name in error.validator_value if name not in error.instance]
        return (*path, missing[0])
    return path


def property_schemas(schema: dict[str, Any], at: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every property schema at every level, with a slash path; `*` is a map value or item."""
    for name, sub in schema.get("properties", {}).items():
        yield f"{at}/{name}", sub
        yield from property_schemas(sub, f"{at}/{name}")
    if isinstance(schema.get("additionalProperties"), dict):
        yield f"{at}/*", schema["additionalProperties"]
        yield from property_schemas(schema["additionalProperties"], f"{at}/*")
    if isinstance(schema.get("items"), dict):
        yield f"{at}/*", schema["items"]
        yield from property_schemas(schema["items"], f"{at}/*")


def test_schemas_cover_exactly_the_46_builtin_types() -> None:
    """The file holds one schema per built-in type, and nothing else."""
    assert len(schemas()) == 46
    assert set(schemas()) == set(builtin_types())


@pytest.mark.parametrize("type_", sorted(builtin_types()))
def test_schema_is_a_valid_draft_2020_12_schema(type_: str) -> None:
    """Each schema passes the draft 2020-12 metaschema and declares that draft."""
    Draft202012Validator.check_schema(schemas()[type_])
    assert schemas()[type_]["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize(
    "example",
    chainguard_examples(),
    ids=[f"{e['ce_type']}-{e['seed'][:3]}-{e['method']}" for e in chainguard_examples()],
)
def test_seed_example_body_validates(example: dict[str, Any]) -> None:
    """Every one of the 62 seed example bodies is valid under its type's schema."""
    errors = list(validator(example["ce_type"]).iter_errors(example["data"]["body"]))
    assert errors == []


def test_every_property_has_a_description() -> None:
    """Every property, map value and array item at every level carries a non-empty description."""
    seen = set()
    missing = []
    for type_, schema in schemas().items():
        assert schema["description"].strip(), type_
        for at, sub in property_schemas(schema):
            seen.add((type_, at))
            description = sub.get("description")
            if not isinstance(description, str) or not description.strip():
                missing.append((type_, at))
    assert missing == []
    assert (CLUSTER_CREATED, "/cluster/activity/*/last_seen/nanos") in seen
    assert (ROLEBINDING_BATCH, "/role_bindings/*/id") in seen


@pytest.mark.parametrize("type_", sorted(builtin_types()))
def test_top_level_body_is_open_to_new_fields(type_: str) -> None:
    """A producer may add a field the schema does not list: the body still validates."""
    assert schemas()[type_]["additionalProperties"] is True
    body = {**seed_body(type_), "added_by_producer": {"any": ["shape", 1]}}
    assert list(validator(type_).iter_errors(body)) == []


@pytest.mark.parametrize(
    ("type_", "path", "value"),
    [
        (VALIDATION, ("policies", POLICY, "change"), ""),
        (VALIDATION, ("policies", POLICY, "change"), "new"),
        (VALIDATION, ("policies", POLICY, "change"), "degraded"),
        (VALIDATION, ("policies", POLICY, "change"), "improved"),
        (PULL, ("method",), "HEAD"),
        (PULL, ("method",), "GET"),
    ],
)
def test_documented_enum_value_is_accepted(type_: str, path: Path, value: str) -> None:
    """Each value a document lists for an enum field validates."""
    assert list(validator(type_).iter_errors(with_value(type_, path, value))) == []


@dataclass(frozen=True)
class Bad:
    """A non-conforming body; its one error's keyword, field at fault and JSON path."""

    id: str
    type_: str
    body: dict[str, Any]
    fault: Path
    keyword: str
    json_path: str


BAD_BODIES = [
    Bad("id-not-string", NAMESPACE, with_value(NAMESPACE, ("id",), 42), ("id",), "type", "$.id"),
    Bad(
        "request-array",
        ADMISSION,
        with_value(ADMISSION, ("request",), ["x"]),
        ("request",),
        "type",
        "$.request",
    ),
    Bad(
        "change-outside-enum",
        VALIDATION,
        with_value(VALIDATION, ("policies", POLICY, "change"), "worse"),
        ("policies", POLICY, "change"),
        "anyOf",
        "$.policies['name of the evaluated policy'].change",
    ),
    Bad(
        "valid-as-string",
        VALIDATION,
        with_value(VALIDATION, ("policies", POLICY, "valid"), "false"),
        ("policies", POLICY, "valid"),
        "type",
        "$.policies['name of the evaluated policy'].valid",
    ),
    Bad(
        "policies-not-object",
        VALIDATION,
        with_value(VALIDATION, ("policies",), [POLICY]),
        ("policies",),
        "type",
        "$.policies",
    ),
    Bad(
        "image-id-missing",
        VALIDATION,
        without(VALIDATION, ("image_id",)),
        ("image_id",),
        "required",
        "$",
    ),
    Bad(
        "identity-null",
        REGISTERED,
        with_value(REGISTERED, ("identity",), None),
        ("identity",),
        "type",
        "$.identity",
    ),
    Bad(
        "google-not-object",
        ASSOCIATION_CREATED,
        with_value(ASSOCIATION_CREATED, ("google",), "my-project"),
        ("google",),
        "type",
        "$.google",
    ),
    Bad(
        "seconds-as-string",
        INVITE_CREATED,
        with_value(INVITE_CREATED, ("expiration", "seconds"), "100"),
        ("expiration", "seconds"),
        "type",
        "$.expiration.seconds",
    ),
    Bad(
        "nested-policy-id-missing",
        POLICY_CREATED,
        without(POLICY_CREATED, ("policy", "id")),
        ("policy", "id"),
        "required",
        "$.policy",
    ),
    Bad(
        "role-binding-not-object",
        ROLEBINDING_CREATED,
        with_value(ROLEBINDING_CREATED, ("role_binding",), "UID of this role binding"),
        ("role_binding",),
        "type",
        "$.role_binding",
    ),
    Bad(
        "nanos-not-integer",
        CLUSTER_CREATED,
        with_value(CLUSTER_CREATED, ("cluster", "activity", ACTIVITY, "last_seen", "nanos"), 1.5),
        ("cluster", "activity", ACTIVITY, "last_seen", "nanos"),
        "type",
        "$.cluster.activity['example activity'].last_seen.nanos",
    ),
    Bad(
        "key-data-not-string",
        CLUSTER_UPDATED,
        with_value(CLUSTER_UPDATED, ("auth_info", "client_key_data"), {"pem": "..."}),
        ("auth_info", "client_key_data"),
        "type",
        "$.auth_info.client_key_data",
    ),
    Bad(
        "method-outside-enum",
        PULL,
        with_value(PULL, ("method",), "POST"),
        ("method",),
        "anyOf",
        "$.method",
    ),
    Bad(
        "status-as-string",
        PUSH,
        with_value(PUSH, ("error", "status"), "500"),
        ("error", "status"),
        "type",
        "$.error.status",
    ),
    Bad(
        "configuration-as-string",
        IDP_UPDATED,
        with_value(IDP_UPDATED, ("Configuration",), "oidc"),
        ("Configuration",),
        "type",
        "$.Configuration",
    ),
    Bad(
        "batch-item-id-missing",
        ROLEBINDING_BATCH,
        with_value(
            ROLEBINDING_BATCH,
            ("role_bindings",),
            [
                *seed_body(ROLEBINDING_BATCH)["role_bindings"],
                {"identity": "UID of the Identity to bind", "role": "UIDP of the Role to bind"},
            ],
        ),
        ("role_bindings", 1, "id"),
        "required",
        "$.role_bindings[1]",
    ),
    Bad(
        "document-ids-not-array",
        TERMS,
        with_value(TERMS, ("document_ids",), "sfdpa.v1"),
        ("document_ids",),
        "type",
        "$.document_ids",
    ),
    Bad(
        "created-as-string",
        CHART_ADDED,
        with_value(CHART_ADDED, ("repos", 0, "created"), "yes"),
        ("repos", 0, "created"),
        "type",
        "$.repos[0].created",
    ),
    Bad(
        "mode-as-string",
        BINDING_CREATED,
        with_value(BINDING_CREATED, ("mode",), "1"),
        ("mode",),
        "type",
        "$.mode",
    ),
]


def test_bad_bodies_are_twenty_across_types() -> None:
    """The non-conforming bodies number 20 and are spread over at least 15 types."""
    assert len(BAD_BODIES) == 20
    assert len({bad.id for bad in BAD_BODIES}) == 20
    assert len({bad.type_ for bad in BAD_BODIES}) >= 15


@pytest.mark.parametrize("bad", BAD_BODIES, ids=[bad.id for bad in BAD_BODIES])
def test_nonconforming_body_is_rejected_naming_the_field(bad: Bad) -> None:
    """A body with one fault fails with exactly one error, whose path names the field at fault."""
    errors = list(validator(bad.type_).iter_errors(bad.body))
    assert len(errors) == 1, [error.message for error in errors]
    (error,) = errors
    assert error.validator == bad.keyword
    assert fault_path(error) == bad.fault
    assert error.json_path == bad.json_path
