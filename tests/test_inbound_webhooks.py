"""Inbound webhooks: create, receive (cloudevents, generic, alertmanager, grafana), keys, limits, CLI."""

from __future__ import annotations

import copy
import gc
import json
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tests.conftest import Tenant, auth, event, make_token
from tests.databases import query
from tests.servers import Server, database_url, serving
from tidings import groups
from tidings.cli import app as cli_app
from tidings.ratelimit import RateLimiter

FIRING = "dev.tidings.alertmanager.alert.firing.v1"
RESOLVED = "dev.tidings.alertmanager.alert.resolved.v1"
GRAFANA_FIRING = "dev.tidings.grafana.alert.firing.v1"
GRAFANA_RESOLVED = "dev.tidings.grafana.alert.resolved.v1"

# Alertmanager's webhook payload, in the shape its documentation gives (webhook_config).
ALERTMANAGER: dict[str, Any] = {
    "version": "4",
    "groupKey": '{}/{severity="critical"}:{alertname="ProbeFailure"}',
    "truncatedAlerts": 0,
    "status": "firing",
    "receiver": "tidings",
    "groupLabels": {"alertname": "ProbeFailure"},
    "commonLabels": {"alertname": "ProbeFailure", "job": "http_checks", "severity": "critical"},
    "commonAnnotations": {},
    "externalURL": "http://alertmanager.example.org:9093",
    "alerts": [
        {
            "status": "firing",
            "labels": {
                "alertname": "ProbeFailure",
                "instance": "https://server.example.org",
                "job": "http_checks",
                "severity": "critical",
            },
            "annotations": {
                "summary": "BlackBox Probe Failure: https://server.example.org",
                "description": "https://server.example.org has been down for over 5m.",
            },
            "startsAt": "2023-02-06T13:08:45.828Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus.example.org:9090/graph?g0.expr=probe_success+%3D%3D+0",
            "fingerprint": "1a30ba71cca2921f",
        },
        {
            "status": "resolved",
            "labels": {
                "alertname": "ProbeFailure",
                "instance": "https://shop.example.org",
                "job": "http_checks",
                "severity": "critical",
            },
            "annotations": {"summary": "BlackBox Probe Failure: https://shop.example.org"},
            "startsAt": "2023-02-06T12:58:45.828Z",
            "endsAt": "2023-02-06T13:07:45.828Z",
            "generatorURL": "http://prometheus.example.org:9090/graph?g0.expr=probe_success+%3D%3D+0",
            "fingerprint": "5f6a3b7c9d2e1f04",
        },
    ],
}

# Grafana alerting's webhook payload, as Grafana's webhook notifier documentation shows it.
GRAFANA: dict[str, Any] = {
    "receiver": "My Super Webhook",
    "status": "firing",
    "orgId": 1,
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "High memory usage", "team": "blue", "zone": "us-1"},
            "annotations": {
                "description": "The system has high memory usage",
                "runbook_url": "https://myrunbook.com/runbook/1234",
                "summary": "This alert was triggered for zone us-1",
            },
            "startsAt": "2021-10-12T09:51:03.157076+02:00",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "https://play.grafana.org/alerting/1afz29v7z/edit",
            "fingerprint": "c6eadffa33fcdf37",
            "silenceURL": "https://play.grafana.org/alerting/silence/new?alertmanager=grafana"
            "&matchers=alertname%3DT2%2Cteam%3Dblue%2Czone%3Dus-1",
            "dashboardURL": "",
            "panelURL": "",
            "values": {"B": 44.23943737541908, "C": 1},
        },
        {
            "status": "firing",
            "labels": {"alertname": "High CPU usage", "team": "blue", "zone": "eu-1"},
            "annotations": {
                "description": "The system has high CPU usage",
                "runbook_url": "https://myrunbook.com/runbook/1234",
                "summary": "This alert was triggered for zone eu-1",
            },
            "startsAt": "2021-10-12T09:56:03.157076+02:00",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "https://play.grafana.org/alerting/d1rdpdv7k/edit",
            "fingerprint": "bc97ff14869b13e3",
            "silenceURL": "https://play.grafana.org/alerting/silence/new?alertmanager=grafana"
            "&matchers=alertname%3DT1%2Cteam%3Dblue%2Czone%3Deu-1",
            "dashboardURL": "",
            "panelURL": "",
            "values": {"B": 44.23943737541908, "C": 1},
        },
    ],
    "groupLabels": {},
    "commonLabels": {"team": "blue"},
    "commonAnnotations": {},
    "externalURL": "https://play.grafana.org/",
    "version": "1",
    "groupKey": "{}:{}",
    "truncatedAlerts": 0,
    "title": "[FIRING:2]  (blue)",
    "state": "alerting",
    "message": "**Firing**\n\nLabels:\n - alertname = T2\n - team = blue\n - zone = us-1\n",
}

