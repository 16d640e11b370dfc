"""Subscriptions and webhook delivery end to end: real receivers, real tokens, the seeds' wire format."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from fastapi.testclient import TestClient

from tests.conftest import Tenant, auth, event, make_token, storage_of
from tests.databases import MakeDatabase
from tests.receivers import Receiver
from tidings import groups, wire
from tidings.catalog import chainguard_examples
from tidings.config import Settings

CREATED = "dev.chainguard.api.events.subscription.created.v1"
DELETED = "dev.chainguard.api.events.subscription.deleted.v1"


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Settings that let deliveries reach receivers on 127.0.0.1."""
    return Settings(
        database_url=database_url,
        allow_private_sinks=True,
        delivery_poll_s=0.05,
        public_url="http://tidings.test",
    )


def subscribe(
    client: TestClient, token: str, parent: str, sink: str, **extra: Any
) -> dict[str, Any]:
    response = client.post(
        "/v1/subscriptions", json={"parent": parent, "sink": sink, **extra}, headers=auth(token)
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def ingest(client: TestClient, token: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/events", json=body, headers=auth(token))
    assert response.status_code == 201, response.text
    stored: dict[str, Any] = response.json()
    return stored


def events_of_type(client: TestClient, token: str, event_type: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = client.get(
        "/v1/events", params={"type": event_type}, headers=auth(token)
    ).json()["events"]
    return found


def test_subscription_id_is_a_uidp_under_its_parent(
    client: TestClient, tenant: Tenant, receivers: Any
) -> None:
    """A new subscription's id is the parent, a slash, and 16 hex characters."""
    created = subscribe(client, tenant.owner, tenant.root, receivers().url)
    parent, _, suid = created["id"].rpartition("/")
    assert parent == tenant.root
    assert len(suid) == 16
    assert groups.is_group(created["id"])


def test_creating_and_deleting_record_the_seed_events(
    client: TestClient, tenant: Tenant, receivers: Any
) -> None:
    """Create and delete record subscription.created.v1 {id, sink} and subscription.deleted.v1 {id}."""
    sink = receivers().url + "/hook"
    created = subscribe(client, tenant.owner, tenant.root, sink)
    assert (
        client.delete(f"/v1/subscriptions/{created['id']}", headers=auth(tenant.owner)).status_code
        == 204
    )
    [made] = events_of_type(client, tenant.viewer, CREATED)
    [gone] = events_of_type(client, tenant.viewer, DELETED)
    assert made["data"]["body"] == {"id": created["id"], "sink": sink}
    assert made["subject"] == created["id"]
    assert gone["data"]["body"] == {"id": created["id"]}


def test_every_seed_example_is_delivered_in_the_seed_wire_format(
    client: TestClient, tenant: Tenant, receivers: Any
) -> None:
    """All 62 examples arrive as binary-mode CloudEvents with byte-exact bodies and verifiable tokens."""
    receiver: Receiver = receivers()
    team = groups.new_child(tenant.root)
    sub = subscribe(
        client, tenant.owner, tenant.root, receiver.url + "/", types=["dev.chainguard.*"]
    )
    examples = chainguard_examples()
    sent = {}
    for index, example in enumerate(examples):
        body = {
            "id": f"example-{index}",
            "type": example["ce_type"],
            "source": example["ce_source"],
            "subject": f"{team}/{index:016x}",
            "time": example["headers"]["Ce-Time"],
            "group": team,
            "data": example["data"],
        }
        ingest(client, tenant.producer, body)
        sent[body["id"]] = (example, body)
    # The subscription's own created event is delivered too: it matches dev.chainguard.*.
    got = [r for r in receiver.wait_for(len(examples) + 1) if r.header("Ce-Id") in sent]
    assert len(got) == len(examples)
    discovery = client.get("/.well-known/openid-configuration").json()
    jwks = jwt.PyJWKSet.from_dict(
        client.get(discovery["jwks_uri"].removeprefix("http://tidings.test")).json()
    )
    for request in got:
        example, body = sent[request.header("Ce-Id") or ""]
        assert request.body == wire.dumps(example["data"]).encode()
        assert len(request.body) == example["content_length"]
        assert request.header("Ce-Source") == example["ce_source"]
        assert request.header("Ce-Type") == example["ce_type"]
        assert request.header("Ce-Time") == example["headers"]["Ce-Time"]
        assert request.header("Ce-Subject") == body["subject"]
        assert request.header("Ce-Specversion") == "1.0"
        assert request.header("Ce-Group") == team
        assert request.header("Ce-Audience") == "customer"
        assert request.header("Content-Type") == "application/json"
        assert request.header("Accept-Encoding") == "gzip"
        assert (request.header("User-Agent") or "").startswith("tidings/")
        parsed = from_http_event(HTTPMessage(headers=request.headers, body=request.body))
        assert parsed.get_id() == body["id"]
        assert parsed.get_type() == example["ce_type"]
        assert parsed.get_extension("group") == team
        assert parsed.get_data() == example["data"]
        token = (request.header("Authorization") or "").removeprefix("Bearer ")
        key = jwks[jwt.get_unverified_header(token)["kid"]]
        claims = jwt.decode(
            token, key=key, algorithms=["RS256"], audience="customer", issuer=discovery["issuer"]
        )
        assert claims["sub"] == f"webhook:{tenant.root}"
        assert sub["parent"] == tenant.root


def test_events_reach_subscriptions_of_their_group_and_its_ancestors_only(
    client: TestClient, tenant: Tenant, receivers: Any
) -> None:
    """An event in a/b/c goes to subscriptions of a/b/c, a/b and a, never a/b2 or a/b/c/d."""
    a = tenant.root
    b, b2 = f"{a}/b", f"{a}/b2"
    c = f"{b}/c"
    sinks = {group: receivers() for group in (a, b, b2, c, f"{c}/d")}
    for group, receiver in sinks.items():
        subscribe(client, tenant.owner, group, receiver.url, types=["dev.example.*"])
    ingest(client, tenant.producer, event(c, id="deep"))
    for group in (a, b, c):
        assert [r.header("Ce-Id") for r in sinks[group].wait_for(1)] == ["deep"]
    assert sinks[b2].received() == []
    assert sinks[f"{c}/d"].received() == []


def test_ingest_counts_the_deliveries_each_event_queued(
    client: TestClient, tenant: Tenant, receivers: Any
) -> None:
    """Each new event says how many deliveries it queued (the worker is woken only then);
    a repeat queues none."""
    subscribe(client, tenant.owner, tenant.root, receivers().url, types=["dev.example.*"])
    subscribe(client, tenant.owner, f"{tenant.root}/team", receivers().url)
    storage = storage_of(client)
    batch = [
        wire.parse_event(event(tenant.root, id="root")),
        wire.parse_event(event(f"{tenant.root}/team", id="team")),
        wire.parse_event(event(tenant.root, id="other", type="dev.other.thing.v1")),
    ]
    assert client.portal is not None
    ingested = client.portal.call(storage.ingest, batch, time.time_ns())
    assert [(i.event.id, i.created, i.deliveries) for i in ingested] == [
        ("root", True, 1),
        ("team", True, 2),
        ("other", True, 0),
    ]
    [repeat] = client.portal.call(storage.ingest, batch[:1], time.time_ns())
    assert (repeat.created, repeat.deliveries) == (False, 0)


def test_filters_select_by_type_prefix_and_subject(
    client: TestClient, tenant: Tenant, receivers: Any
) -> None:
    """Exact types, 'prefix.*' and a subject prefix choose what a subscription receives."""
    exact, prefixed, by_subject = receivers(), receivers(), receivers()
    subscribe(client, tenant.owner, tenant.root, exact.url, types=["dev.example.widget.created.v1"])
    subscribe(client, tenant.owner, tenant.root, prefixed.url, types=["dev.example.gadget.*"])
    subscribe(
        client, tenant.owner, tenant.root, by_subject.url, types=["dev.example.*"], subject="blue/"
    )
    ingest(
        client,
        tenant.producer,
        event(tenant.root, id="w", type="dev.example.widget.created.v1", subject="red/1"),
    )
    ingest(
        client,
        tenant.producer,
        event(tenant.root, id="g", type="dev.example.gadget.deleted.v1", subject="blue/2"),
    )
    ingest(
        client,
        tenant.producer,
        event(tenant.root, id="x", type="dev.examplex.other.v1", subject="blue/3"),
    )
    assert [r.header("Ce-Id") for r in exact.wait_for(1)] == ["w"]
    assert [r.header("Ce-Id") for r in prefixed.wait_for(1)] == ["g"]
    assert [r.header("Ce-Id") for r in by_subject.wait_for(1)] == ["g"]


def test_disabled_and_later_subscriptions_do_not_receive(
    client: TestClient, tenant: Tenant, receivers: Any
) -> None:
    """Fan-out follows the subscriptions as they stood when the event was committed."""
    disabled, later = receivers(), receivers()
    sub = subscribe(client, tenant.owner, tenant.root, disabled.url, types=["dev.example.*"])
    patched = client.patch(
        f"/v1/subscriptions/{sub['id']}", json={"state": "disabled"}, headers=auth(tenant.owner)
    )
    assert patched.json()["state"] == "disabled"
    ingest(client, tenant.producer, event(tenant.root, id="before"))
    subscribe(client, tenant.owner, tenant.root, later.url, types=["dev.example.*"])
    ingest(client, tenant.producer, event(tenant.root, id="after"))
    assert [r.header("Ce-Id") for r in later.wait_for(1)] == ["after"]
    assert disabled.received() == []


def test_subscription_management_needs_editor_within_its_group(
    client: TestClient, tenant: Tenant
) -> None:
    """Viewers and producers cannot subscribe; an editor cannot subscribe outside its group."""
    team = f"{tenant.root}/team"
    editor = make_token(client, team, "editor")
    spec = {"parent": tenant.root, "sink": "http://127.0.0.1:9/"}
    assert (
        client.post("/v1/subscriptions", json=spec, headers=auth(tenant.viewer)).status_code == 403
    )
    assert (
        client.post("/v1/subscriptions", json=spec, headers=auth(tenant.producer)).status_code
        == 403
    )
    assert client.post("/v1/subscriptions", json=spec, headers=auth(editor)).status_code == 403
    assert (
        client.post(
            "/v1/subscriptions", json={**spec, "parent": team}, headers=auth(editor)
        ).status_code
        == 201
    )


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"sink": "file:///etc/passwd"}, 422),
        ({"sink": "gopher://x/"}, 422),
        ({"parent": "Not/A/Group"}, 400),
        ({"types": ["dev.*.bad"]}, 400),
        ({"kind": "email"}, 400),
        ({"signing_secret": "not-a-secret"}, 400),
        ({"signing_secret": "whsec_é"}, 400),
        ({"sink": "http://127.0.0.1:9/" + "a" * 2048}, 400),
        ({"types": [f"dev.t{n}.v1" for n in range(101)]}, 400),
        ({"types": ["t" * 257]}, 400),
        ({"subject": "a\x01b"}, 400),
        ({"subject": "s" * 1025}, 400),
        ({"unknown": 1}, 400),
    ],
)
def test_bad_subscriptions_are_refused(
    client: TestClient, tenant: Tenant, change: dict[str, Any], status: int
) -> None:
    """Each malformed or unsafe subscription is refused and nothing is stored."""
    spec = {"parent": tenant.root, "sink": "http://127.0.0.1:9/", **change}
    response = client.post("/v1/subscriptions", json=spec, headers=auth(tenant.owner))
    assert response.status_code == status, response.text
    assert client.get("/v1/subscriptions", headers=auth(tenant.owner)).json()["subscriptions"] == []


