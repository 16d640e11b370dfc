"""GET /v1/events and GET /v1/events/{id}: limits, order, cursors, filters, roles, rendering."""

from __future__ import annotations

import base64
import json
import random
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from tests.conftest import TEST_TYPE, Tenant, auth, event, make_token
from tests.databases import MakeDatabase
from tidings import groups, timestamps
from tidings.api import create_app
from tidings.config import Settings
from tidings.cursors import CursorCodec

BATCH = "application/cloudevents-batch+json"
T0 = "2024-03-01T10:00:00Z"
T1 = "2024-03-01T11:00:00Z"
T2 = "2024-03-01T12:00:00Z"


# --- helpers -----------------------------------------------------------------------------------


def ingest(client: TestClient, token: str, *events: dict[str, Any]) -> list[dict[str, Any]]:
    """Store `events` as one batch, in order; the stored events."""
    response = client.post(
        "/v1/events",
        content=json.dumps(list(events)).encode(),
        headers={**auth(token), "content-type": BATCH},
    )
    assert response.status_code == 201, response.text
    stored: list[dict[str, Any]] = response.json()["events"]
    return stored


def numbered(group: str, count: int, prefix: str = "e", **overrides: Any) -> list[dict[str, Any]]:
    """`count` events in `group` with ids `prefix-0` .. `prefix-{count-1}`."""
    return [event(group, id=f"{prefix}-{i}", **overrides) for i in range(count)]


def get(client: TestClient, token: str | None, **params: Any) -> Any:
    """GET /v1/events with `params` (a list value repeats the parameter)."""
    headers = auth(token) if token is not None else {}
    return client.get("/v1/events", params=params, headers=headers)


def page(client: TestClient, token: str, **params: Any) -> dict[str, Any]:
    """One page, which must be a 200."""
    response = get(client, token, **params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"events", "has_more", "next_cursor"}
    return body


def ids(client: TestClient, token: str, **params: Any) -> list[str]:
    """The ids on one page."""
    return [e["id"] for e in page(client, token, **params)["events"]]


def page_through(client: TestClient, token: str, **params: Any) -> list[str]:
    """Every id from the first page to the last, following next_cursor."""
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(1000):
        body = page(client, token, **params, **({"cursor": cursor} if cursor else {}))
        seen.extend(e["id"] for e in body["events"])
        if not body["has_more"]:
            return seen
        assert body["next_cursor"], "has_more without a next_cursor"
        cursor = body["next_cursor"]
    raise AssertionError("paging did not end")