GENERIC_MAPPING = {
    "kind": "generic",
    "type": "/event/kind",
    "subject": "/event/object",
    "actor": "/user/login",
    "time": "/at",
}
GENERIC_PAYLOAD: dict[str, Any] = {
    "event": {"kind": "com.example.ticket.closed.v1", "object": "ticket-42"},
    "user": {"login": "alice"},
    "at": "2024-05-01T10:00:00Z",
    "note": "closed as fixed",
}


# --- helpers ---------------------------------------------------------------------------------


def create(
    client: TestClient, token: str, group: str, mapping: Any = "alertmanager", **extra: Any
) -> Any:
    """POST /v1/webhooks."""
    spec = {"group": group, "name": "monitoring", "mapping": mapping, **extra}
    return client.post("/v1/webhooks", json=spec, headers=auth(token))


def created(client: TestClient, tenant: Tenant, mapping: Any = "alertmanager", **extra: Any) -> Any:
    """A new webhook of the tenant's root group (by its owner): its JSON, with the access key."""
    response = create(client, tenant.owner, tenant.root, mapping, **extra)
    assert response.status_code == 201, response.text
    return response.json()


def receive(
    client: TestClient,
    webhook_id: str,
    payload: Any,
    key: str | None = None,
    params: dict[str, str] | None = None,
) -> Any:
    """POST a payload to a webhook, the key (if any) in X-Access-Key."""
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["x-access-key"] = key
    return client.post(
        f"/v1/webhooks/{webhook_id}/events", content=raw, headers=headers, params=params
    )


def stored(client: TestClient, tenant: Tenant, **params: str) -> list[dict[str, Any]]:
    """The tenant's events, oldest first."""
    response = client.get("/v1/events", params=params, headers=auth(tenant.viewer))
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["events"]
    return found


def listed(client: TestClient, token: str) -> list[dict[str, Any]]:
    """GET /v1/webhooks."""
    response = client.get("/v1/webhooks", headers=auth(token))
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["webhooks"]
    return found


def by_type(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["type"]: e for e in events}


# --- create, list, delete --------------------------------------------------------------------


def test_create_answers_201_with_the_access_key(client: TestClient, tenant: Tenant) -> None:
    """POST /v1/webhooks answers 201 with the id, the group, the mapping and a tdw_ access key."""
    response = create(client, make_token(client, tenant.root, "editor"), tenant.root)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["id"].startswith("webhook-")
    assert body["access_key"].startswith("tdw_")
    assert len(body["access_key"]) > 40
    assert (body["group"], body["name"]) == (tenant.root, "monitoring")
    assert body["mapping"] == {"kind": "alertmanager"}
    assert body["rate_limit"] == 100
    assert body["url"] == f"/v1/webhooks/{body['id']}/events"


def test_list_never_shows_the_access_key(client: TestClient, tenant: Tenant) -> None:
    """GET /v1/webhooks lists the webhook without its key, anywhere in the answer."""
    webhook = created(client, tenant)
    response = client.get("/v1/webhooks", headers=auth(tenant.viewer))
    assert response.status_code == 200
    (entry,) = response.json()["webhooks"]
    assert entry["id"] == webhook["id"]
    assert "access_key" not in entry
    assert webhook["access_key"] not in response.text


def test_access_key_is_stored_only_hashed(
    client: TestClient, tenant: Tenant, database_url: str
) -> None:
    """No column of the webhooks table holds the key in clear."""
    webhook = created(client, tenant)
    rows = query(database_url, "SELECT * FROM webhooks")
    assert len(rows) == 1
    assert not any(webhook["access_key"] in str(value) for value in rows[0])


def test_each_webhook_gets_its_own_key(client: TestClient, tenant: Tenant) -> None:
    """Two webhooks have different ids and keys."""
    first, second = created(client, tenant), created(client, tenant)
    assert first["id"] != second["id"]
    assert first["access_key"] != second["access_key"]


@pytest.mark.parametrize("role", ["viewer", "producer"])
def test_non_editor_cannot_create(client: TestClient, tenant: Tenant, role: str) -> None:
    """A token without the editor role gets a 403 and no webhook is made."""
    response = create(client, make_token(client, tenant.root, role), tenant.root)
    assert response.status_code == 403
    assert listed(client, tenant.owner) == []


def test_editor_of_a_child_cannot_create_for_the_parent(client: TestClient, tenant: Tenant) -> None:
    """An editor may make webhooks only inside its own group (403 above it)."""
    child = groups.new_child(tenant.root)
    editor = make_token(client, child, "editor")
    assert create(client, editor, tenant.root).status_code == 403
    assert create(client, editor, child).status_code == 201


@pytest.mark.parametrize(
    "mapping",
    [
        "zabbix",
        {"kind": "nagios"},
        {"kind": "generic"},
        {"kind": "generic", "type": "event.type"},
        {"kind": "generic", "type": "/t", "colour": "/c"},
        {"kind": "alertmanager", "type": "/t"},
        42,
    ],
    ids=[
        "unknown-name",
        "unknown-kind",
        "generic-without-type",
        "generic-not-a-pointer",
        "generic-unknown-key",
        "options-on-alertmanager",
        "not-a-mapping",
    ],
)
def test_bad_mapping_is_a_400(client: TestClient, tenant: Tenant, mapping: Any) -> None:
    """A mapping that is not one of the four (or a malformed generic one) is refused."""
    response = create(client, tenant.owner, tenant.root, mapping)
    assert response.status_code == 400, response.text
    assert listed(client, tenant.owner) == []


