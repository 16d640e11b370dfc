"""The delivery operations API over the ASGI app: listing, retry and replay, with real receivers."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from fastapi.testclient import TestClient

from tests.conftest import Tenant, auth, event, make_token
from tests.receivers import Received, Receiver
from tidings import groups
from tidings.config import Settings
from tidings.delivery.schedule import Schedule
from tidings.timestamps import from_ns

Receivers = Callable[..., Receiver]
Deliveries = list[dict[str, Any]]


@pytest.fixture
def schedule() -> Schedule:
    """One attempt: a failing receiver fails the delivery at once (tests may parametrize it)."""
    return Schedule((0,), jitter=0)


@pytest.fixture
def settings(database_url: str, schedule: Schedule) -> Settings:
    """Settings that let deliveries reach receivers on 127.0.0.1, with a short schedule."""
    return Settings(
        database_url=database_url,
        allow_private_sinks=True,
        delivery_poll_s=0.05,
        delivery_timeout_s=5.0,
        public_url="http://tidings.test",
        retry_schedule=schedule,
    )


def by_event_id(failing: set[str]) -> Callable[[Received], web.Response]:
    """An answer: 500 for the events in `failing`, 200 for the rest."""

    def respond(request: Received) -> web.Response:
        if request.header("Ce-Id") in failing:
            return web.Response(status=500, text="nope")
        return web.Response(status=200, text="ok")

    return respond


def subscribe(client: TestClient, token: str, parent: str, sink: str) -> str:
    """A subscription of `parent` to dev.example.* events; its id."""
    response = client.post(
        "/v1/subscriptions",
        json={"parent": parent, "sink": sink, "types": ["dev.example.*"]},
        headers=auth(token),
    )
    assert response.status_code == 201, response.text
    sub_id: str = response.json()["id"]
    return sub_id


def ingest(client: TestClient, token: str, body: dict[str, Any]) -> None:
    """Store one event."""
    response = client.post("/v1/events", json=body, headers=auth(token))
    assert response.status_code == 201, response.text


def list_deliveries(client: TestClient, token: str, sub_id: str, **params: Any) -> dict[str, Any]:
    """GET the subscription's deliveries; the JSON answer."""
    response = client.get(
        f"/v1/subscriptions/{sub_id}/deliveries", params=params, headers=auth(token)
    )
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


def settled(
    client: TestClient, token: str, sub_id: str, count: int, timeout: float = 10.0
) -> Deliveries:
    """Poll until the subscription has `count` deliveries and none is pending; them, newest first."""
    deadline = time.monotonic() + timeout
    while True:
        found: Deliveries = list_deliveries(client, token, sub_id)["deliveries"]
        if len(found) == count and all(d["status"] != "pending" for d in found):
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"deliveries did not settle: {found}")
        time.sleep(0.02)


def test_deliveries_are_listed_with_their_attempts(
    client: TestClient, tenant: Tenant, receivers: Receivers
) -> None:
    """Each delivery shows its event, status and every attempt, newest delivery first."""
    receiver = receivers(by_event_id({"b"}))
    sub_id = subscribe(client, tenant.owner, tenant.root, receiver.url)
    for event_id in ("a", "b", "c"):
        ingest(client, tenant.producer, event(tenant.root, id=event_id))
    found = settled(client, tenant.viewer, sub_id, 3)
    assert [d["event"]["id"] for d in found] == ["c", "b", "a"]
    assert [d["status"] for d in found] == ["delivered", "failed", "delivered"]
    for delivery in found:
        assert delivery["subscription"] == sub_id
        assert delivery["event"]["type"] == "dev.example.widget.created.v1"
        assert delivery["event"]["source"] == "https://platform.example/widgets"
        assert delivery["next_attempt_at"] is None
        [attempt] = delivery["attempts"]
        assert attempt["number"] == 1
        assert attempt["error"] is None
        assert attempt["latency_ms"] > 0
        assert attempt["at"].endswith("Z")
    failed = found[1]["attempts"][0]
    assert (failed["status_code"], failed["response"]) == (500, "nope")
    assert (found[0]["attempts"][0]["status_code"], found[0]["attempts"][0]["response"]) == (
        200,
        "ok",
    )


