"""POST /v1/events: structured, batch and binary mode; every refusal stores nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import TEST_TYPE, Tenant, auth, event, make_token

BATCH = "application/cloudevents-batch+json"
CE_JSON = "application/cloudevents+json"


def post(
    client: TestClient,
    token: str,
    body: Any,
    content_type: str = "application/json",
    **headers: str,
) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(
        "/v1/events", content=raw, headers={**auth(token), "content-type": content_type, **headers}
    )


def count(client: TestClient, tenant: Tenant) -> int:
    return len(client.get("/v1/events", headers=auth(tenant.viewer)).json()["events"])


def test_single_event_is_stored_and_answered_as_cloudevents_json(
    client: TestClient, tenant: Tenant
) -> None:
    """A structured event answers 201 with the stored event, all attributes rendered."""
    response = post(
        client, tenant.producer, event(tenant.root, id="e-1", time="2023-01-31T22:36:41.42658Z")
    )
    assert response.status_code == 201
    stored = response.json()
    assert stored["specversion"] == "1.0"
    assert stored["id"] == "e-1"
    assert stored["time"] == "2023-01-31T22:36:41.42658Z"
    assert stored["group"] == tenant.root
    assert stored["audience"] == "customer"
    assert stored["datacontenttype"] == "application/json"
    assert stored["data"] == {"actor": {"subject": "user-1"}, "body": {"name": "w1"}}
    assert "storedtime" in stored


def test_cloudevents_json_content_type_is_accepted(client: TestClient, tenant: Tenant) -> None:
    """application/cloudevents+json is one event in structured mode."""
    assert post(client, tenant.producer, event(tenant.root), CE_JSON).status_code == 201


def test_nanosecond_time_keeps_its_precision(client: TestClient, tenant: Tenant) -> None:
    """A time given with nanoseconds is rendered with the same nine digits."""
    stored = post(
        client, tenant.producer, event(tenant.root, time="2026-06-17T22:32:33.12323813Z")
    ).json()
    assert stored["time"] == "2026-06-17T22:32:33.12323813Z"


def test_time_with_an_offset_is_rendered_in_utc(client: TestClient, tenant: Tenant) -> None:
    """An offset time is stored as the same instant in UTC."""
    stored = post(
        client, tenant.producer, event(tenant.root, time="2024-05-01T10:00:00.5+02:00")
    ).json()
    assert stored["time"] == "2024-05-01T08:00:00.5Z"


def test_missing_id_is_a_generated_uuidv7_and_ids_ascend(
    client: TestClient, tenant: Tenant
) -> None:
    """Generated ids are version-7 UUIDs in ascending order."""
    ids = [post(client, tenant.producer, event(tenant.root)).json()["id"] for _ in range(5)]
    assert all(i[14] == "7" for i in ids)
    assert ids == sorted(ids)


def test_missing_time_is_the_ingest_time(client: TestClient, tenant: Tenant) -> None:
    """Without a time, the event's time is when it was stored."""
    stored = post(client, tenant.producer, event(tenant.root)).json()
    assert stored["time"] == stored["storedtime"]


def test_extension_attributes_are_kept(client: TestClient, tenant: Tenant) -> None:
    """requestid, description and other extensions round-trip."""
    stored = post(
        client,
        tenant.producer,
        event(tenant.root, requestid="27a532f4", description="made a widget", tier=3),
    ).json()
    assert (stored["requestid"], stored["description"], stored["tier"]) == (
        "27a532f4",
        "made a widget",
        3,
    )


def test_repeat_is_answered_with_the_stored_event_and_stored_once(
    client: TestClient, tenant: Tenant
) -> None:
    """The same event sent again is a 200 with the stored one."""
    first = post(client, tenant.producer, event(tenant.root, id="dup"))
    again = post(client, tenant.producer, event(tenant.root, id="dup"))
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert count(client, tenant) == 1