def get_one(client: TestClient, token: str | None, event_id: str, **params: Any) -> Any:
    """GET /v1/events/{id}."""
    headers = auth(token) if token is not None else {}
    return client.get(f"/v1/events/{quote(event_id, safe='')}", params=params, headers=headers)


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    """`response` is `status` in tidings' error format with `code`; its error object."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == code
    assert isinstance(error["message"], str)
    assert error["message"]
    assert isinstance(error["details"], list)
    return error


# --- limit -------------------------------------------------------------------------------------


def test_default_limit_is_100(client: TestClient, tenant: Tenant) -> None:
    """Without a limit a page holds 100 events and says there are more."""
    ingest(client, tenant.producer, *numbered(tenant.root, 101))
    body = page(client, tenant.viewer)
    assert [e["id"] for e in body["events"]] == [f"e-{i}" for i in range(100)]
    assert body["has_more"] is True


@pytest.mark.parametrize("limit", [1, 2, 57, 100])
def test_limit_bounds_the_page_size(client: TestClient, tenant: Tenant, limit: int) -> None:
    """A limit from 1 to 100 is the page size."""
    ingest(client, tenant.producer, *numbered(tenant.root, 101))
    body = page(client, tenant.viewer, limit=limit)
    assert [e["id"] for e in body["events"]] == [f"e-{i}" for i in range(limit)]
    assert body["has_more"] is True


@pytest.mark.parametrize("limit", ["0", "101", "-1", "1000", "ten", "1.5", "", "0x10"])
def test_limit_outside_1_to_100_or_not_a_number_is_a_400(
    client: TestClient, tenant: Tenant, limit: str
) -> None:
    """limit 0, 101, negatives and non-integers are a 400 naming limit."""
    error = assert_error(get(client, tenant.viewer, limit=limit), 400, "bad_request")
    assert "limit" in error["message"]
    assert [d["field"] for d in error["details"]] == ["limit"]


# --- order -------------------------------------------------------------------------------------


def test_default_order_is_ascending(client: TestClient, tenant: Tenant) -> None:
    """Without an order, events come oldest first (in ingest order, not id or time order)."""
    ingest(
        client,
        tenant.producer,
        event(tenant.root, id="z", time=T2),
        event(tenant.root, id="a", time=T0),
        event(tenant.root, id="m", time=T1),
    )
    assert ids(client, tenant.viewer) == ["z", "a", "m"]
    assert ids(client, tenant.viewer, order="asc") == ["z", "a", "m"]


def test_desc_order_is_newest_first(client: TestClient, tenant: Tenant) -> None:
    """order=desc lists the most recently ingested first."""
    ingest(
        client,
        tenant.producer,
        event(tenant.root, id="z", time=T2),
        event(tenant.root, id="a", time=T0),
        event(tenant.root, id="m", time=T1),
    )
    assert ids(client, tenant.viewer, order="desc") == ["m", "a", "z"]


@pytest.mark.parametrize("order", ["ASC", "Desc", "descending", "newest", ""])
def test_unknown_order_is_a_400(client: TestClient, tenant: Tenant, order: str) -> None:
    """Only asc and desc are orders."""
    error = assert_error(get(client, tenant.viewer, order=order), 400, "bad_request")
    assert [d["field"] for d in error["details"]] == ["order"]


# --- cursors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 4, 5, 23, 100])
def test_paging_ascending_yields_every_event_once_in_order(
    client: TestClient, tenant: Tenant, limit: int
) -> None:
    """Following next_cursor ascending returns each event exactly once, oldest first."""
    ingest(client, tenant.producer, *numbered(tenant.root, 20))
    assert page_through(client, tenant.viewer, limit=limit) == [f"e-{i}" for i in range(20)]


@pytest.mark.parametrize("limit", [1, 4, 5, 23, 100])
def test_paging_descending_yields_every_event_once_in_order(
    client: TestClient, tenant: Tenant, limit: int
) -> None:
    """Following next_cursor descending returns each event exactly once, newest first."""
    ingest(client, tenant.producer, *numbered(tenant.root, 20))
    expected = [f"e-{i}" for i in reversed(range(20))]
    assert page_through(client, tenant.viewer, limit=limit, order="desc") == expected


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_paging_with_filters_yields_every_matching_event_once(
    client: TestClient, tenant: Tenant, order: str
) -> None:
    """Paging a filtered list returns exactly the matching events, each once, in order."""
    team = f"{tenant.root}/team"
    batch = []
    for i in range(30):
        group = team if i % 2 else f"{tenant.root}/other"
        kind = "dev.example.a.v1" if i % 3 else "dev.example.b.v1"
        batch.append(event(group, id=f"e-{i}", type=kind))
    ingest(client, tenant.producer, *batch)
    expected = [f"e-{i}" for i in range(30) if i % 2 and i % 3]
    if order == "desc":
        expected.reverse()
    got = page_through(
        client, tenant.viewer, limit=3, order=order, group=team, type="dev.example.a.v1"
    )
    assert got == expected


def test_paging_ascending_while_ingesting_returns_new_events_once_at_the_end(
    client: TestClient, tenant: Tenant
) -> None:
    """Events ingested between pages show up after the old ones, each exactly once."""
    ingest(client, tenant.producer, *numbered(tenant.root, 7, "old"))
    seen: list[str] = []
    cursor: str | None = None
    added = 0
    while True:
        body = page(client, tenant.viewer, limit=3, **({"cursor": cursor} if cursor else {}))
        seen.extend(e["id"] for e in body["events"])
        if added < 3:
            ingest(client, tenant.producer, event(tenant.root, id=f"new-{added}"))
            added += 1
        elif not body["has_more"]:
            break
        cursor = body["next_cursor"]
    assert seen == [f"old-{i}" for i in range(7)] + [f"new-{i}" for i in range(3)]


def test_paging_descending_while_ingesting_returns_each_old_event_once(
    client: TestClient, tenant: Tenant
) -> None:
    """Descending, events ingested after the first page neither repeat nor shift old ones."""
    ingest(client, tenant.producer, *numbered(tenant.root, 7, "old"))
    seen: list[str] = []
    cursor: str | None = None
    for added in range(100):
        body = page(
            client, tenant.viewer, limit=2, order="desc", **({"cursor": cursor} if cursor else {})
        )
        seen.extend(e["id"] for e in body["events"])
        ingest(client, tenant.producer, event(tenant.root, id=f"new-{added}"))
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"old-{i}" for i in reversed(range(7))]


def test_last_ascending_page_has_no_more_but_a_cursor_for_later_events(
    client: TestClient, tenant: Tenant
) -> None:
    """Ascending, the last page says has_more false and its next_cursor fetches what comes later."""
    ingest(client, tenant.producer, *numbered(tenant.root, 4))
    first = page(client, tenant.viewer, limit=4)
    assert [e["id"] for e in first["events"]] == ["e-0", "e-1", "e-2", "e-3"]
    assert first["has_more"] is False
    assert isinstance(first["next_cursor"], str)
    empty = page(client, tenant.viewer, limit=4, cursor=first["next_cursor"])
    assert empty == {"events": [], "has_more": False, "next_cursor": first["next_cursor"]}
    ingest(client, tenant.producer, event(tenant.root, id="later-0"))
    ingest(client, tenant.producer, event(tenant.root, id="later-1"))
    later = page(client, tenant.viewer, limit=4, cursor=first["next_cursor"])
    assert [e["id"] for e in later["events"]] == ["later-0", "later-1"]
    assert later["has_more"] is False
    assert later["next_cursor"] not in (None, first["next_cursor"])
    assert page(client, tenant.viewer, cursor=later["next_cursor"])["events"] == []


def test_ascending_cursor_of_an_empty_list_fetches_later_events(
    client: TestClient, tenant: Tenant
) -> None:
    """Ascending, even an empty first page gives a cursor from which all later events come."""
    empty = page(client, tenant.viewer, type="dev.example.none.v1")
    assert empty["events"] == []
    assert empty["has_more"] is False
    assert isinstance(empty["next_cursor"], str)
    ingest(client, tenant.producer, event(tenant.root, id="first"))
    assert ids(client, tenant.viewer, cursor=empty["next_cursor"]) == ["first"]


def test_ascending_filtered_cursor_resumes_after_the_last_match(
    client: TestClient, tenant: Tenant
) -> None:
    """The last page's cursor of a filtered list skips non-matching events and finds new matches."""
    ingest(
        client,
        tenant.producer,
        event(tenant.root, id="hit-0", type="dev.example.hit.v1"),
        event(tenant.root, id="miss-0"),
    )
    last = page(client, tenant.viewer, type="dev.example.hit.v1")
    assert [e["id"] for e in last["events"]] == ["hit-0"]
    ingest(
        client,
        tenant.producer,
        event(tenant.root, id="miss-1"),
        event(tenant.root, id="hit-1", type="dev.example.hit.v1"),
    )
    resumed = ids(client, tenant.viewer, type="dev.example.hit.v1", cursor=last["next_cursor"])
    assert resumed == ["hit-1"]


