"""CloudEvents parsing and rendering, and the Chainguard examples as they travel on the wire."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import auth, make_token
from tidings import groups, wire
from tidings.api import create_app
from tidings.catalog import chainguard_examples
from tidings.config import Settings
from tidings.errors import BadRequest, UnsupportedMediaType
from tidings.timestamps import Timestamp, from_ns

GROUP = "acme/team"
DATA: dict[str, Any] = {"actor": {"subject": "user-1"}, "body": {"name": "w1"}}
EXAMPLES = chainguard_examples()


def structured(**overrides: Any) -> dict[str, Any]:
    """A valid structured-mode event; `overrides` replace attributes (None removes one)."""
    body: dict[str, Any] = {
        "specversion": "1.0",
        "id": "e-1",
        "source": "https://platform.example/widgets",
        "type": "dev.example.widget.created.v1",
        "group": GROUP,
        "data": DATA,
    }
    for key, value in overrides.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def binary_headers(**overrides: str) -> dict[str, str]:
    """Valid binary-mode headers; `overrides` add or replace `ce-<name>` headers."""
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "e-1",
        "ce-source": "https://platform.example/widgets",
        "ce-type": "dev.example.widget.created.v1",
        "ce-group": GROUP,
    }
    headers.update({f"ce-{name}": value for name, value in overrides.items()})
    return headers


BODY = json.dumps(DATA).encode()


# --- dumps -----------------------------------------------------------------


def test_dumps_is_compact_with_sorted_keys() -> None:
    """The canonical text has no spaces and sorts keys at every depth."""
    value = {"b": 1, "a": {"z": [1, {"y": 2, "x": None}], "c": True}}
    assert wire.dumps(value) == '{"a":{"c":true,"z":[1,{"x":null,"y":2}]},"b":1}'


def test_dumps_keeps_non_ascii_as_utf8() -> None:
    """Non-ASCII characters are written as UTF-8, not as escapes."""
    assert wire.dumps({"name": "café"}) == '{"name":"café"}'


# --- parse_event -----------------------------------------------------------


def test_structured_event_is_parsed() -> None:
    """A valid event yields its attributes, the default audience and the canonical data text."""
    parsed = wire.parse_event(
        structured(subject="widgets/w1", time="2023-01-31T22:36:41.42658Z", requestid="r-1")
    )
    assert (parsed.id, parsed.source, parsed.type, parsed.subject, parsed.group) == (
        "e-1",
        "https://platform.example/widgets",
        "dev.example.widget.created.v1",
        "widgets/w1",
        GROUP,
    )
    assert parsed.time == Timestamp(1675204601_426580000, 5)
    assert parsed.audience == "customer"
    assert parsed.extensions == {"requestid": "r-1"}
    assert parsed.data == DATA
    assert parsed.data_json == wire.dumps(DATA)
    assert parsed.actor == "user-1"


def test_optional_attributes_may_be_left_out() -> None:
    """Without id, subject, time and specversion the event is still valid; they stay None."""
    parsed = wire.parse_event(structured(id=None, specversion=None))
    assert (parsed.id, parsed.subject, parsed.time) == (None, None, None)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"source": None}, "source"),
        ({"type": None}, "type"),
        ({"group": None}, "group"),
        ({"data": None}, "data"),
        ({"specversion": "0.3"}, "specversion"),
        ({"id": ""}, "id"),
        ({"id": 7}, "id"),
        ({"id": "has space"}, "id"),
        ({"source": "tab\there"}, "source"),
        ({"type": "new\nline"}, "type"),
        ({"id": "x" * 257}, "id"),
        ({"source": "s" * 1025}, "source"),
        ({"type": "t" * 257}, "type"),
        ({"subject": "s" * 1025}, "subject"),
        ({"time": "2024-02-30T00:00:00Z"}, "time"),
        ({"group": "Acme"}, "group"),
        ({"audience": "Customer"}, "audience"),
        ({"audience": 5}, "audience"),
    ],
)
def test_malformed_attribute_is_refused_by_name(change: dict[str, Any], needle: str) -> None:
    """Missing, empty, oversize or malformed core attributes are a BadRequest naming them."""
    with pytest.raises(BadRequest, match=needle):
        wire.parse_event(structured(**change))


def test_limits_are_inclusive() -> None:
    """An id of 256 and a source of 1,024 characters are still accepted."""
    parsed = wire.parse_event(structured(id="x" * 256, source="s" * 1024))
    assert (len(parsed.id or ""), len(parsed.source)) == (256, 1024)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"id": "é" * 129}, "id is longer than 256 bytes"),  # 258 bytes in 129 characters
        ({"source": "源" * 342}, "source is longer than 1024 bytes"),  # 1,026 bytes
        ({"type": "🙂" * 65}, "type is longer than 256 bytes"),
        ({"subject": "s/" + "é" * 512}, "subject is longer than 1024 bytes"),
        (
            {"data": {"actor": {"subject": "源" * 342}, "body": {}}},
            "data.actor.subject is longer than 1024 bytes",
        ),
    ],
)
def test_limits_count_bytes_of_utf8_not_characters(change: dict[str, Any], needle: str) -> None:
    """Index keys hold bytes: a text of few characters may still be too long."""
    with pytest.raises(BadRequest, match=needle):
        wire.parse_event(structured(**change))
    assert wire.parse_event(structured(id="é" * 128, source="源" * 341)).id == "é" * 128


def test_subject_may_hold_spaces() -> None:
    """Unlike id, source and type, a subject may contain spaces."""
    assert wire.parse_event(structured(subject="café menu")).subject == "café menu"


def test_non_object_event_is_refused() -> None:
    """An event must be a JSON object."""
    with pytest.raises(BadRequest, match="object"):
        wire.parse_event(["not", "an", "event"])


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "APPLICATION/JSON"]
)
def test_json_datacontenttype_is_accepted(content_type: str) -> None:
    """datacontenttype may say JSON, with parameters or in any case."""
    assert wire.parse_event(structured(datacontenttype=content_type)).data == DATA


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", 5])
def test_other_datacontenttype_is_unsupported(content_type: Any) -> None:
    """Data in any format but JSON is a 415."""
    with pytest.raises(UnsupportedMediaType, match="datacontenttype"):
        wire.parse_event(structured(datacontenttype=content_type))


def test_data_base64_is_unsupported() -> None:
    """Binary data is refused as an unsupported media type."""
    with pytest.raises(UnsupportedMediaType, match="data_base64"):
        wire.parse_event(structured(data=None, data_base64="aGVsbG8="))


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ("text", "data must be a JSON object"),
        ({"actor": {"subject": "u"}, "body": {}, "extra": 1}, "unknown keys"),
        ({"body": {}}, "data.actor is required"),
        ({"actor": "u", "body": {}}, "data.actor is required"),
        ({"actor": {"subject": "u", "name": "x"}, "body": {}}, "data.actor has unknown keys"),
        ({"actor": {}, "body": {}}, "data.actor.subject"),
        ({"actor": {"subject": ""}, "body": {}}, "data.actor.subject"),
        ({"actor": {"subject": 1}, "body": {}}, "data.actor.subject"),
        ({"actor": {"subject": "u", "email": 1}, "body": {}}, "data.actor.email"),
        ({"actor": {"subject": "u", "ip": "300.1.1.1"}, "body": {}}, "data.actor.ip"),
        ({"actor": {"subject": "u", "ip": 7}, "body": {}}, "data.actor.ip"),
        ({"actor": {"subject": "u"}}, "data.body"),
        ({"actor": {"subject": "u"}, "body": []}, "data.body"),
        ({"actor": {"subject": "u"}, "body": {}, "previous": "x"}, "data.previous"),
    ],
)
def test_malformed_data_is_refused(data: Any, needle: str) -> None:
    """data is {actor: {subject, email?, ip?}, body: {...}, previous?: {...}} and nothing else."""
    with pytest.raises(BadRequest, match=needle):
        wire.parse_event(structured(data=data))


def test_full_audit_data_is_accepted() -> None:
    """An actor with email and an IPv6 address, and previous properties, are accepted."""
    data = {
        "actor": {"subject": "u", "email": "u@example.com", "ip": "2001:db8::1"},
        "body": {"plan": "hobby-2"},
        "previous": {"plan": "hobby-0"},
    }
    assert wire.parse_event(structured(data=data)).data == data


def test_fingerprint_ignores_key_order_but_not_content() -> None:
    """The same event with reordered keys has one fingerprint; a changed value has another."""
    first = wire.parse_event(structured(data={"body": {"b": 1, "a": 2}, "actor": {"subject": "u"}}))
    again = wire.parse_event(structured(data={"actor": {"subject": "u"}, "body": {"a": 2, "b": 1}}))
    other = wire.parse_event(structured(data={"actor": {"subject": "u"}, "body": {"a": 2, "b": 2}}))
    assert first.fingerprint == again.fingerprint
    assert first.fingerprint != other.fingerprint
    assert first.fingerprint != wire.parse_event(structured(subject="s")).fingerprint


def test_fingerprint_is_the_hash_of_the_canonical_attributes_and_data() -> None:
    """Stored fingerprints stay comparable across versions: SHA-256 of the sorted-key JSON of
    [id, source, type, subject, time, group, audience, extensions, data]."""
    body = structured(
        id="e-1",
        time="2024-06-01T12:00:00Z",
        eventkey="k",
        data={"actor": {"subject": "u"}, "body": {"x": [1, "é"]}},
    )
    event = wire.parse_event(body)
    canonical = json.dumps(
        [
            "e-1",
            body["source"],
            body["type"],
            body.get("subject"),
            "2024-06-01T12:00:00Z",
            body["group"],
            event.audience,
            {"eventkey": "k"},
            body["data"],
        ],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    assert event.fingerprint == hashlib.sha256(canonical.encode()).hexdigest()


# --- extension attributes --------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("requestid", "27a532f4"),
        ("description", "made a widget"),
        ("a", "x"),
        ("x1", 0),
        ("abcdefghij0123456789", "twenty characters"),
        ("tier", 2**31 - 1),
        ("tier", -(2**31)),
        ("dataschema", "https://schemas.example/widget.json"),
    ],
)
def test_valid_extension_is_kept(name: str, value: Any) -> None:
    """Names of 1 to 20 lowercase letters or digits with string or 32-bit integer values are kept."""
    assert wire.parse_event(structured(**{name: value})).extensions == {name: value}


@pytest.mark.parametrize(
    "name",
    ["requestId", "request_id", "request-id", "abcdefghij0123456789x", "é", "has space"],
)
def test_extension_name_outside_the_rules_is_refused(name: str) -> None:
    """Upper case, punctuation, non-ASCII or more than 20 characters is not an attribute name."""
    with pytest.raises(BadRequest, match="attribute name"):
        wire.parse_event(structured(**{name: "x"}))


@pytest.mark.parametrize("value", [True, 1.5, None, [1], {"a": 1}, 2**31, -(2**31) - 1])
def test_extension_value_must_be_a_string_or_32_bit_integer(value: Any) -> None:
    """Booleans, floats, nulls, arrays, objects and out-of-range integers are refused."""
    body = structured()
    body["tier"] = value
    with pytest.raises(BadRequest, match="tier"):
        wire.parse_event(body)


@pytest.mark.parametrize(
    ("name", "value"),
    [("storedtime", "2024-01-01T00:00:00Z"), ("validationerror", "forged")],
)
def test_attributes_tidings_sets_may_not_be_sent(name: str, value: str) -> None:
    """storedtime and the catalog's validationerror are set by tidings; a producer may not
    send them (a forged validationerror would pass for the catalog's verdict)."""
    with pytest.raises(BadRequest, match=f"^{name} is set by tidings and may not be sent$"):
        wire.parse_event(structured(**{name: value}))


def test_dataschema_must_be_non_empty() -> None:
    """dataschema, when given, is a non-empty URI."""
    with pytest.raises(BadRequest, match="dataschema"):
        wire.parse_event(structured(dataschema=""))


# --- parse_batch -----------------------------------------------------------


def test_batch_is_parsed_in_order() -> None:
    """A batch yields its events in the order given."""
    parsed = wire.parse_batch([structured(id=f"b-{i}") for i in range(3)])
    assert [event.id for event in parsed] == ["b-0", "b-1", "b-2"]


@pytest.mark.parametrize("batch", [{}, "x", None, []])
def test_batch_must_be_a_non_empty_array(batch: Any) -> None:
    """A batch is a JSON array holding at least one event."""
    with pytest.raises(BadRequest, match="batch"):
        wire.parse_batch(batch)


def test_batch_errors_name_every_bad_index() -> None:
    """Each invalid item is reported with its index and message."""
    batch = [structured(), structured(source=None), structured(), "x", structured(group="A")]
    with pytest.raises(BadRequest) as caught:
        wire.parse_batch(batch)
    assert [detail["index"] for detail in caught.value.details] == [1, 3, 4]
    assert "source" in caught.value.details[0]["message"]
    assert "3 of 5" in caught.value.message


# --- parse_binary ----------------------------------------------------------


def test_binary_event_is_parsed() -> None:
    """ce-* headers become attributes and the body becomes the data."""
    parsed = wire.parse_binary(binary_headers(requestid="r-1"), BODY)
    assert (parsed.id, parsed.type, parsed.group) == (
        "e-1",
        "dev.example.widget.created.v1",
        GROUP,
    )
    assert parsed.extensions == {"requestid": "r-1"}
    assert parsed.data == DATA


def test_binary_header_names_are_case_insensitive_and_others_ignored() -> None:
    """Ce-Id and ce-id are the same attribute; headers without the ce- prefix are not attributes."""
    headers = {name.title(): value for name, value in binary_headers().items()}
    headers.update({"Content-Type": "application/json", "User-Agent": "x", "X-Requestid": "r"})
    parsed = wire.parse_binary(headers, BODY)
    assert parsed.id == "e-1"
    assert parsed.extensions == {}


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        ("caf%C3%A9%20menu", "café menu"),
        ("caf%c3%a9", "café"),
        ("Euro%20%E2%82%AC%20%F0%9F%98%80", "Euro € 😀"),
        ("100%25", "100%"),
        ("%61%62c", "abc"),
        ("a+b", "a+b"),
        ("%22quoted%22", '"quoted"'),
    ],
)
def test_binary_header_values_are_percent_decoded(encoded: str, decoded: str) -> None:
    """Header values are percent-decoded once as UTF-8 (upper or lower hex), and '+' stays '+'."""
    assert wire.parse_binary(binary_headers(subject=encoded), BODY).subject == decoded