def test_same_source_and_id_with_other_content_is_a_conflict(
    client: TestClient, tenant: Tenant
) -> None:
    """Reusing (source, id) for different content is a 409 and changes nothing."""
    post(client, tenant.producer, event(tenant.root, id="dup"))
    response = post(client, tenant.producer, event(tenant.root, id="dup", subject="other"))
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"
    assert count(client, tenant) == 1


def test_ids_are_unique_per_tenant_not_globally(client: TestClient, tenant: Tenant) -> None:
    """Another tenant may use the same (source, id): it can neither probe nor pre-claim ids."""
    from tidings import groups

    other_root = groups.new_root()
    other = make_token(client, other_root, "producer")
    assert post(client, other, event(other_root, id="shared", subject="theirs")).status_code == 201
    assert post(client, tenant.producer, event(tenant.root, id="shared")).status_code == 201


def test_batch_is_stored_whole(client: TestClient, tenant: Tenant) -> None:
    """A batch answers 201 with every stored event, in order."""
    batch = [event(tenant.root, id=f"b-{i}") for i in range(3)]
    response = post(client, tenant.producer, batch, BATCH)
    assert response.status_code == 201
    assert [e["id"] for e in response.json()["events"]] == ["b-0", "b-1", "b-2"]
    assert count(client, tenant) == 3


def test_batch_mixing_repeats_duplicates_and_new_events(client: TestClient, tenant: Tenant) -> None:
    """A stored repeat answers its stored event, a duplicate within the batch its first copy,
    and the new events are stored once each, in the batch's order."""
    first = post(client, tenant.producer, event(tenant.root, id="old")).json()
    batch = [
        event(tenant.root, id="n-1"),
        event(tenant.root, id="old"),
        event(tenant.root, id="n-2"),
        event(tenant.root, id="n-1"),
        event(tenant.root, id="n-3"),
    ]
    response = post(client, tenant.producer, batch, BATCH)
    assert response.status_code == 201
    answered = response.json()["events"]
    assert [e["id"] for e in answered] == ["n-1", "old", "n-2", "n-1", "n-3"]
    assert answered[1] == first
    assert answered[3] == answered[0]
    listed = client.get("/v1/events", params={"order": "asc"}, headers=auth(tenant.viewer))
    assert [e["id"] for e in listed.json()["events"]] == ["old", "n-1", "n-2", "n-3"]


def test_nul_characters_in_data_and_extensions_are_stored_as_sent(
    client: TestClient, tenant: Tenant
) -> None:
    """A NUL in a string of the data or of an extension round-trips (JSON escapes it)."""
    sent = event(tenant.root, id="nul", note="a\x00b")
    sent["data"]["body"]["text"] = "x\x00y"
    batch = [sent, event(tenant.root, id="plain")]
    response = post(client, tenant.producer, batch, BATCH)
    assert response.status_code == 201
    stored = client.get("/v1/events/nul", headers=auth(tenant.viewer)).json()
    assert stored["note"] == "a\x00b"
    assert stored["data"]["body"]["text"] == "x\x00y"
    assert count(client, tenant) == 2


def test_batch_with_a_bad_item_stores_nothing_and_names_its_index(
    client: TestClient, tenant: Tenant
) -> None:
    """One invalid item refuses the batch and the error names each bad index."""
    batch = [
        event(tenant.root),
        {"specversion": "1.0", "type": "x"},
        event(tenant.root),
        event("UPPER"),
    ]
    response = post(client, tenant.producer, batch, BATCH)
    assert response.status_code == 400
    assert [d["index"] for d in response.json()["error"]["details"]] == [1, 3]
    assert count(client, tenant) == 0


def test_batch_with_a_conflict_stores_nothing(client: TestClient, tenant: Tenant) -> None:
    """A conflict in a batch rolls the whole batch back."""
    post(client, tenant.producer, event(tenant.root, id="taken"))
    batch = [event(tenant.root, id="new"), event(tenant.root, id="taken", subject="changed")]
    response = post(client, tenant.producer, batch, BATCH)
    assert response.status_code == 409
    assert response.json()["error"]["details"][0]["index"] == 1
    assert count(client, tenant) == 1