@pytest.mark.parametrize("count", [3, 6])
def test_last_descending_page_has_a_null_cursor(
    client: TestClient, tenant: Tenant, count: int
) -> None:
    """Descending, the last page (also when it is exactly full) has next_cursor null."""
    ingest(client, tenant.producer, *numbered(tenant.root, count))
    first = page(client, tenant.viewer, limit=3, order="desc")
    if count == 3:
        last = first
    else:
        assert first["has_more"] is True
        assert isinstance(first["next_cursor"], str)
        last = page(client, tenant.viewer, limit=3, order="desc", cursor=first["next_cursor"])
    assert [e["id"] for e in last["events"]] == ["e-2", "e-1", "e-0"]
    assert last["has_more"] is False
    assert last["next_cursor"] is None


def test_empty_descending_list_has_a_null_cursor(client: TestClient, tenant: Tenant) -> None:
    """Descending, a list with nothing in it has no next_cursor."""
    assert page(client, tenant.viewer, order="desc") == {
        "events": [],
        "has_more": False,
        "next_cursor": None,
    }


def test_pages_say_has_more_exactly_when_more_remain(client: TestClient, tenant: Tenant) -> None:
    """has_more is true on every page but the last, with exactly full pages."""
    ingest(client, tenant.producer, *numbered(tenant.root, 6))
    first = page(client, tenant.viewer, limit=3)
    second = page(client, tenant.viewer, limit=3, cursor=first["next_cursor"])
    assert (first["has_more"], len(first["events"])) == (True, 3)
    assert (second["has_more"], len(second["events"])) == (False, 3)


def _cursor_after_first(client: TestClient, tenant: Tenant) -> str:
    ingest(client, tenant.producer, *numbered(tenant.root, 3))
    cursor: str = page(client, tenant.viewer, limit=1)["next_cursor"]
    assert ids(client, tenant.viewer, limit=1, cursor=cursor) == ["e-1"]
    return cursor


def test_a_cursor_carries_its_events_stored_time_and_one_without_it_still_pages(
    client: TestClient, tenant: Tenant
) -> None:
    """Cursors of the earlier format (a position alone) stay valid."""
    cursor = _cursor_after_first(client, tenant)
    app: Any = client.app
    codec: CursorCodec = app.state.tidings.cursors
    decoded = codec.decode(cursor)
    first = page(client, tenant.viewer, limit=1)["events"][0]
    assert decoded.stored_ns == timestamps.parse(first["storedtime"]).ns
    plain = codec.encode(decoded.position)
    assert len(plain) == 40
    assert ids(client, tenant.viewer, limit=5, cursor=plain) == ["e-1", "e-2"]
    assert ids(client, tenant.viewer, limit=5, cursor=plain, order="desc") == []


def test_cursor_with_any_character_changed_is_a_400(client: TestClient, tenant: Tenant) -> None:
    """Changing any one character of a cursor is refused."""
    cursor = _cursor_after_first(client, tenant)
    # 39 bytes (version, 16-byte position, 8-byte stored time, 14-byte MAC) make 52 base64
    # characters, none with spare bits.
    assert len(cursor) == 52
    for index in range(len(cursor)):
        for replacement in ("A", "_"):
            if cursor[index] == replacement:
                continue
            tampered = cursor[:index] + replacement + cursor[index + 1 :]
            response = get(client, tenant.viewer, limit=1, cursor=tampered)
            assert_error(response, 400, "bad_request")


@pytest.mark.parametrize("keep", [0, 1, 10, 20, 26, 27])
def test_truncated_cursor_is_a_400(client: TestClient, tenant: Tenant, keep: int) -> None:
    """A cursor cut short is refused."""
    cursor = _cursor_after_first(client, tenant)
    error = assert_error(get(client, tenant.viewer, cursor=cursor[:keep]), 400, "bad_request")
    assert "cursor" in error["message"]