def test_binary_header_values_are_decoded_only_once() -> None:
    """A percent-encoded percent sign decodes to '%', not further."""
    assert wire.parse_binary(binary_headers(subject="%2541"), BODY).subject == "%41"


def test_binary_double_quoted_header_value_is_unquoted() -> None:
    """A value sent as an HTTP quoted-string is unescaped before percent-decoding."""
    headers = binary_headers(subject='"caf%C3%A9 \\"menu\\""')
    assert wire.parse_binary(headers, BODY).subject == 'café "menu"'


def test_binary_raw_bytes_outside_ascii_are_refused_not_garbled() -> None:
    """A header's raw UTF-8 reaches the app as Latin-1 ("cafÃ©"): it must be percent-encoded."""
    raw_utf8_as_latin1 = "café".encode().decode("latin-1")
    with pytest.raises(BadRequest, match="ce-subject holds bytes outside ASCII: percent-encode"):
        wire.parse_binary(binary_headers(subject=raw_utf8_as_latin1), BODY)


@pytest.mark.parametrize(("name", "value"), [("id", "a\x85b"), ("subject", "s\x9f")])
def test_c1_control_characters_are_control_characters(name: str, value: str) -> None:
    """U+0080 to U+009F are control characters as C0 ones are: refused in id and subject."""
    with pytest.raises(BadRequest, match=f"{name} must not contain"):
        wire.parse_event(structured(**{name: value}))