def test_two_different_events_with_one_id_in_a_batch_are_one_conflict_on_both_backends(
    client: TestClient, tenant: Tenant
) -> None:
    """The batch's second event with a key the first has, with other content: a 409 naming it
    as such (not as stored with other content: nothing was), and nothing stored."""
    batch = [
        event(tenant.root, id="new"),
        event(tenant.root, id="dup"),
        event(tenant.root, id="dup", subject="changed"),
    ]
    response = post(client, tenant.producer, batch, BATCH)
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["message"] == (
        "the batch holds two different events with source"
        " 'https://platform.example/widgets' and id 'dup'"
    )
    assert error["details"] == [
        {"index": 2, "source": "https://platform.example/widgets", "id": "dup"}
    ]
    assert count(client, tenant) == 0


def test_batch_over_a_thousand_events_is_too_large(client: TestClient, tenant: Tenant) -> None:
    """A batch holds at most 1,000 events."""
    batch = [event(tenant.root) for _ in range(1001)]
    assert post(client, tenant.producer, batch, BATCH).status_code == 413
    assert count(client, tenant) == 0


def test_binary_mode_event_is_stored(client: TestClient, tenant: Tenant) -> None:
    """ce-* headers and the data as body make one event, percent-decoded."""
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "bin-1",
        "ce-source": "https://platform.example/x",
        "ce-type": TEST_TYPE,
        "ce-subject": "caf%C3%A9%20menu",
        "ce-group": tenant.root,
        "ce-requestid": "r-1",
    }
    data = {"actor": {"subject": "user-1"}, "body": {}}
    response = post(client, tenant.producer, data, "application/json", **headers)
    assert response.status_code == 201
    stored = response.json()
    assert (stored["id"], stored["subject"], stored["requestid"]) == ("bin-1", "café menu", "r-1")
    assert stored["data"] == data


def test_binary_mode_with_another_specversion_is_refused(
    client: TestClient, tenant: Tenant
) -> None:
    """ce-specversion must be 1.0."""
    headers = {"ce-specversion": "0.3", "ce-source": "s", "ce-type": "t", "ce-group": tenant.root}
    response = post(client, tenant.producer, {"actor": {"subject": "u"}, "body": {}}, **headers)
    assert response.status_code == 400
    assert "specversion" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"source": None}, "source"),
        ({"type": None}, "type"),
        ({"group": None}, "group"),
        ({"specversion": "0.3"}, "specversion"),
        ({"time": "yesterday"}, "time"),
        ({"time": "2024-02-30T00:00:00Z"}, "time"),
        ({"time": "3000-01-01T00:00:00Z"}, "time"),
        ({"group": "Acme/Team"}, "group"),
        ({"group": "a//b"}, "group"),
        ({"group": "a/../b"}, "group"),
        ({"group": "/a"}, "group"),
        ({"group": "a/"}, "group"),
        ({"group": "a%2Fb"}, "group"),
        ({"group": "grüppe"}, "group"),
        ({"data": {"body": {}}}, "actor"),
        ({"data": {"actor": {"subject": "u"}}}, "body"),
        ({"data": {"actor": {"subject": "u", "ip": "not-an-ip"}, "body": {}}}, "ip"),
        ({"data": "text"}, "data"),
        ({"Bad-Name": "x"}, "Bad-Name"),
        ({"storedtime": "2024-01-01T00:00:00Z"}, "storedtime"),
    ],
)
def test_malformed_event_is_a_400_naming_the_problem(
    client: TestClient, tenant: Tenant, change: dict[str, Any], needle: str
) -> None:
    """Each malformed attribute is refused with 400, the message naming it, and nothing stored."""
    body = event(tenant.root)
    for key, value in change.items():
        if value is None:
            body.pop(key)
        else:
            body[key] = value
    response = post(client, tenant.producer, body)
    assert response.status_code == 400, response.text
    assert needle in response.json()["error"]["message"]
    assert count(client, tenant) == 0