def test_lengthened_cursor_is_a_400(client: TestClient, tenant: Tenant) -> None:
    """A cursor with bytes appended is refused."""
    cursor = _cursor_after_first(client, tenant)
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    longer = base64.urlsafe_b64encode(raw + b"\x00").decode().rstrip("=")
    assert_error(get(client, tenant.viewer, cursor=longer), 400, "bad_request")


FORGED_CURSOR = base64.urlsafe_b64encode(random.Random(21).randbytes(21)).decode()  # same each run


@pytest.mark.parametrize(
    "cursor",
    [
        FORGED_CURSOR,
        base64.urlsafe_b64encode(b"\x01" + b"\x00" * 7 + b"\x01" + b"\x00" * 12).decode(),
        "not a cursor!",
        "café",
        "====",
        "AQ",
    ],
)
def test_forged_or_garbage_cursor_is_a_400(client: TestClient, tenant: Tenant, cursor: str) -> None:
    """Random base64, a guessed position with a zero MAC, and non-base64 text are refused."""
    ingest(client, tenant.producer, *numbered(tenant.root, 3))
    error = assert_error(get(client, tenant.viewer, cursor=cursor), 400, "bad_request")
    assert "cursor" in error["message"]


def test_cursor_made_with_another_databases_key_is_a_400(
    client: TestClient, tenant: Tenant, make_database: MakeDatabase
) -> None:
    """A cursor from another tidings database (another key) is refused here."""
    own = _cursor_after_first(client, tenant)
    other_app = create_app(Settings(database_url=make_database()))
    with TestClient(other_app) as other:
        root = groups.new_root()
        producer = make_token(other, root, "producer")
        viewer = make_token(other, root, "viewer")
        ingest(other, producer, *numbered(root, 3))
        foreign = page(other, viewer, limit=1)["next_cursor"]
    assert foreign != own
    assert_error(get(client, tenant.viewer, limit=1, cursor=foreign), 400, "bad_request")


# --- filters: type -----------------------------------------------------------------------------

TYPES = [
    "dev.example.widget.created.v1",
    "dev.example.widget.deleted.v1",
    "dev.example.widgets.created.v1",
    "dev.example.gadget.created.v1",
    "dev.example.widget",
    "org.other.widget.created.v1",
]


def _one_of_each_type(client: TestClient, tenant: Tenant) -> None:
    ingest(client, tenant.producer, *(event(tenant.root, id=t, type=t) for t in TYPES))


def test_type_filter_is_exact(client: TestClient, tenant: Tenant) -> None:
    """type=X lists only events of type X, not types that merely start with X."""
    _one_of_each_type(client, tenant)
    assert ids(client, tenant.viewer, type="dev.example.widget") == ["dev.example.widget"]
    assert ids(client, tenant.viewer, type="dev.example.widget.created.v1") == [
        "dev.example.widget.created.v1"
    ]
    assert ids(client, tenant.viewer, type="dev.example.widget.created") == []


def test_repeated_type_filter_is_an_or(client: TestClient, tenant: Tenant) -> None:
    """Several type parameters list events of any of them."""
    _one_of_each_type(client, tenant)
    wanted = ["dev.example.gadget.created.v1", "org.other.widget.created.v1", "no.such.type"]
    assert ids(client, tenant.viewer, type=wanted) == wanted[:2]


def test_type_prefix_filter_matches_whole_dotted_segments(
    client: TestClient, tenant: Tenant
) -> None:
    """type=prefix.* lists the types below prefix, not prefix itself nor prefixes like prefixes."""
    _one_of_each_type(client, tenant)
    assert ids(client, tenant.viewer, type="dev.example.widget.*") == [
        "dev.example.widget.created.v1",
        "dev.example.widget.deleted.v1",
    ]
    assert ids(client, tenant.viewer, type="dev.*") == TYPES[:5]


def test_type_prefix_and_exact_type_combine_as_an_or(client: TestClient, tenant: Tenant) -> None:
    """A prefix and an exact type together list events matching either."""
    _one_of_each_type(client, tenant)
    got = ids(client, tenant.viewer, type=["org.other.widget.created.v1", "dev.example.widgets.*"])
    assert got == ["dev.example.widgets.created.v1", "org.other.widget.created.v1"]


@pytest.mark.parametrize(
    "value",
    ["*", "dev*", "dev.*.created.v1", "*.created.v1", "dev.ex*ample.*", "dev.*.*", "dev.**", ""],
)
def test_type_with_a_wildcard_other_than_a_final_dot_star_is_a_400(
    client: TestClient, tenant: Tenant, value: str
) -> None:
    """A '*' anywhere but as the final '.*' (and an empty type) is refused."""
    _one_of_each_type(client, tenant)
    error = assert_error(get(client, tenant.viewer, type=value), 400, "bad_request")
    assert "type" in error["message"]


# --- filters: source, subject, actor ------------------------------------------------------------


def test_source_filter_is_exact(client: TestClient, tenant: Tenant) -> None:
    """source=S lists only events from S, not from sources starting with S."""
    ingest(
        client,
        tenant.producer,
        event(tenant.root, id="a", source="https://a.example"),
        event(tenant.root, id="a-sub", source="https://a.example/sub"),
        event(tenant.root, id="b", source="https://b.example"),
        event(tenant.root, id="a-again", source="https://a.example"),
    )
    assert ids(client, tenant.viewer, source="https://a.example") == ["a", "a-again"]
    assert ids(client, tenant.viewer, source="https://a.exam") == []