@pytest.mark.parametrize("encoded", ["%C3", "%C3%28", "%C0%A0", "%FF", "%ED%A0%80"])
def test_binary_invalid_utf8_is_refused(encoded: str) -> None:
    """Percent-encoded bytes that are not UTF-8 (incl. overlong forms and surrogates) are refused."""
    with pytest.raises(BadRequest, match="ce-subject"):
        wire.parse_binary(binary_headers(subject=encoded), BODY)


@pytest.mark.parametrize("encoded", ["%", "100%", "%ZZ", "%4", "a%g1"])
def test_binary_malformed_percent_escape_is_refused(encoded: str) -> None:
    """A '%' not followed by two hex digits is not valid percent-encoding."""
    with pytest.raises(BadRequest, match="ce-subject"):
        wire.parse_binary(binary_headers(subject=encoded), BODY)


def test_binary_decoded_group_is_validated() -> None:
    """The group is validated after decoding, so an encoded upper-case letter is still refused."""
    with pytest.raises(BadRequest, match="group"):
        wire.parse_binary(binary_headers(group="acme%2FTeam"), BODY)


@pytest.mark.parametrize("specversion", [None, "0.3", "1.0.0"])
def test_binary_needs_specversion_1_0(specversion: str | None) -> None:
    """ce-specversion must be present and exactly 1.0."""
    headers = binary_headers()
    headers.pop("ce-specversion")
    if specversion is not None:
        headers["ce-specversion"] = specversion
    with pytest.raises(BadRequest, match="specversion"):
        wire.parse_binary(headers, BODY)