def test_deliveries_filter_by_status(
    client: TestClient, tenant: Tenant, receivers: Receivers
) -> None:
    """?status= lists only deliveries with that status; an unknown status is a 400."""
    receiver = receivers(by_event_id({"b"}))
    sub_id = subscribe(client, tenant.owner, tenant.root, receiver.url)
    for event_id in ("a", "b", "c"):
        ingest(client, tenant.producer, event(tenant.root, id=event_id))
    settled(client, tenant.viewer, sub_id, 3)

    def ids(status: str) -> list[str]:
        page = list_deliveries(client, tenant.viewer, sub_id, status=status)
        return [d["event"]["id"] for d in page["deliveries"]]

    assert ids("delivered") == ["c", "a"]
    assert ids("failed") == ["b"]
    assert ids("pending") == []
    bad = client.get(
        f"/v1/subscriptions/{sub_id}/deliveries",
        params={"status": "lost"},
        headers=auth(tenant.viewer),
    )
    assert bad.status_code == 400


def test_deliveries_are_paginated_with_a_cursor(
    client: TestClient, tenant: Tenant, receivers: Receivers
) -> None:
    """limit and next_cursor walk all deliveries once, newest first; an altered cursor is a 400."""
    receiver = receivers()
    sub_id = subscribe(client, tenant.owner, tenant.root, receiver.url)
    for index in range(5):
        ingest(client, tenant.producer, event(tenant.root, id=f"e-{index}"))
    everything = settled(client, tenant.viewer, sub_id, 5)
    seen: list[str] = []
    pages: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        page = list_deliveries(client, tenant.viewer, sub_id, **params)
        seen += [d["id"] for d in page["deliveries"]]
        pages.append(len(page["deliveries"]))
        cursor = page["next_cursor"]
        assert page["has_more"] is (cursor is not None)
        if cursor is None:
            break
    assert pages == [2, 2, 1]
    assert seen == [d["id"] for d in everything]
    assert [d["event"]["id"] for d in everything] == [f"e-{i}" for i in range(4, -1, -1)]
    first = list_deliveries(client, tenant.viewer, sub_id, limit=2)["next_cursor"]
    tampered = first[:-2] + ("AA" if not first.endswith("AA") else "BB")
    response = client.get(
        f"/v1/subscriptions/{sub_id}/deliveries",
        params={"limit": 2, "cursor": tampered},
        headers=auth(tenant.viewer),
    )
    assert response.status_code == 400


def test_a_cursor_of_another_listing_is_a_400_both_ways(
    client: TestClient, tenant: Tenant, receivers: Receivers
) -> None:
    """An events cursor is no position of deliveries, nor a deliveries cursor one of events:
    each listing refuses the other's instead of answering an arbitrary page."""
    sub_id = subscribe(client, tenant.owner, tenant.root, receivers().url)
    for index in range(3):
        ingest(client, tenant.producer, event(tenant.root, id=f"e-{index}"))
    settled(client, tenant.viewer, sub_id, 3)
    events_cursor = client.get(
        "/v1/events", params={"limit": 1}, headers=auth(tenant.viewer)
    ).json()["next_cursor"]
    deliveries_cursor = list_deliveries(client, tenant.viewer, sub_id, limit=1)["next_cursor"]
    for path, cursor in (
        (f"/v1/subscriptions/{sub_id}/deliveries", events_cursor),
        ("/v1/events", deliveries_cursor),
    ):
        answer = client.get(path, params={"cursor": cursor}, headers=auth(tenant.viewer))
        assert answer.status_code == 400, (path, answer.text)
        assert "cursor" in answer.json()["error"]["message"]


