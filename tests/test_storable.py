"""What storage cannot hold, in a request: a 400 naming where it is, nothing stored, on both
backends.

PostgreSQL's text cannot hold NUL; without these checks a NUL in an actor, an eventkey, a
filter or a management body failed inside a query (500 on PostgreSQL) or was stored (SQLite).
Lone surrogates, NaN and integers beyond 64 bits in a management body failed in the JSON
encoder or the driver (500 on both).
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import TEST_TYPE, Tenant, auth, event
from tidings.api.storable import shown, unstorable_at

BATCH = "application/cloudevents-batch+json"


def stored_count(client: TestClient, tenant: Tenant) -> int:
    page = client.get("/v1/events", params={"limit": 100}, headers=auth(tenant.viewer))
    assert page.status_code == 200
    return len(page.json()["events"])


def refused(answer: Any, *words: str) -> str:
    """The message of a 400 answer, which must name each of `words`."""
    assert answer.status_code == 400, answer.text
    message: str = answer.json()["error"]["message"]
    for word in words:
        assert word in message
    return message


@pytest.mark.parametrize(
    ("overrides", "where"),
    [
        ({"data": {"actor": {"subject": "alice\x00"}, "body": {}}}, "data.actor.subject"),
        ({"eventkey": "alert\x001"}, "eventkey"),
    ],
)
def test_an_event_whose_stored_texts_hold_nul_is_refused(
    client: TestClient, tenant: Tenant, overrides: dict[str, Any], where: str
) -> None:
    answer = client.post(
        "/v1/events", json=event(tenant.root, **overrides), headers=auth(tenant.producer)
    )
    refused(answer, where, "NUL")
    assert stored_count(client, tenant) == 0


def test_a_batch_holding_one_such_event_stores_none_and_names_it(
    client: TestClient, tenant: Tenant
) -> None:
    batch = [event(tenant.root), event(tenant.root, eventkey="\x00"), event(tenant.root)]
    answer = client.post(
        "/v1/events",
        json=batch,
        headers={**auth(tenant.producer), "content-type": BATCH},
    )
    refused(answer, "1 of 3")
    assert answer.json()["error"]["details"] == [
        {"index": 1, "message": "eventkey must not hold NUL (\\u0000)"}
    ]
    assert stored_count(client, tenant) == 0


def test_a_binary_mode_header_decoding_to_nul_is_refused(
    client: TestClient, tenant: Tenant
) -> None:
    headers = {
        **auth(tenant.producer),
        "content-type": "application/json",
        "ce-specversion": "1.0",
        "ce-id": "binary-1",
        "ce-source": "https://platform.example/widgets",
        "ce-type": TEST_TYPE,
        "ce-group": tenant.root,
        "ce-eventkey": "key%00",
    }
    answer = client.post(
        "/v1/events", content=b'{"actor": {"subject": "a"}, "body": {}}', headers=headers
    )
    refused(answer, "eventkey", "NUL")
    assert stored_count(client, tenant) == 0


def test_data_may_hold_nul_and_reads_back_intact(client: TestClient, tenant: Tenant) -> None:
    """The data is stored as JSON text, where NUL is the escape `\\u0000`."""
    data = {"actor": {"subject": "a", "email": "a\x00@example.com"}, "body": {"k\x00": "v\x00"}}
    answer = client.post(
        "/v1/events", json=event(tenant.root, data=data), headers=auth(tenant.producer)
    )
    assert answer.status_code == 201, answer.text
    [stored] = client.get("/v1/events", headers=auth(tenant.viewer)).json()["events"]
    assert stored["data"] == data


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v1/events", {"actor": "a\x00b"}),
        ("/v1/events", {"eventkey": "\x00"}),
        ("/v1/events", {"source": "s\x00"}),
        ("/v1/events", {"subject": "s\x00*"}),
        ("/v1/events", {"type": "t\x00"}),
        ("/v1/events/stats", {"actor": "\x00", "by": "type"}),
        ("/v1/events/a%00b", {}),
        ("/v1/subscriptions/sub%00", {}),
    ],
)
def test_a_url_holding_nul_is_refused(
    client: TestClient, tenant: Tenant, path: str, params: dict[str, str]
) -> None:
    answer = client.get(path, params=params, headers=auth(tenant.owner))
    where = f"query parameter {next(iter(params))!r}" if params else "the path"
    assert refused(answer).startswith(f"{where} holds %00 (NUL)")


@pytest.mark.parametrize(
    ("path", "body", "where"),
    [
        ("/v1/groups", {"name": "team\x00"}, "name"),
        ("/v1/tokens", {"roles": ["viewer"], "subject": "\x00"}, "subject"),
        (
            "/v1/types",
            {"type": "dev.x.v1", "schema": {"description": "\x00"}},
            "schema.description",
        ),
        (
            "/v1/types",
            {"type": "dev.x.v1", "example": {"body": {"k\x00": 1}}},
            "example.body.k\\u0000 must not hold NUL",
        ),
        ("/v1/subscriptions", {"types": ["\ud800"]}, "types[0] must not hold a lone surrogate"),
        ("/v1/types", {"type": "p", "schema": {"maximum": 2**70}}, "schema.maximum is an integer"),
        ("/v1/types", {"type": "p", "example": {"body": {"x": math.nan}}}, "example.body.x is not"),
        ("/v1/webhooks", {"mapping": {"default_type": 2**70}}, "mapping.default_type is an"),
    ],
)
def test_a_management_body_storage_cannot_hold_is_refused_naming_where(
    client: TestClient, tenant: Tenant, path: str, body: dict[str, Any], where: str
) -> None:
    # As JSON can carry them: escaped (a lone surrogate), or as the JavaScript names (NaN).
    sent = json.dumps(body).encode()
    headers = {**auth(tenant.owner), "content-type": "application/json"}
    refused(client.post(path, content=sent, headers=headers), where)
    assert unstorable_at(client.get(path, headers=auth(tenant.owner)).json()) is None


def test_unstorable_at_names_the_first_place_and_its_fault() -> None:
    assert unstorable_at({"a": [1, {"b": "x"}], "c": None, "d": 2.5, "e": -(2**63)}) is None
    assert unstorable_at("\x00") == ("", "must not hold NUL (\\u0000)")
    assert unstorable_at({"a": [1, {"b": "x\x00"}]}) == ("a[1].b", "must not hold NUL (\\u0000)")
    assert unstorable_at({"a": {"k\x00": 1}}) == ("a.k\x00", "must not hold NUL (\\u0000)")
    assert unstorable_at([{"ok": "y"}, "\ud800"])[0] == "[1]"  # type: ignore[index]
    assert unstorable_at({"n": 2**63}) == ("n", "is an integer beyond 64 bits")
    assert unstorable_at({"n": float("nan")}) == ("n", "is not a number (NaN or Infinity)")
    assert unstorable_at({"b": True, "c": "café"}) is None
    assert shown("a.k\x00.\udc80.é") == "a.k\\u0000.\\udc80.é"
