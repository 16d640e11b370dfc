"""`/v1/groups` and `/v1/tokens` over the ASGI app: who may mint, see and revoke what."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import Tenant, auth, event, make_token, storage_of
from tidings import groups
from tidings.timestamps import NS, from_ns
from tidings.tokens import TokenCache, effective_roles

SUID = re.compile(r"[0-9a-f]{16}")


def mint_group(client: TestClient, bearer: str, **body: Any) -> Any:
    return client.post("/v1/groups", json=body, headers=auth(bearer))


def create_token(client: TestClient, bearer: str, **body: Any) -> Any:
    body.setdefault("roles", ["viewer"])
    return client.post("/v1/tokens", json=body, headers=auth(bearer))


def list_tokens(client: TestClient, token: str) -> Any:
    return client.get("/v1/tokens", headers=auth(token))


def can_read(client: TestClient, token: str) -> int:
    return int(client.get("/v1/events", headers=auth(token)).status_code)


def set_clock(client: TestClient, now_ns: int) -> None:
    app: Any = client.app
    app.state.tidings.clock = lambda: now_ns


# --- POST /v1/groups -------------------------------------------------------


def test_owner_mints_a_child_of_its_own_group(client: TestClient, tenant: Tenant) -> None:
    """Without a parent, the child is minted under the token's group and stored."""
    response = mint_group(client, tenant.owner, name="Team A")
    assert response.status_code == 201
    minted = response.json()
    parent, _, suid = minted["path"].rpartition("/")
    assert parent == tenant.root
    assert SUID.fullmatch(suid)
    assert minted["name"] == "Team A"
    assert minted["created_at"].endswith("Z")
    assert client.portal is not None
    stored = client.portal.call(storage_of(client).get_group, minted["path"])
    assert stored is not None
    assert stored.name == "Team A"


def test_owner_mints_under_a_parent_inside_its_subtree(client: TestClient, tenant: Tenant) -> None:
    """A given parent below the token's group receives the new child."""
    parent = mint_group(client, tenant.owner).json()["path"]
    response = mint_group(client, tenant.owner, parent=parent)
    assert response.status_code == 201
    assert response.json()["path"].rpartition("/")[0] == parent


def test_each_minted_group_is_new(client: TestClient, tenant: Tenant) -> None:
    """Minting twice under one parent gives two distinct groups."""
    first = mint_group(client, tenant.owner).json()["path"]
    second = mint_group(client, tenant.owner).json()["path"]
    assert first != second


@pytest.mark.parametrize("where", ["other-tenant", "sibling-prefix", "parent"])
def test_owner_may_not_mint_outside_its_subtree(
    client: TestClient, tenant: Tenant, where: str
) -> None:
    """Another tenant, a sibling sharing a prefix, or the group above are all forbidden."""
    team = f"{tenant.root}/team"
    owner = make_token(client, team, "owner")
    parent = {
        "other-tenant": groups.new_root(),
        "sibling-prefix": f"{tenant.root}/team_b",
        "parent": tenant.root,
    }[where]
    response = mint_group(client, owner, parent=parent)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


@pytest.mark.parametrize("role", ["viewer", "producer", "editor"])
def test_only_an_owner_mints_groups(client: TestClient, tenant: Tenant, role: str) -> None:
    """Viewer, producer and editor tokens may not mint groups."""
    token = make_token(client, tenant.root, role)
    assert mint_group(client, token).status_code == 403


@pytest.mark.parametrize("parent", ["Acme", "a//b", "../x", "/a", "a/", "a%2Fb", "", 7])
def test_malformed_parent_is_a_400(client: TestClient, tenant: Tenant, parent: Any) -> None:
    """A parent that is not a group path is refused as malformed."""
    response = mint_group(client, tenant.owner, parent=parent)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"


def test_unknown_group_fields_are_a_400(client: TestClient, tenant: Tenant) -> None:
    """A request with a field the API does not know is refused, naming it."""
    response = mint_group(client, tenant.owner, path=f"{tenant.root}/mine")
    assert response.status_code == 400
    assert "path" in response.json()["error"]["message"]


def test_no_group_below_the_deepest_level(client: TestClient, tenant: Tenant) -> None:
    """A parent 16 deep has no room for a child."""
    deepest = "/".join([tenant.root, *(["s"] * 15)])
    assert mint_group(client, tenant.owner, parent=deepest).status_code == 400


def test_minting_needs_a_token(client: TestClient) -> None:
    """Without a bearer token the answer is 401."""
    assert client.post("/v1/groups", json={}).status_code == 401