def test_binary_datacontenttype_header_is_refused() -> None:
    """In binary mode the data's type is the Content-Type header."""
    with pytest.raises(BadRequest, match="datacontenttype"):
        wire.parse_binary(binary_headers(datacontenttype="application/json"), BODY)


def test_binary_data_header_is_refused() -> None:
    """A ce-data header may not pose as an attribute named data, clashing with the event's data."""
    with pytest.raises(BadRequest, match="data is set by tidings"):
        wire.parse_binary(binary_headers(data="x"), BODY)


def test_binary_body_must_be_json() -> None:
    """A body that is not JSON is a BadRequest about the data."""
    with pytest.raises(BadRequest, match="not valid JSON"):
        wire.parse_binary(binary_headers(), b"<xml/>")


def test_binary_extension_names_follow_the_rules() -> None:
    """A ce- header whose remainder is not a valid attribute name is refused."""
    with pytest.raises(BadRequest, match="attribute name"):
        wire.parse_binary(binary_headers(**{"request-id": "r"}), BODY)


# --- render_attributes -----------------------------------------------------


def test_render_attributes_orders_core_then_sorted_extensions_then_storedtime() -> None:
    """Attributes render as CloudEvents JSON: core first, extensions sorted, storedtime last."""
    parsed = wire.parse_event(structured(subject="s", zeta=1, alpha="x", audience="internal"))
    text = wire.render_attributes(
        parsed, "e-1", Timestamp(1675204601_426580000, 5), 1_700_000_000_123_456_789
    )
    rendered = json.loads(text)
    assert list(rendered) == [
        "specversion",
        "id",
        "source",
        "type",
        "subject",
        "time",
        "datacontenttype",
        "group",
        "audience",
        "alpha",
        "zeta",
        "storedtime",
    ]
    assert rendered["time"] == "2023-01-31T22:36:41.42658Z"
    assert rendered["storedtime"] == "2023-11-14T22:13:20.123456Z"
    assert rendered["datacontenttype"] == "application/json"
    assert rendered["audience"] == "internal"
    assert (rendered["alpha"], rendered["zeta"]) == ("x", 1)
    assert " " not in text