def test_delete_answers_204_and_removes_it(client: TestClient, tenant: Tenant) -> None:
    """DELETE /v1/webhooks/{id} answers 204; the list is then empty."""
    webhook = created(client, tenant)
    response = client.delete(f"/v1/webhooks/{webhook['id']}", headers=auth(tenant.owner))
    assert response.status_code == 204
    assert listed(client, tenant.owner) == []


def test_deleted_webhooks_key_stops_working(client: TestClient, tenant: Tenant) -> None:
    """After DELETE, posting with the old key is a 401 that stores nothing."""
    webhook = created(client, tenant)
    client.delete(f"/v1/webhooks/{webhook['id']}", headers=auth(tenant.owner))
    response = receive(client, webhook["id"], ALERTMANAGER, webhook["access_key"])
    assert response.status_code == 401
    assert stored(client, tenant) == []


def test_another_tenant_can_neither_see_nor_delete(client: TestClient, tenant: Tenant) -> None:
    """A webhook is invisible to another tenant: not listed, and its DELETE is a 404."""
    webhook = created(client, tenant)
    other = groups.new_root()
    other_owner = make_token(client, other, "owner")
    assert listed(client, other_owner) == []
    response = client.delete(f"/v1/webhooks/{webhook['id']}", headers=auth(other_owner))
    assert response.status_code == 404
    assert len(listed(client, tenant.owner)) == 1


# --- alertmanager ----------------------------------------------------------------------------


def test_alertmanager_payload_becomes_one_event_per_alert(
    client: TestClient, tenant: Tenant
) -> None:
    """Two alerts, one firing and one resolved, become two events of the two types (201)."""
    webhook = created(client, tenant, "alertmanager")
    response = receive(client, webhook["id"], ALERTMANAGER, webhook["access_key"])
    assert response.status_code == 201, response.text
    assert [e["type"] for e in response.json()["events"]] == [FIRING, RESOLVED]
    assert sorted(e["type"] for e in stored(client, tenant)) == [FIRING, RESOLVED]


def test_alertmanager_events_carry_severity_resource_key_subject_and_time(
    client: TestClient, tenant: Tenant
) -> None:
    """Each event has the alert's severity, instance, fingerprint, alertname, and its time."""
    webhook = created(client, tenant, "alertmanager")
    receive(client, webhook["id"], ALERTMANAGER, webhook["access_key"])
    events = by_type(stored(client, tenant))
    firing, resolved = events[FIRING], events[RESOLVED]
    assert firing["severity"] == resolved["severity"] == "critical"
    assert firing["resource"] == "https://server.example.org"
    assert resolved["resource"] == "https://shop.example.org"
    assert firing["eventkey"] == "1a30ba71cca2921f"
    assert resolved["eventkey"] == "5f6a3b7c9d2e1f04"
    assert firing["subject"] == resolved["subject"] == "ProbeFailure"
    assert firing["time"] == "2023-02-06T13:08:45.828Z"  # startsAt
    assert resolved["time"] == "2023-02-06T13:07:45.828Z"  # endsAt
    assert firing["group"] == tenant.root
    assert firing["source"] == f"/v1/webhooks/{webhook['id']}"
    assert firing["description"] == "BlackBox Probe Failure: https://server.example.org"


def test_alertmanager_event_body_holds_labels_and_annotations(
    client: TestClient, tenant: Tenant
) -> None:
    """The body keeps the alert's labels, annotations, status and URLs, and the receiver."""
    webhook = created(client, tenant, "alertmanager")
    receive(client, webhook["id"], ALERTMANAGER, webhook["access_key"])
    firing = by_type(stored(client, tenant))[FIRING]
    alert = ALERTMANAGER["alerts"][0]
    body = firing["data"]["body"]
    assert body["labels"] == alert["labels"]
    assert body["annotations"] == alert["annotations"]
    assert body["status"] == "firing"
    assert body["generatorURL"] == alert["generatorURL"]
    assert body["receiver"] == "tidings"
    assert body["groupKey"] == ALERTMANAGER["groupKey"]
    assert firing["data"]["actor"] == {"subject": "alertmanager:tidings"}


def test_alertmanager_payload_posted_again_stores_nothing_new(
    client: TestClient, tenant: Tenant
) -> None:
    """The same notification sent twice answers 200 the second time, with the same events."""
    webhook = created(client, tenant, "alertmanager")
    first = receive(client, webhook["id"], ALERTMANAGER, webhook["access_key"])
    again = receive(client, webhook["id"], ALERTMANAGER, webhook["access_key"])
    assert (first.status_code, again.status_code) == (201, 200)
    assert [e["id"] for e in again.json()["events"]] == [e["id"] for e in first.json()["events"]]
    assert len(stored(client, tenant)) == 2