# --- POST /v1/tokens -------------------------------------------------------


def test_owner_creates_a_working_token(client: TestClient, tenant: Tenant) -> None:
    """The answer is 201 with the token's record and its secret, which then authenticates."""
    response = create_token(client, tenant.owner, roles=["viewer"], name="ci", subject="bot-1")
    assert response.status_code == 201
    created = response.json()
    assert created["token"].startswith("tdg_")
    assert created["id"].startswith("tok_")
    assert (created["group"], created["roles"]) == (tenant.root, ["viewer"])
    assert (created["name"], created["subject"], created["expires_at"]) == ("ci", "bot-1", None)
    assert can_read(client, created["token"]) == 200


def test_token_for_a_group_inside_the_subtree(client: TestClient, tenant: Tenant) -> None:
    """An owner may create tokens for groups below its own."""
    team = f"{tenant.root}/team"
    response = create_token(client, tenant.owner, group=team, roles=["producer"])
    assert response.status_code == 201
    assert response.json()["group"] == team


@pytest.mark.parametrize("where", ["other-tenant", "sibling-prefix", "parent"])
def test_no_token_outside_the_subtree(client: TestClient, tenant: Tenant, where: str) -> None:
    """Tokens for another tenant, a prefix-sharing sibling or the group above are forbidden."""
    team = f"{tenant.root}/team"
    owner = make_token(client, team, "owner")
    group = {
        "other-tenant": groups.new_root(),
        "sibling-prefix": f"{tenant.root}/team2",
        "parent": tenant.root,
    }[where]
    assert create_token(client, owner, group=group, roles=["owner"]).status_code == 403


@pytest.mark.parametrize("role", ["viewer", "producer", "editor"])
def test_only_an_owner_creates_tokens(client: TestClient, tenant: Tenant, role: str) -> None:
    """Non-owners cannot make credentials, not even weaker ones."""
    token = make_token(client, tenant.root, role)
    assert create_token(client, token, roles=["viewer"]).status_code == 403


@pytest.mark.parametrize("roles", [[], ["admin"], ["viewer", "root"], "owner", [1]])
def test_roles_are_validated(client: TestClient, tenant: Tenant, roles: Any) -> None:
    """Roles must be a non-empty list of known role names."""
    response = create_token(client, tenant.owner, roles=roles)
    assert response.status_code == 400
    assert "roles" in response.json()["error"]["message"]


def test_roles_are_deduplicated_in_canonical_order(client: TestClient, tenant: Tenant) -> None:
    """Roles are stored once each, in the order viewer, producer, editor, owner."""
    response = create_token(client, tenant.owner, roles=["owner", "viewer", "owner"])
    assert response.json()["roles"] == ["viewer", "owner"]


def test_a_subject_no_actor_may_have_is_a_400_and_one_at_the_limit_acts(
    client: TestClient, tenant: Tenant
) -> None:
    """The subject is the actor of the audit events the token causes: 1,024 bytes of UTF-8 at
    most, as an event's actor, though 600 two-byte characters are fewer than 1,024 characters."""
    refused = create_token(client, tenant.owner, roles=["editor"], subject="\u00e9" * 600)
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == (
        "subject is longer than 1024 bytes (in UTF-8): it is the actor of the audit events"
        " the token causes"
    )
    listed = list_tokens(client, tenant.owner).json()["tokens"]
    assert all(t["subject"] != "\u00e9" * 600 for t in listed)
    made = create_token(client, tenant.owner, roles=["editor"], subject="\u00e9" * 512)
    assert made.status_code == 201, made.text
    spec = {"parent": tenant.root, "sink": "https://hooks.example/audit"}
    subscribed = client.post("/v1/subscriptions", json=spec, headers=auth(made.json()["token"]))
    assert subscribed.status_code == 201, subscribed.text


def test_malformed_token_group_is_a_400(client: TestClient, tenant: Tenant) -> None:
    """A group that is not a path is refused as malformed."""
    assert create_token(client, tenant.owner, group="Team A").status_code == 400


def test_unknown_token_fields_are_a_400(client: TestClient, tenant: Tenant) -> None:
    """A field the API does not know, such as a chosen secret, is refused."""
    response = create_token(client, tenant.owner, token="tdg_mine")
    assert response.status_code == 400
    assert "token" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "expires_at",
    ["2001-01-01T00:00:00Z", "soon", "2030-02-30T00:00:00Z", "9999-12-31T23:59:59Z"],
)
def test_bad_expiry_is_a_400(client: TestClient, tenant: Tenant, expires_at: str) -> None:
    """An expiry in the past, past what tidings stores (2262 on), or not an RFC 3339 date-time
    is refused, naming expires_at."""
    response = create_token(client, tenant.owner, expires_at=expires_at)
    assert response.status_code == 400
    assert "expires_at" in response.json()["error"]["message"]