def test_private_sinks_are_refused_unless_allowed(make_database: MakeDatabase) -> None:
    """Without TIDINGS_ALLOW_PRIVATE_SINKS a loopback sink is a 422."""
    from tidings.api import create_app

    app = create_app(Settings(database_url=make_database()))
    with TestClient(app) as strict:
        root = groups.new_root()
        owner = make_token(strict, root, "owner")
        spec = {"parent": root, "sink": "http://127.0.0.1:8080/hook"}
        response = strict.post("/v1/subscriptions", json=spec, headers=auth(owner))
        assert response.status_code == 422
        assert "127.0.0.1" in response.json()["error"]["message"]


def test_list_get_patch_and_visibility(client: TestClient, tenant: Tenant, receivers: Any) -> None:
    """Subscriptions list under a group, read one by id, patch fields, and stay invisible to others."""
    sink = receivers().url
    sub = subscribe(client, tenant.owner, tenant.root, sink, description="audit feed")
    listed = client.get("/v1/subscriptions", headers=auth(tenant.viewer)).json()["subscriptions"]
    assert [s["id"] for s in listed] == [sub["id"]]
    assert (
        client.get(f"/v1/subscriptions/{sub['id']}", headers=auth(tenant.viewer)).json()[
            "description"
        ]
        == "audit feed"
    )
    patched = client.patch(
        f"/v1/subscriptions/{sub['id']}",
        json={"types": ["dev.x.*"], "subject": "p/"},
        headers=auth(tenant.owner),
    ).json()
    assert (patched["types"], patched["subject"]) == (["dev.x.*"], "p/")
    other_root = groups.new_root()
    stranger = make_token(client, other_root, "owner")
    assert client.get(f"/v1/subscriptions/{sub['id']}", headers=auth(stranger)).status_code == 404
    assert (
        client.delete(f"/v1/subscriptions/{sub['id']}", headers=auth(stranger)).status_code == 404
    )