def test_malformed_json_is_a_400(client: TestClient, tenant: Tenant) -> None:
    """A body that is not JSON is refused."""
    response = post(client, tenant.producer, b'{"source": ')
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]["message"]


def _with_number(tenant: Tenant, number: str, **attributes: Any) -> bytes:
    """An event whose data's body holds `number` as written (json.dumps could not)."""
    sent = event(tenant.root, data={"actor": {"subject": "u"}, "body": {"n": 0}}, **attributes)
    return json.dumps(sent).replace('"n": 0', f'"n": {number}').encode()


@pytest.mark.parametrize(
    ("number", "shown"),
    [
        ("18446744073709551616", "18446744073709551616"),  # 2**64
        ("-9223372036854775809", "-9223372036854775809"),  # -2**63 - 1
        ("1" * 300, "11111111111111111111...(300 digits)"),
    ],
)
def test_an_integer_beyond_64_bits_is_a_400_naming_it(
    client: TestClient, tenant: Tenant, number: str, shown: str
) -> None:
    """It would come back as a float with other digits: refused, in every mode, and nothing is
    stored."""
    one = _with_number(tenant, number)
    batch = b"[" + _with_number(tenant, "1", id="fine") + b"," + one + b"]"
    binary = {
        "ce-specversion": "1.0",
        "ce-source": "https://platform.example/x",
        "ce-type": TEST_TYPE,
        "ce-group": tenant.root,
    }
    data = f'{{"actor": {{"subject": "u"}}, "body": {{"n": {number}}}}}'.encode()
    for response, what in (
        (post(client, tenant.producer, one), "body"),
        (post(client, tenant.producer, batch, BATCH), "body"),
        (post(client, tenant.producer, data, **binary), "data"),
    ):
        assert response.status_code == 400, response.text
        assert response.json()["error"]["message"] == (
            f"the {what} holds the integer {shown}, beyond 64 bits: it would not be kept"
            " exactly; send it as a string"
        )
    assert count(client, tenant) == 0


def test_a_long_number_deeper_than_the_standard_library_reads_is_a_400(
    client: TestClient, tenant: Tenant
) -> None:
    """A run of digits sends the body to a second reading, which nests less deep than orjson:
    refused as too deep (as it would be anyway), never a 500."""
    nested = "[" * 1000 + "12345678901234567890" + "]" * 1000  # 20 digits, within 64 bits
    response = post(client, tenant.producer, _with_number(tenant, nested))
    assert response.status_code == 400, response.text
    assert "more than 254 deep" in response.json()["error"]["message"]
    assert count(client, tenant) == 0


def test_integers_at_the_64_bit_bounds_and_long_digit_strings_come_back_exactly(
    client: TestClient, tenant: Tenant
) -> None:
    """The largest unsigned and the smallest signed 64-bit integers are kept, and so are runs of
    digits in strings and long decimals (as the doubles they are)."""
    body = {
        "big": 2**64 - 1,
        "small": -(2**63),
        "digits": "1" * 40,
        "negative": "-" + "9" * 30,
        "decimal": 0.1,
    }
    sent = event(tenant.root, id="bounds", data={"actor": {"subject": "u"}, "body": body})
    response = post(client, tenant.producer, sent)
    assert response.status_code == 201, response.text
    assert response.json()["data"]["body"] == body
    fetched = client.get("/v1/events/bounds", headers=auth(tenant.viewer)).json()
    assert fetched["data"]["body"] == body