def test_retry_of_a_failed_delivery_sends_it_again(
    client: TestClient, tenant: Tenant, receivers: Receivers
) -> None:
    """POST /v1/deliveries/{id}/retry on a failed delivery answers 202 and it is delivered."""
    calls = itertools.count()
    receiver = receivers(
        lambda _: web.Response(status=500 if next(calls) == 0 else 200, text="try")
    )
    sub_id = subscribe(client, tenant.owner, tenant.root, receiver.url)
    ingest(client, tenant.producer, event(tenant.root, id="once"))
    [failed] = settled(client, tenant.viewer, sub_id, 1)
    assert failed["status"] == "failed"

    response = client.post(f"/v1/deliveries/{failed['id']}/retry", headers=auth(tenant.owner))
    assert response.status_code == 202, response.text
    assert response.json() == {"id": failed["id"], "status": "pending"}
    got = receiver.wait_for(2)
    assert [r.header("Ce-Id") for r in got] == ["once", "once"]
    [done] = settled(client, tenant.viewer, sub_id, 1)
    assert done["status"] == "delivered"
    assert [a["status_code"] for a in done["attempts"]] == [500, 200]
    assert [a["number"] for a in done["attempts"]] == [1, 2]
    time.sleep(0.2)
    assert len(receiver.received()) == 2


@pytest.mark.parametrize("schedule", [Schedule((0, 3600), jitter=0)])
def test_retry_of_a_pending_delivery_is_refused(
    client: TestClient, tenant: Tenant, receivers: Receivers
) -> None:
    """A delivery still waiting for its next attempt cannot be retried: 422."""
    receiver = receivers(lambda _: web.Response(status=500))
    sub_id = subscribe(client, tenant.owner, tenant.root, receiver.url)
    ingest(client, tenant.producer, event(tenant.root))
    receiver.wait_for(1)
    deadline = time.monotonic() + 10
    while True:
        [pending] = list_deliveries(client, tenant.viewer, sub_id)["deliveries"]
        if pending["attempts"] or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert pending["status"] == "pending"
    assert pending["next_attempt_at"] is not None
    response = client.post(f"/v1/deliveries/{pending['id']}/retry", headers=auth(tenant.owner))
    assert response.status_code == 422, response.text
    assert len(receiver.received()) == 1


def test_retry_of_an_unknown_or_invisible_delivery_is_404(
    client: TestClient, tenant: Tenant, receivers: Receivers
) -> None:
    """Unknown ids, malformed ids and deliveries outside the token's subtree are all 404."""
    receiver = receivers(lambda _: web.Response(status=500))
    team = groups.new_child(tenant.root)
    sub_id = subscribe(client, tenant.owner, team, receiver.url)
    ingest(client, tenant.producer, event(team))
    [failed] = settled(client, tenant.viewer, sub_id, 1)
    sibling = make_token(client, groups.new_child(tenant.root), "owner")
    for delivery_id, token in [
        ("999999", tenant.owner),
        ("not-a-number", tenant.owner),
        (failed["id"], sibling),
    ]:
        response = client.post(f"/v1/deliveries/{delivery_id}/retry", headers=auth(token))
        assert response.status_code == 404, (delivery_id, response.text)


def test_replay_queues_matching_events_since(
    client: TestClient, tenant: Tenant, receivers: Receivers
) -> None:
    """Replay since a time queues the subscription's matching events stored from then on, once more."""
    receiver = receivers()
    sub_id = subscribe(client, tenant.owner, tenant.root, receiver.url)
    ingest(client, tenant.producer, event(tenant.root, id="before"))
    receiver.wait_for(1)
    time.sleep(0.01)
    since = from_ns(time.time_ns()).render()
    time.sleep(0.01)
    ingest(client, tenant.producer, event(tenant.root, id="after-1"))
    ingest(client, tenant.producer, event(tenant.root, id="other", type="dev.other.thing.v1"))
    ingest(client, tenant.producer, event(tenant.root, id="after-2"))
    settled(client, tenant.viewer, sub_id, 3)
    assert len(receiver.received()) == 3

    response = client.post(
        f"/v1/subscriptions/{sub_id}/replay", json={"since": since}, headers=auth(tenant.owner)
    )
    assert response.status_code == 202, response.text
    assert response.json() == {"queued": 2}
    got = receiver.wait_for(5)
    assert sorted(r.header("Ce-Id") for r in got[3:]) == ["after-1", "after-2"]  # sent at once
    found = settled(client, tenant.viewer, sub_id, 5)
    assert [d["event"]["id"] for d in found] == [
        "after-2",
        "after-1",
        "after-2",
        "after-1",
        "before",
    ]
    time.sleep(0.1)
    assert len(receiver.received()) == 5