def test_test_endpoint_sends_at_once(client: TestClient, tenant: Tenant, receivers: Any) -> None:
    """POST .../test sends a test event to the sink and answers how it went."""
    receiver = receivers()
    sub = subscribe(client, tenant.owner, tenant.root, receiver.url, types=["dev.nothing.*"])
    answer = client.post(f"/v1/subscriptions/{sub['id']}/test", headers=auth(tenant.owner)).json()
    assert answer["delivered"] is True
    assert answer["status_code"] == 200
    [got] = receiver.wait_for(1)
    assert got.header("Ce-Type") == "dev.tidings.subscription.test.v1"
    assert json.loads(got.body)["body"]["id"] == sub["id"]


def test_secret_parts_of_a_sink_are_shown_only_to_editors(
    client: TestClient, tenant: Tenant, receivers: Any
) -> None:
    """A viewer and the audit log see the sink without its path secrets and query; an editor sees it all."""
    sink = receivers().url + "/services/T000/B000/XXXXSECRET?token=abc"
    created = subscribe(client, tenant.owner, tenant.root, sink)
    assert created["sink"] == sink
    seen = client.get(f"/v1/subscriptions/{created['id']}", headers=auth(tenant.viewer)).json()
    listed = client.get("/v1/subscriptions", headers=auth(tenant.viewer)).json()["subscriptions"]
    [audit] = events_of_type(client, tenant.viewer, CREATED)
    for shown in (seen["sink"], listed[0]["sink"], audit["data"]["body"]["sink"]):
        assert "XXXXSECRET" not in shown
        assert "token=abc" not in shown
        assert shown.startswith(
            receivers.__self__.url if hasattr(receivers, "__self__") else "http://127.0.0.1:"
        )
    assert (
        client.get(f"/v1/subscriptions/{created['id']}", headers=auth(tenant.owner)).json()["sink"]
        == sink
    )