def test_token_works_until_its_expiry_then_is_a_401(client: TestClient, tenant: Tenant) -> None:
    """A token authenticates up to the nanosecond before its expiry and never after."""
    now = time.time_ns()
    expires_ns = now + 3600 * NS
    created = create_token(client, tenant.owner, expires_at=from_ns(expires_ns, 9).render()).json()
    assert created["expires_at"] == from_ns(expires_ns).render()
    set_clock(client, expires_ns - 1)
    assert can_read(client, created["token"]) == 200
    set_clock(client, expires_ns)
    response = client.get("/v1/events", headers=auth(created["token"]))
    assert response.status_code == 401
    assert "expired" in response.json()["error"]["message"]
    assert can_read(client, tenant.viewer) == 200


# --- GET /v1/tokens --------------------------------------------------------


def test_secret_appears_only_in_the_create_answer(client: TestClient, tenant: Tenant) -> None:
    """Listing shows the token's record but neither its secret nor its hash."""
    created = create_token(client, tenant.owner).json()
    response = list_tokens(client, tenant.owner)
    assert response.status_code == 200
    listed = {token["id"]: token for token in response.json()["tokens"]}
    assert created["id"] in listed
    assert all("token" not in token for token in listed.values())
    assert created["token"] not in response.text
    assert created["token"].removeprefix("tdg_") not in response.text
    assert "secret" not in response.text
    expected = {key: value for key, value in created.items() if key != "token"}
    assert listed[created["id"]] == expected


def test_list_holds_the_subtree_and_nothing_else(client: TestClient, tenant: Tenant) -> None:
    """An owner of a/team sees tokens of a/team and below, not of a, a/team2, a/team_b or others."""
    team = f"{tenant.root}/team"
    owner = make_token(client, team, "owner")
    inside = {
        create_token(client, tenant.owner, group=group).json()["id"]
        for group in (team, f"{team}/x", f"{team}/x/y")
    }
    for group in (f"{tenant.root}/team2", f"{tenant.root}/team_b", f"{tenant.root}/team-b"):
        create_token(client, tenant.owner, group=group)
    other_root = groups.new_root()
    other_owner = make_token(client, other_root, "owner")
    create_token(client, other_owner, group=other_root)
    listed = list_tokens(client, owner).json()
    assert {token["group"] for token in listed["tokens"]} == {team, f"{team}/x", f"{team}/x/y"}
    assert inside <= {token["id"] for token in listed["tokens"]}
    assert len(listed["tokens"]) == 4  # the three above and the owner's own
    assert (listed["has_more"], listed["next_cursor"]) == (False, None)


def test_other_tenants_tokens_are_never_listed(client: TestClient, tenant: Tenant) -> None:
    """A tenant's owner lists only its own tenant's tokens."""
    other_root = groups.new_root()
    other_owner = make_token(client, other_root, "owner")
    create_token(client, other_owner)
    listed = list_tokens(client, tenant.owner).json()["tokens"]
    assert {token["group"] for token in listed} == {tenant.root}
    assert len(listed) == 3


@pytest.mark.parametrize("role", ["viewer", "producer", "editor"])
def test_only_an_owner_lists_tokens(client: TestClient, tenant: Tenant, role: str) -> None:
    """Listing credentials needs the owner role."""
    assert list_tokens(client, make_token(client, tenant.root, role)).status_code == 403


# --- DELETE /v1/tokens/{id} ------------------------------------------------


def test_deleted_token_is_a_401_at_once(client: TestClient, tenant: Tenant) -> None:
    """Deleting answers 204 and the token is refused on its very next request."""
    created = create_token(client, tenant.owner).json()
    assert can_read(client, created["token"]) == 200
    response = client.delete(f"/v1/tokens/{created['id']}", headers=auth(tenant.owner))
    assert response.status_code == 204
    assert response.content == b""
    assert can_read(client, created["token"]) == 401
    assert created["id"] not in {
        t["id"] for t in list_tokens(client, tenant.owner).json()["tokens"]
    }