def _subjects(client: TestClient, tenant: Tenant) -> None:
    plain = event(tenant.root, id="none")
    plain.pop("subject")
    ingest(
        client,
        tenant.producer,
        event(tenant.root, id="s1", subject="repo/1"),
        event(tenant.root, id="s10", subject="repo/10"),
        event(tenant.root, id="s1x", subject="repo/1/x"),
        event(tenant.root, id="s2", subject="repo/2"),
        event(tenant.root, id="other", subject="reposit"),
        plain,
        event(tenant.root, id="star", subject="repo/1*"),
    )


def test_subject_filter_is_exact(client: TestClient, tenant: Tenant) -> None:
    """subject=S lists only events whose subject is S."""
    _subjects(client, tenant)
    assert ids(client, tenant.viewer, subject="repo/1") == ["s1"]
    assert ids(client, tenant.viewer, subject="repo/") == []


def test_subject_prefix_filter_lists_subjects_starting_with_it(
    client: TestClient, tenant: Tenant
) -> None:
    """subject=prefix* lists events whose subject starts with prefix; none without a subject."""
    _subjects(client, tenant)
    assert ids(client, tenant.viewer, subject="repo/1*") == ["s1", "s10", "s1x", "star"]
    assert ids(client, tenant.viewer, subject="repo/*") == ["s1", "s10", "s1x", "s2", "star"]
    assert ids(client, tenant.viewer, subject="*") == [
        "s1",
        "s10",
        "s1x",
        "s2",
        "other",
        "star",
    ]


@pytest.mark.parametrize(
    ("last", "above"),
    [("\U0010ffff", "y"), ("\ud7ff", "\ue000"), ("z", "{")],
)
def test_subject_prefix_ending_in_any_character_matches_only_that_prefix(
    client: TestClient, tenant: Tenant, last: str, above: str
) -> None:
    """A subject prefix ending in the highest code point or just below the surrogates works."""
    ingest(
        client,
        tenant.producer,
        event(tenant.root, id="exact", subject=f"x{last}"),
        event(tenant.root, id="longer", subject=f"x{last}{last}1"),
        event(tenant.root, id="above", subject=f"x{above}"),
        event(tenant.root, id="next", subject="y"),
        event(tenant.root, id="shorter", subject="x"),
        event(tenant.root, id="lead", subject=f"{last}{last}"),
    )
    assert ids(client, tenant.viewer, subject=f"x{last}*") == ["exact", "longer"]
    assert ids(client, tenant.viewer, subject=f"{last}*") == ["lead"]


def test_actor_filter_is_exact(client: TestClient, tenant: Tenant) -> None:
    """actor=A lists only events whose data.actor.subject is A."""

    def by(actor: str, event_id: str) -> dict[str, Any]:
        return event(tenant.root, id=event_id, data={"actor": {"subject": actor}, "body": {}})

    ingest(client, tenant.producer, by("user-1", "a"), by("user-10", "b"), by("user-1", "c"))
    assert ids(client, tenant.viewer, actor="user-1") == ["a", "c"]
    assert ids(client, tenant.viewer, actor="user") == []


# --- filters: time -----------------------------------------------------------------------------


def _timed(client: TestClient, tenant: Tenant) -> None:
    ingest(
        client,
        tenant.producer,
        event(tenant.root, id="t2", time=T2),
        event(tenant.root, id="t0", time=T0),
        event(tenant.root, id="t1", time=T1),
        event(tenant.root, id="t1n", time="2024-03-01T11:00:00.000000001Z"),
    )


def test_since_is_inclusive(client: TestClient, tenant: Tenant) -> None:
    """since=T lists events whose time is T or later, in ingest order."""
    _timed(client, tenant)
    assert ids(client, tenant.viewer, since=T1) == ["t2", "t1", "t1n"]
    assert ids(client, tenant.viewer, since="2024-03-01T11:00:00.000000001Z") == ["t2", "t1n"]


def test_until_is_exclusive(client: TestClient, tenant: Tenant) -> None:
    """until=T lists events whose time is before T."""
    _timed(client, tenant)
    assert ids(client, tenant.viewer, until=T1) == ["t0"]
    assert ids(client, tenant.viewer, until="2024-03-01T11:00:00.000000001Z") == ["t0", "t1"]


def test_since_and_until_compare_instants_across_offsets(
    client: TestClient, tenant: Tenant
) -> None:
    """since and until with a UTC offset mean the same instants as in Z."""
    _timed(client, tenant)
    window = ids(client, tenant.viewer, since="2024-03-01T12:00:00+01:00", until=T2)
    assert window == ["t1", "t1n"]


def test_since_at_or_after_until_lists_nothing(client: TestClient, tenant: Tenant) -> None:
    """An empty time window lists nothing."""
    _timed(client, tenant)
    assert ids(client, tenant.viewer, since=T1, until=T1) == []
    assert ids(client, tenant.viewer, since=T2, until=T0) == []