@pytest.mark.parametrize(
    "sink", ["http://127.0.0.1:\uff18\uff10/hook", "http://127.0.0.1:+80/hook", "http://xn--/"]
)
def test_a_sink_with_an_odd_port_or_host_is_refused_when_saved(
    client: TestClient, tenant: Tenant, sink: str
) -> None:
    """A port of other digits than ASCII's, or a host that is not a name, is a 422 on create
    and on update, and the subscription stays readable by every role."""
    created = subscribe(client, tenant.owner, tenant.root, "http://127.0.0.1:9/hook")
    spec = {"parent": tenant.root, "sink": sink}
    refused = client.post("/v1/subscriptions", json=spec, headers=auth(tenant.owner))
    assert refused.status_code == 422, refused.text
    path = f"/v1/subscriptions/{created['id']}"
    patched = client.patch(path, json={"sink": sink}, headers=auth(tenant.owner))
    assert patched.status_code == 422, patched.text
    assert patched.json()["error"]["message"].startswith("sink")
    for token in (tenant.viewer, tenant.owner):
        assert client.get(path, headers=auth(token)).status_code == 200
        assert client.get("/v1/subscriptions", headers=auth(token)).status_code == 200


def test_an_update_writes_only_its_own_fields(client: TestClient, tenant: Tenant) -> None:
    """A PATCH made from a stale read does not undo a change the worker made meanwhile (a disable)."""
    from dataclasses import replace

    from tests.conftest import storage_of

    created = subscribe(client, tenant.owner, tenant.root, "http://127.0.0.1:9/hook")
    storage = storage_of(client)
    assert client.portal is not None
    stale = client.portal.call(storage.subscription, created["id"])
    assert stale is not None
    disabled = replace(stale, state="disabled", state_reason="the sink answered 410 Gone")
    client.portal.call(storage.update_subscription, disabled, {"state", "state_reason"})
    client.portal.call(
        storage.update_subscription, replace(stale, description="renamed"), {"description"}
    )
    after = client.get(f"/v1/subscriptions/{created['id']}", headers=auth(tenant.owner)).json()
    assert (after["state"], after["description"]) == ("disabled", "renamed")


def test_replaying_twice_queues_each_waiting_event_once(client: TestClient, tenant: Tenant) -> None:
    """A replay does not queue an event again while its delivery to that subscription still waits."""
    for index in range(3):
        ingest(client, tenant.producer, event(tenant.root, id=f"replayed-{index}"))
    created = subscribe(
        client, tenant.owner, tenant.root, "http://127.0.0.1:9/hook", types=["dev.example.*"]
    )
    url = f"/v1/subscriptions/{created['id']}/replay"
    since = {"since": "2000-01-01T00:00:00Z"}
    assert client.post(url, json=since, headers=auth(tenant.owner)).json() == {"queued": 3}
    assert client.post(url, json=since, headers=auth(tenant.owner)).json() == {"queued": 0}