def test_eventkey_gives_one_alerts_history(client: TestClient, tenant: Tenant) -> None:
    """GET /v1/events?eventkey=fingerprint lists that alert firing, then resolved, nothing else."""
    webhook = created(client, tenant, "alertmanager")
    firing = copy.deepcopy(ALERTMANAGER)
    firing["alerts"] = [firing["alerts"][0]]
    resolved = copy.deepcopy(firing)
    resolved["status"] = resolved["alerts"][0]["status"] = "resolved"
    resolved["alerts"][0]["endsAt"] = "2023-02-06T13:20:45.828Z"
    other = copy.deepcopy(ALERTMANAGER)
    other["alerts"] = [other["alerts"][1]]
    for payload in (firing, other, resolved):
        assert receive(client, webhook["id"], payload, webhook["access_key"]).status_code == 201
    history = stored(client, tenant, eventkey="1a30ba71cca2921f")
    assert [e["type"] for e in history] == [FIRING, RESOLVED]
    assert [e["time"] for e in history] == ["2023-02-06T13:08:45.828Z", "2023-02-06T13:20:45.828Z"]


@pytest.mark.parametrize(
    "payload",
    [{"alerts": []}, {"status": "firing"}, {"alerts": [{"status": "pending"}]}, ["x"]],
    ids=["no-alerts", "alerts-missing", "unknown-status", "not-an-object"],
)
def test_malformed_alertmanager_payload_is_a_400(
    client: TestClient, tenant: Tenant, payload: Any
) -> None:
    """A payload without a list of firing/resolved alerts is refused and stores nothing."""
    webhook = created(client, tenant, "alertmanager")
    response = receive(client, webhook["id"], payload, webhook["access_key"])
    assert response.status_code == 400, response.text
    assert stored(client, tenant) == []


# --- grafana ---------------------------------------------------------------------------------


def test_grafana_payload_becomes_one_event_per_alert(client: TestClient, tenant: Tenant) -> None:
    """Grafana's documented payload of two firing alerts becomes two firing events."""
    webhook = created(client, tenant, "grafana")
    response = receive(client, webhook["id"], GRAFANA, webhook["access_key"])
    assert response.status_code == 201, response.text
    events = stored(client, tenant)
    assert [e["type"] for e in events] == [GRAFANA_FIRING, GRAFANA_FIRING]
    assert sorted(e["subject"] for e in events) == ["High CPU usage", "High memory usage"]


def test_grafana_events_carry_key_time_and_alert_fields(client: TestClient, tenant: Tenant) -> None:
    """Each event's key is the fingerprint, its time startsAt in UTC; the body keeps the alert."""
    webhook = created(client, tenant, "grafana")
    receive(client, webhook["id"], GRAFANA, webhook["access_key"])
    memory = stored(client, tenant, eventkey="c6eadffa33fcdf37")
    assert len(memory) == 1
    (alert_event,) = memory
    assert alert_event["time"] == "2021-10-12T07:51:03.157076Z"
    assert alert_event["subject"] == "High memory usage"
    assert alert_event["description"] == "This alert was triggered for zone us-1"
    assert "severity" not in alert_event  # the documented alert has no severity label
    body = alert_event["data"]["body"]
    alert = GRAFANA["alerts"][0]
    for field in ("labels", "annotations", "values", "silenceURL", "generatorURL"):
        assert body[field] == alert[field], field
    assert alert_event["data"]["actor"] == {"subject": "grafana:My Super Webhook"}


def test_grafana_resolved_alert_with_severity_and_folder(
    client: TestClient, tenant: Tenant
) -> None:
    """A resolved Grafana alert is a resolved event at endsAt, with severity and folder resource."""
    webhook = created(client, tenant, "grafana")
    payload = copy.deepcopy(GRAFANA)
    payload["status"] = "resolved"
    payload["alerts"] = [payload["alerts"][0]]
    alert = payload["alerts"][0]
    alert["status"] = "resolved"
    alert["endsAt"] = "2021-10-12T10:01:03.157076+02:00"
    alert["labels"] |= {"severity": "warning", "grafana_folder": "Infrastructure"}
    assert receive(client, webhook["id"], payload, webhook["access_key"]).status_code == 201
    (resolved,) = stored(client, tenant)
    assert resolved["type"] == GRAFANA_RESOLVED
    assert resolved["time"] == "2021-10-12T08:01:03.157076Z"
    assert (resolved["severity"], resolved["resource"]) == ("warning", "Infrastructure")


# --- cloudevents and generic -----------------------------------------------------------------


def test_cloudevents_mapping_stores_the_event_in_the_webhooks_group(
    client: TestClient, tenant: Tenant
) -> None:
    """A CloudEvent without a group is stored in the webhook's group, as sent otherwise."""
    webhook = created(client, tenant, "cloudevents")
    payload = event(tenant.root, id="ce-1")
    del payload["group"]
    response = receive(client, webhook["id"], payload, webhook["access_key"])
    assert response.status_code == 201, response.text
    (stored_event,) = stored(client, tenant)
    assert stored_event["id"] == "ce-1"
    assert stored_event["group"] == tenant.root
    assert stored_event["source"] == payload["source"]
    assert stored_event["data"] == payload["data"]