@pytest.mark.parametrize("name", ["since", "until"])
@pytest.mark.parametrize(
    "value",
    [
        "yesterday",
        "2024-03-01",
        "2024-03-01T10:00:00",
        "2024-02-30T00:00:00Z",
        "2024-03-01T24:00:00Z",
        "2024-03-01 10:00:00Z",
        "1709287200",
        "",
    ],
)
def test_malformed_since_or_until_is_a_400(
    client: TestClient, tenant: Tenant, name: str, value: str
) -> None:
    """since and until must be RFC 3339 date-times with an offset."""
    error = assert_error(get(client, tenant.viewer, **{name: value}), 400, "bad_request")
    assert name in error["message"]


# --- filters: group ----------------------------------------------------------------------------


def _tree(client: TestClient, tenant: Tenant) -> dict[str, str]:
    """One event per group of a tree around `a/b`; event ids name the groups with '.' for '/'."""
    r = tenant.root
    tree = {
        "root": r,
        "a": f"{r}/a",
        "a/b": f"{r}/a/b",
        "a/b/c": f"{r}/a/b/c",
        "a/b/c/d": f"{r}/a/b/c/d",
        "a/b2": f"{r}/a/b2",
        "a/b_x": f"{r}/a/b_x",
        "a/b-x": f"{r}/a/b-x",
        "a/b0": f"{r}/a/b0",
        "a/bb/b": f"{r}/a/bb/b",
        "b": f"{r}/b",
        "b/a/b": f"{r}/b/a/b",
    }
    ingest(
        client,
        tenant.producer,
        *(event(group, id=name.replace("/", ".")) for name, group in tree.items()),
    )
    return tree


def test_group_filter_lists_the_subtree(client: TestClient, tenant: Tenant) -> None:
    """group=G lists events of G and its descendants, not siblings sharing a name prefix."""
    tree = _tree(client, tenant)
    assert ids(client, tenant.viewer, group=tree["a/b"]) == ["a.b", "a.b.c", "a.b.c.d"]
    assert ids(client, tenant.viewer, group=tree["a/b/c/d"]) == ["a.b.c.d"]


def test_group_filter_with_an_underscore_is_not_a_pattern(
    client: TestClient, tenant: Tenant
) -> None:
    """A group name with '_' or '-' matches itself only, not as a LIKE or glob pattern."""
    tree = _tree(client, tenant)
    assert ids(client, tenant.viewer, group=tree["a/b_x"]) == ["a.b_x"]
    assert ids(client, tenant.viewer, group=tree["a/b-x"]) == ["a.b-x"]
    assert ids(client, tenant.viewer, group=f"{tenant.root}/a/b_") == []


def test_group_filter_on_the_root_lists_the_whole_tenant(
    client: TestClient, tenant: Tenant
) -> None:
    """group=root is the whole tenant, as without a group filter."""
    tree = _tree(client, tenant)
    assert ids(client, tenant.viewer, group=tenant.root) == [
        name.replace("/", ".") for name in tree
    ]
    assert ids(client, tenant.viewer) == [name.replace("/", ".") for name in tree]


def test_group_filter_of_a_group_without_events_lists_nothing(
    client: TestClient, tenant: Tenant
) -> None:
    """A subtree without events is an empty list, not an error."""
    _tree(client, tenant)
    assert ids(client, tenant.viewer, group=f"{tenant.root}/a/b/none") == []


def test_group_filter_outside_the_tokens_group_is_a_403(client: TestClient, tenant: Tenant) -> None:
    """A group outside the token's subtree (parent, sibling, prefix sibling, other tenant) is a 403."""
    tree = _tree(client, tenant)
    viewer = make_token(client, tree["a/b"], "viewer")
    for outside in (
        tree["a"],
        tenant.root,
        tree["a/b2"],
        tree["a/b_x"],
        tree["b/a/b"],
        groups.new_root(),
        tenant.root + "0",
    ):
        assert_error(get(client, viewer, group=outside), 403, "forbidden")
    assert ids(client, viewer, group=tree["a/b/c"]) == ["a.b.c", "a.b.c.d"]


@pytest.mark.parametrize("group", ["", "A", "a//b", "/a", "a/", "a b", "grüppe", "-a", "a/../b"])
def test_malformed_group_filter_is_a_400(client: TestClient, tenant: Tenant, group: str) -> None:
    """A group filter that is no well-formed path is a 400."""
    error = assert_error(get(client, tenant.viewer, group=group), 400, "bad_request")
    assert "group" in error["message"]


# --- filters: combined -------------------------------------------------------------------------


def test_filters_combine_as_an_and(client: TestClient, tenant: Tenant) -> None:
    """All given filters must match at once."""
    team = f"{tenant.root}/team"

    def make(event_id: str, **changes: Any) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "group": f"{team}/x",
            "type": "dev.example.a.v1",
            "source": "src-1",
            "subject": "thing/1",
            "time": T1,
            "actor": "user-1",
        }
        fields.update(changes)
        actor = fields.pop("actor")
        body = event(fields.pop("group"), id=event_id, **fields)
        body["data"] = {"actor": {"subject": actor}, "body": {}}
        return body

    ingest(
        client,
        tenant.producer,
        make("hit-1"),
        make("wrong-group", group=f"{tenant.root}/other"),
        make("wrong-type", type="dev.other.a.v1"),
        make("wrong-source", source="src-2"),
        make("wrong-subject", subject="other/1"),
        make("wrong-actor", actor="user-2"),
        make("too-early", time=T0),
        make("too-late", time=T2),
        make("hit-2", type="dev.example.b.v1", subject="thing/2"),
    )
    got = ids(
        client,
        tenant.viewer,
        group=team,
        type="dev.example.*",
        source="src-1",
        subject="thing/*",
        actor="user-1",
        since=T1,
        until=T2,
    )
    assert got == ["hit-1", "hit-2"]