def test_replay_needs_an_rfc3339_since(
    client: TestClient, tenant: Tenant, receivers: Receivers
) -> None:
    """A missing or malformed `since` is a 400 and nothing is queued."""
    sub_id = subscribe(client, tenant.owner, tenant.root, receivers().url)
    for body in ({}, {"since": "yesterday"}):
        response = client.post(
            f"/v1/subscriptions/{sub_id}/replay", json=body, headers=auth(tenant.owner)
        )
        assert response.status_code == 400, response.text
    assert list_deliveries(client, tenant.viewer, sub_id)["deliveries"] == []


def test_replay_since_beyond_what_is_stored_bounds_as_the_earliest_or_latest_time(
    client: TestClient, tenant: Tenant, receivers: Receivers
) -> None:
    """A `since` before every stored time queues everything; one after every stored time,
    nothing (they were a 500 on SQLite: the years 0001 and 9999 lie beyond 64 bits of ns)."""
    receiver = receivers()
    sub_id = subscribe(client, tenant.owner, tenant.root, receiver.url)
    ingest(client, tenant.producer, event(tenant.root, id="one"))
    settled(client, tenant.viewer, sub_id, 1)
    for since, queued in (("9999-12-31T23:59:59Z", 0), ("0001-01-01T00:00:00Z", 1)):
        response = client.post(
            f"/v1/subscriptions/{sub_id}/replay", json={"since": since}, headers=auth(tenant.owner)
        )
        assert response.status_code == 202, response.text
        assert response.json() == {"queued": queued}
    receiver.wait_for(2)


def test_viewer_cannot_retry_or_replay(
    client: TestClient, tenant: Tenant, receivers: Receivers
) -> None:
    """Retry and replay need the editor role: a viewer gets 403 (and may still list)."""
    receiver = receivers(lambda _: web.Response(status=500))
    sub_id = subscribe(client, tenant.owner, tenant.root, receiver.url)
    ingest(client, tenant.producer, event(tenant.root))
    [failed] = settled(client, tenant.viewer, sub_id, 1)
    retry = client.post(f"/v1/deliveries/{failed['id']}/retry", headers=auth(tenant.viewer))
    assert retry.status_code == 403
    replay = client.post(
        f"/v1/subscriptions/{sub_id}/replay",
        json={"since": "2000-01-01T00:00:00Z"},
        headers=auth(tenant.viewer),
    )
    assert replay.status_code == 403
    [still] = list_deliveries(client, tenant.viewer, sub_id)["deliveries"]
    assert still["status"] == "failed"
    assert len(receiver.received()) == 1


def test_stranger_tenant_gets_404(client: TestClient, tenant: Tenant, receivers: Receivers) -> None:
    """Another tenant's owner cannot list, retry or replay: every answer is 404."""
    receiver = receivers(lambda _: web.Response(status=500))
    sub_id = subscribe(client, tenant.owner, tenant.root, receiver.url)
    ingest(client, tenant.producer, event(tenant.root))
    [failed] = settled(client, tenant.viewer, sub_id, 1)
    stranger = make_token(client, groups.new_root(), "owner")
    listed = client.get(f"/v1/subscriptions/{sub_id}/deliveries", headers=auth(stranger))
    retry = client.post(f"/v1/deliveries/{failed['id']}/retry", headers=auth(stranger))
    replay = client.post(
        f"/v1/subscriptions/{sub_id}/replay",
        json={"since": "2000-01-01T00:00:00Z"},
        headers=auth(stranger),
    )
    assert [listed.status_code, retry.status_code, replay.status_code] == [404, 404, 404]
    assert len(receiver.received()) == 1