def test_cloudevents_mapping_accepts_a_group_below_the_webhooks(
    client: TestClient, tenant: Tenant
) -> None:
    """A CloudEvent may name a group inside the webhook's subtree."""
    webhook = created(client, tenant, "cloudevents")
    child = groups.new_child(tenant.root)
    response = receive(client, webhook["id"], event(child), webhook["access_key"])
    assert response.status_code == 201, response.text
    assert stored(client, tenant)[0]["group"] == child


def test_cloudevents_mapping_refuses_a_group_outside(client: TestClient, tenant: Tenant) -> None:
    """A CloudEvent naming a group outside the webhook's subtree is a 422 that stores nothing."""
    child = groups.new_child(tenant.root)
    webhook = created(client, tenant, "cloudevents")
    narrow = create(client, tenant.owner, child, "cloudevents").json()
    for hook, group in ((webhook, groups.new_root()), (narrow, tenant.root)):
        response = receive(client, hook["id"], event(group), hook["access_key"])
        assert response.status_code == 422, response.text
    assert stored(client, tenant) == []


def test_cloudevents_mapping_refuses_sharing_outside_the_webhooks_group(
    client: TestClient, tenant: Tenant
) -> None:
    """allowedgroups naming a group outside the webhook's subtree (a sibling) is a 422 that
    stores nothing; a group inside it is accepted."""
    child, sibling = groups.new_child(tenant.root), groups.new_child(tenant.root)
    narrow = create(client, tenant.owner, child, "cloudevents").json()
    inside = groups.new_child(child)
    response = receive(
        client, narrow["id"], event(child, allowedgroups=sibling), narrow["access_key"]
    )
    assert response.status_code == 422, response.text
    assert sibling in response.json()["error"]["message"]
    assert stored(client, tenant) == []
    response = receive(
        client, narrow["id"], event(child, allowedgroups=inside), narrow["access_key"]
    )
    assert response.status_code == 201, response.text
    assert stored(client, tenant)[0]["allowedgroups"] == inside


def test_generic_mapping_reads_the_pointers(client: TestClient, tenant: Tenant) -> None:
    """The generic mapping takes type, subject, actor and time at its pointers; the body is the payload."""
    webhook = created(client, tenant, GENERIC_MAPPING)
    response = receive(client, webhook["id"], GENERIC_PAYLOAD, webhook["access_key"])
    assert response.status_code == 201, response.text
    (stored_event,) = stored(client, tenant)
    assert stored_event["type"] == "com.example.ticket.closed.v1"
    assert stored_event["subject"] == "ticket-42"
    assert stored_event["data"]["actor"] == {"subject": "alice"}
    assert stored_event["time"] == "2024-05-01T10:00:00Z"
    assert stored_event["data"]["body"] == GENERIC_PAYLOAD
    assert stored_event["group"] == tenant.root


def test_generic_mapping_falls_back_to_its_default_type(client: TestClient, tenant: Tenant) -> None:
    """Without a type at the pointer, the default type is used and the actor is the webhook."""
    mapping = {"kind": "generic", "type": "/kind", "default_type": "com.example.ping.v1"}
    webhook = created(client, tenant, mapping)
    assert receive(client, webhook["id"], {"n": 1}, webhook["access_key"]).status_code == 201
    (stored_event,) = stored(client, tenant)
    assert stored_event["type"] == "com.example.ping.v1"
    assert stored_event["data"]["actor"] == {"subject": f"webhook:{webhook['id']}"}


def test_generic_payload_without_a_type_is_a_422(client: TestClient, tenant: Tenant) -> None:
    """A payload with nothing at the type pointer, and no default type, is refused."""
    webhook = created(client, tenant, GENERIC_MAPPING)
    response = receive(client, webhook["id"], {"event": {}}, webhook["access_key"])
    assert response.status_code == 422
    assert stored(client, tenant) == []


def test_webhook_events_are_validated_by_the_catalog(client: TestClient, tenant: Tenant) -> None:
    """A strict tenant type refuses a webhook event that breaks its schema; nothing is stored."""
    spec = {
        "type": "com.example.ticket.closed.v1",
        "schema": {"type": "object", "required": ["ticket_id"]},
        "validation": "strict",
    }
    assert client.post("/v1/types", json=spec, headers=auth(tenant.owner)).status_code == 201
    webhook = created(client, tenant, GENERIC_MAPPING)
    response = receive(client, webhook["id"], GENERIC_PAYLOAD, webhook["access_key"])
    assert response.status_code == 422
    assert "/data/body/ticket_id" in response.json()["error"]["message"]
    assert stored(client, tenant) == []


# --- the raw payload -------------------------------------------------------------------------