# --- roles and visibility ----------------------------------------------------------------------


def test_producer_only_token_may_not_list(client: TestClient, tenant: Tenant) -> None:
    """Listing needs the viewer role; a producer token is a 403."""
    ingest(client, tenant.producer, event(tenant.root))
    assert_error(get(client, tenant.producer), 403, "forbidden")


@pytest.mark.parametrize("role", ["viewer", "editor", "owner"])
def test_viewer_editor_and_owner_may_list(client: TestClient, tenant: Tenant, role: str) -> None:
    """viewer, editor and owner tokens may list."""
    ingest(client, tenant.producer, event(tenant.root, id="x"))
    assert ids(client, make_token(client, tenant.root, role)) == ["x"]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer tdg_unknown"}, {"Authorization": "Basic dXNlcjpwYXNz"}],
)
def test_list_without_a_valid_token_is_a_401(
    client: TestClient, tenant: Tenant, headers: dict[str, str]
) -> None:
    """No token, an unknown one, or another scheme is a 401."""
    ingest(client, tenant.producer, event(tenant.root))
    assert_error(client.get("/v1/events", headers=headers), 401, "unauthenticated")


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_viewer_of_a_subgroup_never_sees_its_parent_or_siblings(
    client: TestClient, tenant: Tenant, order: str
) -> None:
    """A viewer of a/b sees a/b and below, never a, a/b2, a/b_x or other prefix siblings."""
    tree = _tree(client, tenant)
    viewer = make_token(client, tree["a/b"], "viewer")
    expected = ["a.b", "a.b.c", "a.b.c.d"]
    if order == "desc":
        expected.reverse()
    assert page_through(client, viewer, limit=1, order=order) == expected
    assert ids(client, viewer, order=order) == expected
    assert ids(client, viewer, type=TEST_TYPE, order=order) == expected


def test_viewer_never_sees_other_tenants_even_with_prefix_sharing_roots(
    client: TestClient, tenant: Tenant
) -> None:
    """Events of roots that start with the tenant's root (root0, root_x, root-x) stay invisible."""
    ingest(client, tenant.producer, event(tenant.root, id="mine"))
    for suffix in ("0", "_x", "-x", "a"):
        other = tenant.root + suffix
        ingest(client, make_token(client, other, "producer"), event(other, id=f"theirs{suffix}"))
    assert ids(client, tenant.viewer) == ["mine"]
    assert ids(client, tenant.viewer, order="desc") == ["mine"]
    assert ids(client, tenant.viewer, group=tenant.root) == ["mine"]


# --- rendering ---------------------------------------------------------------------------------


def test_listed_event_carries_every_attribute_and_the_extensions(
    client: TestClient, tenant: Tenant
) -> None:
    """A listed event is CloudEvents JSON with core attributes, group, audience, data, extensions."""
    sent = event(
        f"{tenant.root}/team",
        id="full-1",
        source="https://platform.example/widgets",
        type=TEST_TYPE,
        subject="widgets/42",
        time="2024-03-01T10:00:00.123456789Z",
        audience="internal",
        requestid="req-7",
        description="made a widget",
        tier=3,
        data={
            "actor": {"subject": "user-1", "email": "u@example.com", "ip": "192.0.2.1"},
            "body": {"name": "w1", "size": [1, 2]},
            "previous": {"name": "w0"},
        },
    )
    [stored] = ingest(client, tenant.producer, sent)
    [listed] = page(client, tenant.viewer)["events"]
    assert listed == stored
    expected = dict(sent)
    expected["datacontenttype"] = "application/json"
    storedtime = listed.pop("storedtime")
    assert listed == expected
    assert isinstance(storedtime, str)
    assert storedtime.endswith("Z")


def test_listed_event_without_optional_attributes_has_defaults(
    client: TestClient, tenant: Tenant
) -> None:
    """Without subject and audience, no subject is rendered and audience is customer."""
    sent = event(tenant.root, id="bare-1", time=T0)
    sent.pop("subject")
    ingest(client, tenant.producer, sent)
    [listed] = page(client, tenant.viewer)["events"]
    assert "subject" not in listed
    assert listed["audience"] == "customer"
    assert listed["group"] == tenant.root
    assert (listed["specversion"], listed["datacontenttype"]) == ("1.0", "application/json")


# --- get by id ---------------------------------------------------------------------------------


def test_get_returns_the_event(client: TestClient, tenant: Tenant) -> None:
    """GET /v1/events/{id} answers the stored event as CloudEvents JSON."""
    [stored] = ingest(client, tenant.producer, event(tenant.root, id="one", tier=1))
    ingest(client, tenant.producer, event(tenant.root, id="two"))
    response = get_one(client, tenant.viewer, "one")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == stored