def test_render_attributes_leaves_out_a_missing_subject() -> None:
    """An event without a subject renders no subject attribute and the given id and time."""
    parsed = wire.parse_event(structured(id=None))
    rendered = json.loads(wire.render_attributes(parsed, "generated", from_ns(0, 0), 0))
    assert "subject" not in rendered
    assert (rendered["id"], rendered["time"]) == ("generated", "1970-01-01T00:00:00Z")


# --- the Chainguard examples -----------------------------------------------


def test_there_are_62_examples() -> None:
    """The two Chainguard documents hold 62 examples."""
    assert len(EXAMPLES) == 62


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: f"{e['seed'][:3]}-{e['ce_type']}")
def test_example_body_is_exactly_its_content_length(example: dict[str, Any]) -> None:
    """Each example's data, as compact JSON with sorted keys, is exactly Content-Length bytes."""
    wire_body = wire.dumps(example["data"]).encode()
    assert len(wire_body) == example["content_length"]
    assert example["content_length"] == int(example["headers"]["Content-Length"])


@pytest.fixture(scope="module")
def examples_client(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[TestClient, str, str]]:
    """One app (on its own SQLite file) and a producer token of one tenant, for every example."""
    path = tmp_path_factory.mktemp("examples") / "tidings.db"
    with TestClient(create_app(Settings(database_url=f"sqlite:///{path}"))) as client:
        root = groups.new_root()
        yield client, root, make_token(client, root, "producer")