def test_raw_payload_is_kept_byte_for_byte(client: TestClient, tenant: Tenant) -> None:
    """GET /v1/events/{id}/payload answers the payload exactly as it was posted."""
    webhook = created(client, tenant, GENERIC_MAPPING)
    raw = json.dumps(GENERIC_PAYLOAD, indent=3).encode() + b"\n"
    assert receive(client, webhook["id"], raw, webhook["access_key"]).status_code == 201
    (stored_event,) = stored(client, tenant)
    response = client.get(f"/v1/events/{stored_event['id']}/payload", headers=auth(tenant.viewer))
    assert response.status_code == 200
    assert response.content == raw


def test_a_payload_with_an_integer_beyond_64_bits_is_taken_and_kept_exactly(
    client: TestClient, tenant: Tenant
) -> None:
    """An external system's payload is not refused for a number tidings cannot hold whole: the
    raw payload keeps its digits, where a producer of CloudEvents is asked for a string."""
    webhook = created(client, tenant, GENERIC_MAPPING)
    raw = json.dumps(GENERIC_PAYLOAD)[:-1].encode() + b', "count": 18446744073709551616}'
    assert receive(client, webhook["id"], raw, webhook["access_key"]).status_code == 201
    (stored_event,) = stored(client, tenant)
    response = client.get(f"/v1/events/{stored_event['id']}/payload", headers=auth(tenant.viewer))
    assert response.content == raw


def test_the_payload_of_an_event_whose_id_holds_a_slash(client: TestClient, tenant: Tenant) -> None:
    """A CloudEvent's own id may hold "/": its payload is at /v1/events/<id, encoded>/payload."""
    webhook = created(client, tenant, "cloudevents")
    payload = event(tenant.root, id="order/1")
    assert receive(client, webhook["id"], payload, webhook["access_key"]).status_code == 201
    response = client.get("/v1/events/order%2F1/payload", headers=auth(tenant.viewer))
    assert response.status_code == 200, response.text
    assert response.json() == payload


def test_every_alert_event_keeps_the_whole_payload(client: TestClient, tenant: Tenant) -> None:
    """Both events of one Alertmanager notification answer the whole notification."""
    webhook = created(client, tenant, "alertmanager")
    receive(client, webhook["id"], ALERTMANAGER, webhook["access_key"])
    for stored_event in stored(client, tenant):
        response = client.get(
            f"/v1/events/{stored_event['id']}/payload", headers=auth(tenant.viewer)
        )
        assert response.json() == ALERTMANAGER


def test_directly_ingested_event_has_no_payload(client: TestClient, tenant: Tenant) -> None:
    """An event sent to /v1/events has no raw payload: 404."""
    response = client.post(
        "/v1/events", json=event(tenant.root, id="e1"), headers=auth(tenant.producer)
    )
    assert response.status_code == 201
    assert client.get("/v1/events/e1/payload", headers=auth(tenant.viewer)).status_code == 404


# --- keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["wrong", "missing", "another-webhooks", "empty"])
def test_bad_key_is_a_401_that_stores_nothing(
    client: TestClient, tenant: Tenant, case: str
) -> None:
    """A wrong, missing, empty or other webhook's key is refused; no event is stored."""
    webhook = created(client, tenant)
    other = created(client, tenant)
    key = {
        "wrong": webhook["access_key"][:-2] + "xx",
        "missing": None,
        "another-webhooks": other["access_key"],
        "empty": "",
    }[case]
    response = receive(client, webhook["id"], ALERTMANAGER, key)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"
    assert stored(client, tenant) == []


@pytest.mark.parametrize(
    ("body", "where"),
    [(b"not json", "header"), (b"{" * 10, "query"), (b"x" * (2 * 1024 * 1024), "header")],
)
def test_a_wrong_key_is_a_401_before_the_body_is_read(
    client: TestClient, tenant: Tenant, body: bytes, where: str
) -> None:
    """With the key in the header or the query, a stranger learns nothing from the body's
    faults (a 400 for bad JSON, a 413 for size): the answer is the 401."""
    webhook = created(client, tenant)
    response = client.post(
        f"/v1/webhooks/{webhook['id']}/events",
        content=body,
        headers={"x-access-key": "tdw_nope"} if where == "header" else {},
        params={"access_key": "tdw_nope"} if where == "query" else {},
    )
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "unauthenticated"


def test_unknown_webhook_is_a_401(client: TestClient, tenant: Tenant) -> None:
    """Posting to a webhook id that does not exist is a 401, like a wrong key."""
    webhook = created(client, tenant)
    response = receive(client, "webhook-0000000000000000", ALERTMANAGER, webhook["access_key"])
    assert response.status_code == 401
    assert stored(client, tenant) == []


def test_key_in_the_query_parameter_works(client: TestClient, tenant: Tenant) -> None:
    """The key may come as ?access_key= for systems that cannot set headers."""
    webhook = created(client, tenant)
    response = receive(
        client, webhook["id"], ALERTMANAGER, params={"access_key": webhook["access_key"]}
    )
    assert response.status_code == 201, response.text
    assert len(stored(client, tenant)) == 2


def test_wrong_key_in_the_query_parameter_is_a_401(client: TestClient, tenant: Tenant) -> None:
    """A wrong ?access_key= is refused and stores nothing."""
    webhook = created(client, tenant)
    response = receive(client, webhook["id"], ALERTMANAGER, params={"access_key": "tdw_nope"})
    assert response.status_code == 401
    assert stored(client, tenant) == []