def test_deleting_twice_is_a_404(client: TestClient, tenant: Tenant) -> None:
    """A token that is gone cannot be deleted again."""
    created = create_token(client, tenant.owner).json()
    client.delete(f"/v1/tokens/{created['id']}", headers=auth(tenant.owner))
    response = client.delete(f"/v1/tokens/{created['id']}", headers=auth(tenant.owner))
    assert response.status_code == 404


@pytest.mark.parametrize("where", ["other-tenant", "parent", "sibling-prefix"])
def test_token_outside_the_subtree_is_a_404_and_survives(
    client: TestClient, tenant: Tenant, where: str
) -> None:
    """An owner cannot delete (or learn of) tokens outside its subtree; they keep working."""
    team = f"{tenant.root}/team"
    owner = make_token(client, team, "owner")
    group = {
        "other-tenant": groups.new_root(),
        "parent": tenant.root,
        "sibling-prefix": f"{tenant.root}/team_b",
    }[where]
    target = create_token(client, make_token(client, group, "owner"), group=group).json()
    response = client.delete(f"/v1/tokens/{target['id']}", headers=auth(owner))
    assert response.status_code == 404
    assert can_read(client, target["token"]) == 200


@pytest.mark.parametrize("role", ["viewer", "producer", "editor"])
def test_only_an_owner_deletes_tokens(client: TestClient, tenant: Tenant, role: str) -> None:
    """A non-owner gets 403 and the token stays valid."""
    target = create_token(client, tenant.owner).json()
    token = make_token(client, tenant.root, role)
    response = client.delete(f"/v1/tokens/{target['id']}", headers=auth(token))
    assert response.status_code == 403
    assert can_read(client, target["token"]) == 200


# --- role inclusion --------------------------------------------------------


def test_role_inclusion() -> None:
    """owner includes every role; editor includes viewer; producer and viewer only themselves."""
    assert effective_roles(["owner"]) == {"viewer", "producer", "editor", "owner"}
    assert effective_roles(["editor"]) == {"editor", "viewer"}
    assert effective_roles(["producer"]) == {"producer"}
    assert effective_roles(["viewer"]) == {"viewer"}
    assert effective_roles(["producer", "viewer"]) == {"producer", "viewer"}


def test_owner_may_read_ingest_and_manage(client: TestClient, tenant: Tenant) -> None:
    """An owner token reads events, ingests them and lists tokens."""
    assert (
        client.post("/v1/events", json=event(tenant.root), headers=auth(tenant.owner)).status_code
        == 201
    )
    assert can_read(client, tenant.owner) == 200
    assert list_tokens(client, tenant.owner).status_code == 200


def test_editor_reads_but_does_not_ingest(client: TestClient, tenant: Tenant) -> None:
    """editor includes viewer but not producer."""
    editor = make_token(client, tenant.root, "editor")
    assert can_read(client, editor) == 200
    response = client.post("/v1/events", json=event(tenant.root), headers=auth(editor))
    assert response.status_code == 403


def test_producer_cannot_read(client: TestClient, tenant: Tenant) -> None:
    """A producer token may ingest but neither list nor fetch events."""
    stored = client.post("/v1/events", json=event(tenant.root), headers=auth(tenant.producer))
    assert stored.status_code == 201
    assert can_read(client, tenant.producer) == 403
    one = client.get(f"/v1/events/{stored.json()['id']}", headers=auth(tenant.producer))
    assert one.status_code == 403


def test_viewer_reads_but_does_not_ingest(client: TestClient, tenant: Tenant) -> None:
    """A viewer token lists events and may not ingest."""
    assert can_read(client, tenant.viewer) == 200
    response = client.post("/v1/events", json=event(tenant.root), headers=auth(tenant.viewer))
    assert response.status_code == 403


def test_a_token_deleted_by_another_process_stops_within_the_cache_time(
    client: TestClient, tenant: Tenant
) -> None:
    """A token is kept for a second after it is looked up: deleted behind this process's back
    (as another process of the database would), it works until then, and never after."""
    now = [0.0]
    state = client.app.state.tidings  # type: ignore[attr-defined]
    state.tokens = TokenCache(ttl_s=1.0, clock=lambda: now[0])
    created = create_token(client, tenant.owner).json()
    assert can_read(client, created["token"]) == 200
    assert client.portal is not None
    assert client.portal.call(storage_of(client).delete_token, tenant.root, created["id"])
    now[0] = 0.9
    assert can_read(client, created["token"]) == 200
    now[0] = 1.0
    assert can_read(client, created["token"]) == 401
    now[0] = 0.0  # and an unknown token is not kept: it stays refused
    assert can_read(client, created["token"]) == 401