@pytest.mark.parametrize(
    ("index", "example"),
    list(enumerate(EXAMPLES)),
    ids=[f"{e['seed'][:3]}-{e['ce_type']}" for e in EXAMPLES],
)
def test_example_is_ingested_in_binary_mode(
    examples_client: tuple[TestClient, str, str], index: int, example: dict[str, Any]
) -> None:
    """Each example, sent as in the seed (binary mode, its headers and body), is stored as sent."""
    client, root, producer = examples_client
    sent = example["headers"]
    body = wire.dumps(example["data"]).encode()
    headers = {
        **auth(producer),
        "content-type": "application/json",
        "ce-specversion": "1.0",
        "ce-id": f"example-{index}",
        "ce-source": sent["Ce-Source"],
        "ce-type": sent["Ce-Type"],
        "ce-time": sent["Ce-Time"],
        "ce-audience": sent["Ce-Audience"],
        "ce-group": root,
    }
    response = client.post("/v1/events", content=body, headers=headers)
    assert response.status_code == 201, response.text
    stored = response.json()
    assert (stored["id"], stored["type"], stored["source"], stored["time"]) == (
        f"example-{index}",
        example["ce_type"],
        example["ce_source"],
        sent["Ce-Time"],
    )
    assert stored["data"] == example["data"]
    assert response.text.endswith(',"data":' + body.decode() + "}")


def test_data_nested_deeper_than_json_is_written_is_refused() -> None:
    """JSON parsers take 1,024 levels, the writer 254: data deeper than it writes is a
    BadRequest, not a 500 when it is stored."""

    def data_of_depth(depth: int) -> dict[str, Any]:  # data, body and lists: `depth` levels
        inner: Any = 1
        for _ in range(depth - 2):
            inner = [inner]
        return {"actor": {"subject": "a"}, "body": {"x": inner}}

    assert wire.parse_event(structured(data=data_of_depth(254))).data_json.count("[") == 252
    with pytest.raises(BadRequest, match="more than 254 deep"):
        wire.parse_event(structured(data=data_of_depth(255)))


@settings(max_examples=500)
@given(value=st.text(min_size=1, max_size=40), name=st.sampled_from(["id", "source", "subject"]))
def test_an_attribute_is_refused_exactly_for_whitespace_or_control_characters(
    value: str, name: str
) -> None:
    """The checks of id, source, type and subject (a fast path for printable ASCII) refuse a
    value exactly when it holds a control character, or whitespace outside a subject."""
    allowed = (
        re.search(r"[\x00-\x1f\x7f-\x9f]", value) is None
        if name == "subject"
        else re.fullmatch(r"[^\s\x00-\x1f\x7f-\x9f]+", value) is not None
    )
    try:
        wire.check_attribute(name, value)
    except BadRequest:
        assert not allowed
    else:
        assert allowed