def test_key_in_a_cloudforet_body_works(client: TestClient, tenant: Tenant) -> None:
    """Cloudforet's {webhook_id, access_key, data} body is accepted; data is the payload kept."""
    webhook = created(client, tenant)
    body = {"webhook_id": webhook["id"], "access_key": webhook["access_key"], "data": ALERTMANAGER}
    response = receive(client, webhook["id"], body)
    assert response.status_code == 201, response.text
    events = stored(client, tenant)
    assert sorted(e["type"] for e in events) == [FIRING, RESOLVED]
    payload = client.get(f"/v1/events/{events[0]['id']}/payload", headers=auth(tenant.viewer))
    assert payload.json() == ALERTMANAGER
    assert webhook["access_key"] not in payload.text


@pytest.mark.parametrize("case", ["wrong-key", "other-webhook-id"])
def test_bad_cloudforet_body_is_a_401(client: TestClient, tenant: Tenant, case: str) -> None:
    """A Cloudforet body with a wrong key, or another webhook's id, stores nothing."""
    webhook = created(client, tenant)
    body = {"webhook_id": webhook["id"], "access_key": webhook["access_key"], "data": ALERTMANAGER}
    if case == "wrong-key":
        body["access_key"] = "tdw_nope"
    else:
        body["webhook_id"] = "webhook-0000000000000000"
    assert receive(client, webhook["id"], body).status_code == 401
    assert stored(client, tenant) == []


# --- rate limit ------------------------------------------------------------------------------


def test_rate_limit_answers_429_with_retry_after(client: TestClient, tenant: Tenant) -> None:
    """At 1 request a second, a second quick post is a 429 with Retry-After and stores nothing."""
    webhook = created(client, tenant, rate_limit=1)
    assert webhook["rate_limit"] == 1
    other = copy.deepcopy(ALERTMANAGER)
    other["alerts"][0]["fingerprint"] = "0000000000000001"
    first = receive(client, webhook["id"], ALERTMANAGER, webhook["access_key"])
    second = receive(client, webhook["id"], other, webhook["access_key"])
    assert first.status_code == 201
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "too_many_requests"
    assert int(second.headers["retry-after"]) >= 1
    assert len(stored(client, tenant)) == 2


def test_rate_limit_is_per_webhook(client: TestClient, tenant: Tenant) -> None:
    """One webhook over its limit does not stop another."""
    busy = created(client, tenant, rate_limit=1)
    calm = created(client, tenant, rate_limit=1)
    receive(client, busy["id"], ALERTMANAGER, busy["access_key"])
    assert receive(client, busy["id"], GRAFANA, busy["access_key"]).status_code == 429
    assert receive(client, calm["id"], ALERTMANAGER, calm["access_key"]).status_code == 201


def test_wrong_keys_do_not_use_up_the_rate_limit(client: TestClient, tenant: Tenant) -> None:
    """Refused (401) posts do not count against the webhook's limit."""
    webhook = created(client, tenant, rate_limit=1)
    for _ in range(3):
        assert receive(client, webhook["id"], ALERTMANAGER, "tdw_nope").status_code == 401
    assert receive(client, webhook["id"], ALERTMANAGER, webhook["access_key"]).status_code == 201


@pytest.mark.parametrize("rate_limit", [0, -1, 1e-300, 0.009, 20_000])
def test_out_of_range_rate_limit_is_a_400(
    client: TestClient, tenant: Tenant, rate_limit: float
) -> None:
    """A rate limit below one request a hundred seconds (its Retry-After would run to hundreds
    of digits) or above 10,000 a second is refused."""
    response = create(client, tenant.owner, tenant.root, rate_limit=rate_limit)
    assert response.status_code == 400
    assert listed(client, tenant.owner) == []


@pytest.mark.parametrize("rate_limit", ["nan", "inf", "NaN"])
def test_a_rate_limit_that_is_no_number_says_so(
    client: TestClient, tenant: Tenant, rate_limit: str
) -> None:
    response = create(client, tenant.owner, tenant.root, rate_limit=rate_limit)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "rate_limit: Input should be a finite number"
    assert listed(client, tenant.owner) == []