def test_unknown_content_type_is_a_415(client: TestClient, tenant: Tenant) -> None:
    """Only JSON, CloudEvents JSON, batches and binary mode are accepted."""
    response = post(client, tenant.producer, b"<event/>", "application/xml")
    assert response.status_code == 415
    assert count(client, tenant) == 0


def test_data_base64_is_a_415(client: TestClient, tenant: Tenant) -> None:
    """Binary data is not an audit event's data."""
    body = event(tenant.root)
    body.pop("data")
    body["data_base64"] = "aGVsbG8="
    assert post(client, tenant.producer, body).status_code == 415


def test_event_over_one_mib_is_refused_before_it_is_read(
    client: TestClient, tenant: Tenant
) -> None:
    """A declared length over 1 MiB is a 413."""
    body = event(tenant.root, data={"actor": {"subject": "u"}, "body": {"blob": "x" * (1 << 20)}})
    response = post(client, tenant.producer, body)
    assert response.status_code == 413
    assert count(client, tenant) == 0


def test_chunked_event_over_one_mib_is_refused(client: TestClient, tenant: Tenant) -> None:
    """Without a Content-Length, reading stops at the limit."""

    def chunks() -> Any:
        yield b'{"data": "'
        for _ in range(1100):
            yield b"x" * 1024
        yield b'"}'

    response = client.post(
        "/v1/events",
        content=chunks(),
        headers={**auth(tenant.producer), "content-type": "application/json"},
    )
    assert response.status_code == 413


def test_batch_over_sixteen_mib_is_refused(client: TestClient, tenant: Tenant) -> None:
    """A batch larger than 16 MiB is a 413."""
    big = [
        event(tenant.root, data={"actor": {"subject": "u"}, "body": {"b": "x" * (900 << 10)}})
        for _ in range(19)
    ]
    assert post(client, tenant.producer, big, BATCH).status_code == 413
    assert count(client, tenant) == 0


def test_without_a_token_is_a_401(client: TestClient, tenant: Tenant) -> None:
    """No token, or an unknown one, is a 401."""
    assert client.post("/v1/events", json=event(tenant.root)).status_code == 401
    assert post(client, "tdg_unknown", event(tenant.root)).status_code == 401


def test_viewer_token_may_not_ingest(client: TestClient, tenant: Tenant) -> None:
    """Ingest needs the producer role."""
    assert post(client, tenant.viewer, event(tenant.root)).status_code == 403


def test_producer_may_not_ingest_outside_its_group(client: TestClient, tenant: Tenant) -> None:
    """A producer of a/b may ingest into a/b/c but not into a/b2 or a."""
    team = f"{tenant.root}/team"
    producer = make_token(client, team, "producer")
    assert post(client, producer, event(f"{team}/c")).status_code == 201
    assert post(client, producer, event(f"{tenant.root}/team2")).status_code == 403
    assert post(client, producer, event(tenant.root)).status_code == 403


def test_owner_may_ingest(client: TestClient, tenant: Tenant) -> None:
    """The owner role includes producer."""
    assert post(client, tenant.owner, event(tenant.root)).status_code == 201


def test_an_event_of_many_distinct_words_is_stored_and_found(
    client: TestClient, tenant: Tenant
) -> None:
    """120,000 distinct words (0.9 MB) in the body: stored by both backends (PostgreSQL's
    tsvector of them all would pass its 1 MiB limit), and found by its first words."""
    text = " ".join(f"w{n:x}z" for n in range(120_000))
    body = event(tenant.root, id="wordy", data={"actor": {"subject": "u"}, "body": {"t": text}})
    stored = client.post("/v1/events", json=body, headers=auth(tenant.producer))
    assert stored.status_code == 201, stored.text
    found = client.get("/v1/events", params={"q": "w1fz"}, headers=auth(tenant.viewer))
    assert [e["id"] for e in found.json()["events"]] == ["wordy"]
    assert (
        client.get("/v1/events/wordy", headers=auth(tenant.viewer)).json()["data"] == body["data"]
    )