@pytest.mark.parametrize(
    "event_id", ["urn:uuid:1?x=1#f", "café", "100%", "order/1234", "a/b/c", "order/payload"]
)
def test_get_finds_ids_with_special_characters(
    client: TestClient, tenant: Tenant, event_id: str
) -> None:
    """Any stored id, also one with '?', '#', '%', non-ASCII or '/', can be fetched."""
    [stored] = ingest(client, tenant.producer, event(tenant.root, id=event_id))
    response = get_one(client, tenant.viewer, event_id)
    assert response.status_code == 200, response.text
    assert response.json() == stored


def test_an_id_ending_in_payload_is_not_taken_for_the_payload_route(
    client: TestClient, tenant: Tenant
) -> None:
    """`order%2Fpayload` is the event `order/payload`; `order/payload` is the raw payload of
    the event `order` (which came through no webhook, so it has none)."""
    ingest(client, tenant.producer, event(tenant.root, id="order"))
    [stored] = ingest(client, tenant.producer, event(tenant.root, id="order/payload"))
    assert get_one(client, tenant.viewer, "order/payload").json() == stored
    response = client.get("/v1/events/order/payload", headers=auth(tenant.viewer))
    assert_error(response, 404, "not_found")
    assert "no raw payload" in response.json()["error"]["message"]
    nested = client.get("/v1/events/order%2Fpayload/payload", headers=auth(tenant.viewer))
    assert_error(nested, 404, "not_found")  # the event order/payload's: none either
    assert "no raw payload" in nested.json()["error"]["message"]


def test_get_of_an_unknown_id_is_a_404(client: TestClient, tenant: Tenant) -> None:
    """An id nobody stored is a 404."""
    ingest(client, tenant.producer, event(tenant.root, id="known"))
    assert_error(get_one(client, tenant.viewer, "unknown"), 404, "not_found")


def test_get_outside_the_tokens_subtree_is_a_404_as_if_absent(
    client: TestClient, tenant: Tenant
) -> None:
    """An event in a parent, sibling or other tenant answers exactly like an absent id."""
    tree = _tree(client, tenant)
    other = tenant.root + "_x"
    ingest(client, make_token(client, other, "producer"), event(other, id="theirs"))
    viewer = make_token(client, tree["a/b"], "viewer")
    assert get_one(client, viewer, "a.b.c").status_code == 200
    for hidden in ("root", "a", "a.b2", "a.b_x", "a.b-x", "a.b0", "a.bb.b", "b.a.b", "theirs"):
        response = get_one(client, viewer, hidden)
        absent = get_one(client, viewer, hidden + "-absent")
        error = assert_error(response, 404, "not_found")
        absent_error = assert_error(absent, 404, "not_found")
        assert error["message"] == absent_error["message"].replace(hidden + "-absent", hidden)
        assert error["details"] == absent_error["details"]


def test_get_of_an_id_shared_by_two_sources_is_a_409(client: TestClient, tenant: Tenant) -> None:
    """Two visible events with one id from different sources are a 409 naming both sources."""
    ingest(
        client,
        tenant.producer,
        event(tenant.root, id="same", source="src-a"),
        event(f"{tenant.root}/team", id="same", source="src-b"),
    )
    error = assert_error(get_one(client, tenant.viewer, "same"), 409, "conflict")
    assert sorted(d["source"] for d in error["details"]) == ["src-a", "src-b"]


def test_get_with_source_picks_one_of_the_events_sharing_an_id(
    client: TestClient, tenant: Tenant
) -> None:
    """With source, the event of that source is answered."""
    a, b = ingest(
        client,
        tenant.producer,
        event(tenant.root, id="same", source="src-a"),
        event(f"{tenant.root}/team", id="same", source="src-b"),
    )
    assert get_one(client, tenant.viewer, "same", source="src-a").json() == a
    assert get_one(client, tenant.viewer, "same", source="src-b").json() == b
    assert_error(get_one(client, tenant.viewer, "same", source="src-c"), 404, "not_found")


def test_get_ignores_events_sharing_the_id_outside_the_subtree(
    client: TestClient, tenant: Tenant
) -> None:
    """An invisible event with the same id neither conflicts nor is chosen by source."""
    team = f"{tenant.root}/team"
    mine, _ = ingest(
        client,
        tenant.producer,
        event(team, id="same", source="src-a"),
        event(f"{tenant.root}/team_2", id="same", source="src-b"),
    )
    viewer = make_token(client, team, "viewer")
    response = get_one(client, viewer, "same")
    assert response.status_code == 200, response.text
    assert response.json() == mine
    assert_error(get_one(client, viewer, "same", source="src-b"), 404, "not_found")


def test_get_needs_the_viewer_role(client: TestClient, tenant: Tenant) -> None:
    """A producer-only token may not get an event; no token is a 401."""
    ingest(client, tenant.producer, event(tenant.root, id="x"))
    assert_error(get_one(client, tenant.producer, "x"), 403, "forbidden")
    assert_error(get_one(client, None, "x"), 401, "unauthenticated")