def test_a_body_that_is_not_json_is_a_bad_request(client: TestClient, tenant: Tenant) -> None:
    """Cut JSON is a 400 `bad_request`, as every other malformed request is."""
    response = client.post(
        "/v1/webhooks",
        content=b'{"group": ',
        headers={**auth(tenant.owner), "content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"


@pytest.mark.parametrize("default_type", [5, ["a"], "", "a b", "t" * 257])
def test_a_generic_mapping_default_type_must_be_an_event_type(
    client: TestClient, tenant: Tenant, default_type: Any
) -> None:
    """A default type no event could have is refused when the webhook is made, naming it, not
    at every post (which would blame the sender)."""
    mapping = {"kind": "generic", "default_type": default_type}
    response = create(client, tenant.owner, tenant.root, mapping=mapping)
    assert response.status_code == 400, response.text
    assert "mapping.default_type" in response.json()["error"]["message"]
    assert listed(client, tenant.owner) == []


# --- `tidings webhooks` ----------------------------------------------------------------------


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


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real `tidings serve` for this module's CLI tests."""
    with serving(tmp_path_factory.mktemp("webhooks-cli") / "tidings.db") as running:
        yield running


def root_and_owner(server: Server) -> tuple[str, str]:
    """A new tenant's root and an owner token, made by the CLI on the server's database."""
    env: dict[str, str | None] = {
        "TIDINGS_DATABASE_URL": database_url(server.database),
        "TIDINGS_TOKEN": None,
    }
    code, root, _ = invoke(env, "groups", "create", "--name", "acme")
    assert code == 0
    code, token, _ = invoke(env, "tokens", "create", "--group", root.strip(), "--role", "owner")
    assert code == 0
    return root.strip(), token.strip()


def test_webhooks_cli_create_list_delete(server: Server) -> None:
    """create prints the id (key on stderr, working once posted); list shows it; delete ends it."""
    root, owner = root_and_owner(server)
    env: dict[str, str | None] = {"TIDINGS_URL": server.url, "TIDINGS_TOKEN": owner}
    code, out, err = invoke(
        env, "webhooks", "create", "--group", root, "--name", "prom", "--mapping", "alertmanager"
    )
    assert code == 0, err
    webhook_id = out.strip()
    assert webhook_id.startswith("webhook-")
    key = err.split("access key (shown once): ")[1].split()[0]
    url = f"{server.url}/v1/webhooks/{webhook_id}/events"
    posted = httpx.post(url, json=ALERTMANAGER, headers={"x-access-key": key}, trust_env=False)
    assert posted.status_code == 201, posted.text

    code, out, err = invoke(env, "webhooks", "list", "--json")
    assert code == 0, err
    (entry,) = [json.loads(line) for line in out.splitlines()]
    assert (entry["id"], entry["name"], entry["mapping"]) == (
        webhook_id,
        "prom",
        {"kind": "alertmanager"},
    )
    assert key not in out
    code, table, _ = invoke(env, "webhooks", "list")
    assert code == 0
    (row,) = [line for line in table.splitlines() if webhook_id in line]
    assert [cell.strip() for cell in row.split("│")[1:-1]] == [
        webhook_id,
        "prom",
        root,
        "alertmanager",
        "100/s",
    ]

    code, out, err = invoke(env, "webhooks", "delete", webhook_id)
    assert code == 0, err
    assert (out, err) == ("", f"deleted webhook {webhook_id}; its access key no longer works\n")
    assert invoke(env, "webhooks", "list", "--json")[1] == ""
    again = httpx.post(url, json=GRAFANA, headers={"x-access-key": key}, trust_env=False)
    assert again.status_code == 401


def test_webhooks_cli_generic_mapping_as_json(server: Server) -> None:
    """create --mapping takes a generic mapping as JSON; a bad one fails with the API's message."""
    root, owner = root_and_owner(server)
    env: dict[str, str | None] = {"TIDINGS_URL": server.url, "TIDINGS_TOKEN": owner}
    code, out, err = invoke(
        env,
        "webhooks",
        "create",
        "--group",
        root,
        "--name",
        "g",
        "--mapping",
        json.dumps(GENERIC_MAPPING),
    )
    assert code == 0, err
    code, listing, _ = invoke(env, "webhooks", "list", "--json")
    assert json.loads(listing)["mapping"] == GENERIC_MAPPING
    code, out, err = invoke(
        env, "webhooks", "create", "--group", root, "--name", "g", "--mapping", "zabbix"
    )
    assert code == 1
    assert out == ""
    assert "(400)" in err


@pytest.mark.parametrize("bad", ["", ".", ".."])
def test_cli_delete_refuses_an_id_that_is_no_id(bad: str) -> None:
    """An empty id or a dot segment would resolve to another URL: refused before any request."""
    code, _, stderr = invoke(
        {"TIDINGS_URL": "http://127.0.0.1:9", "TIDINGS_TOKEN": "tdg_x"}, "webhooks", "delete", bad
    )
    assert (code, " ".join(stderr.split())) == (1, f"error: webhook {bad!r} is not an id")


@pytest.mark.parametrize(("rate", "every"), [(0.5, 2.0), (0.01, 100.0), (3.0, 1 / 3)])
def test_a_rate_admits_one_request_every_one_over_rate_seconds(rate: float, every: float) -> None:
    """Below one a second too: a bucket that holds less than one request never admitted any."""
    now = [1_000.0]
    limiter = RateLimiter(clock=lambda: now[0])
    assert limiter.admit("w", rate) == 0.0
    for _ in range(3):
        while limiter.admit("w", rate) == 0.0:  # the rest of a burst (rates of one and more)
            pass
        wait = limiter.admit("w", rate)
        assert 0 < wait <= every + 1e-9
        now[0] += wait + 1e-9  # as a client waits: not a float rounding short
        assert limiter.admit("w", rate) == 0.0
