"""GET /v1/events/stats: counts equal to the listing's, under the same filters and visibility.

The property test draws group trees whose segments share prefixes and hold `_`
and `-` (as in test_visibility), events with tricky types, actors, sources and
subjects, times around hour and day boundaries (before the epoch too), some
with `allowedroles` and `allowedgroups`, and a token of any group, roles and
subject. For every `group_by` and interval, the stats must equal counts computed
here from the full listing (every page of `GET /v1/events`, same filters, same
token), sum to the list's `total_count`, and never count an event the token
cannot list. The listing itself is checked against a model of visibility
written here from scratch, so that stats and list cannot be wrong together.
"""

from __future__ import annotations

import calendar
import itertools
import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import event as observe
from hypothesis import strategies as st

from tests import databases
from tests.conftest import Tenant, auth, event, make_token
from tidings.api import create_app
from tidings.config import Settings

BATCH = "application/cloudevents-batch+json"
SEGMENTS = ("a", "a_", "ab", "a-b", "a0", "b")
TYPES = ("t.a.x", "t.a", "t.ab.x", "t.a_.x", 'u."q".x', "t.ä")
TYPE_FILTERS = ("t.a", "t.a.*", "t.*", "t.ab.*", 'u."q".x', "t.a_.*")
SUBJECTS = (None, "s", "s1", "s1/x", "s 1", "ß/0", "s_")
SUBJECT_FILTERS = ("s", "s1", "s*", "s1*", "s_*", "*", "ß*")
ACTORS = ("u1", "u10", "o'brien", 'q"uote')
SOURCES = ("src", "src/2", "https://x.example/a?b=c&d")
EVENTKEYS = ("k1", "k10")
ROLES = ("viewer", "producer", "editor", "owner")
# What each role includes (independently of tidings.tokens).
INCLUDES = {
    "viewer": {"viewer"},
    "producer": {"producer"},
    "editor": {"editor", "viewer"},
    "owner": set(ROLES),
}
# Words for full-text search. None of them is the start of any token of the types,
# subjects or actors above, so only the words put in descriptions and bodies match.
WORDS = ("alpha", "alphabet", "beta", "gamma")
QUERIES = ("alp", "alpha", "beta", "gam", "alpha beta", '"alpha"', "zeta")
# (as sent, UTC seconds since the epoch) around hour and day boundaries.
TIMES = (
    ("1969-12-31T23:30:00Z", -1800),
    ("1970-01-01T00:00:00Z", 0),
    ("2024-02-28T23:59:59.999999999Z", 1709164799),
    ("2024-02-29T00:00:00Z", 1709164800),
    ("2024-02-29T00:59:59Z", 1709168399),
    ("2024-02-29T01:00:00+01:00", 1709164800),
    ("2024-02-29T13:30:00.5Z", 1709213400),
    ("2024-03-01T00:30:00-02:00", 1709260200),
)
# (as sent, UTC seconds) for since and until; the far ones lie outside 64-bit nanoseconds.
BOUNDS = (
    ("0001-01-01T00:00:00Z", -62135596800),
    ("1970-01-01T00:00:00Z", 0),
    ("2024-02-29T00:00:00Z", 1709164800),
    ("2024-02-29T12:00:00+02:00", 1709200800),
    ("9999-12-31T23:59:59Z", 253402300799),
)
INTERVALS = {"hour": 3600, "day": 86400}
FILTER_NAMES = ("types", "source", "subject", "actor", "eventkey", "q", "since", "until", "group")
GROUP_BYS: tuple[tuple[str, ...], ...] = (
    (),
    ("type",),
    ("group",),
    ("actor",),
    ("source",),
    ("subject",),
    ("actor", "type"),
    ("group", "subject"),
)

Path_ = tuple[str, ...]


def within(ancestor: Path_, path: Path_) -> bool:
    """Whether `path` is `ancestor` or below it, segment by segment."""
    return path[: len(ancestor)] == ancestor


def prefixes(path: Path_) -> list[Path_]:
    return [path[: i + 1] for i in range(len(path))]


@dataclass(frozen=True)
class Ev:
    """One event of a scenario; `time` indexes TIMES."""

    group: Path_
    type: str
    subject: str | None
    actor: str
    source: str
    time: int
    roles: frozenset[str] | None
    roles_as_array: bool
    allowed: tuple[Path_, ...]
    eventkey: str | None
    word: str | None
    word_in_body: bool


@dataclass(frozen=True)
class Token:
    group: Path_
    roles: tuple[str, ...]
    subject: str | None


@dataclass(frozen=True)
class Filters:
    types: tuple[str, ...]
    source: str | None
    subject: str | None
    actor: str | None
    eventkey: str | None
    q: str | None
    since: int | None
    until: int | None
    group: Path_ | None


@dataclass(frozen=True)
class Scenario:
    events: tuple[Ev, ...]
    token: Token
    filters: Filters


def effective(roles: tuple[str, ...]) -> set[str]:
    return set().union(*(INCLUDES[role] for role in roles))


def visible_from(scope: Path_, roles: set[str], ev: Ev) -> bool:
    """The model: the scope's subtree holds the event's group or one of its allowed groups,
    and the token holds one of its allowed roles (if any)."""
    if not (within(scope, ev.group) or any(within(scope, a) for a in ev.allowed)):
        return False
    return ev.roles is None or bool(ev.roles & roles)


def words_of(text: str) -> list[str]:
    """Lowercased runs of letters and digits: how the FTS5 unicode61 tokenizer splits."""
    return re.findall(r"[^\W_]+", text.lower())


def matches(ev: Ev, f: Filters, token: Token) -> bool:
    """Whether `ev` passes the filters, computed the obvious way."""
    if f.types and not any(
        ev.type.startswith(t[:-1]) if t.endswith(".*") else ev.type == t for t in f.types
    ):
        return False
    if f.source is not None and ev.source != f.source:
        return False
    if f.subject is not None:
        if f.subject.endswith("*"):
            if ev.subject is None or not ev.subject.startswith(f.subject[:-1]):
                return False
        elif ev.subject != f.subject:
            return False
    actor = token.subject if f.actor == "me" else f.actor
    if actor is not None and ev.actor != actor:
        return False
    if f.eventkey is not None and ev.eventkey != f.eventkey:
        return False
    seconds = TIMES[ev.time][1]
    if f.since is not None and seconds < BOUNDS[f.since][1]:
        return False
    if f.until is not None and seconds >= BOUNDS[f.until][1]:
        return False
    if f.q is not None:
        have = [ev.word] if ev.word else []
        if not all(any(w.startswith(q) for w in have) for q in words_of(f.q)):
            return False
    return f.group is None or within(f.group, ev.group)


paths = st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=3).map(tuple)


def maybe(strategy: st.SearchStrategy[Any], chance: int = 4) -> st.SearchStrategy[Any]:
    """None most of the time (all but one in `chance`), else a value of `strategy`."""
    return st.integers(1, chance).flatmap(lambda n: strategy if n == 1 else st.none())


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    groups = draw(st.lists(paths, min_size=1, max_size=6, unique=True))
    known = sorted({p for g in groups for p in prefixes(g)})

    @st.composite
    def events(draw: st.DrawFn) -> Ev:
        group = draw(st.sampled_from(groups))
        tenant = [g for g in known if g[0] == group[0]]
        word = draw(maybe(st.sampled_from(WORDS), 2))
        return Ev(
            group=group,
            type=draw(st.sampled_from(TYPES)),
            subject=draw(st.sampled_from(SUBJECTS)),
            actor=draw(st.sampled_from(ACTORS)),
            source=draw(st.sampled_from(SOURCES)),
            time=draw(st.integers(0, len(TIMES) - 1)),
            roles=draw(maybe(st.frozensets(st.sampled_from(ROLES), min_size=1, max_size=2), 3)),
            roles_as_array=draw(st.booleans()),
            allowed=tuple(
                draw(
                    st.one_of(
                        st.just([]),
                        st.just([]),
                        st.lists(st.sampled_from(tenant), min_size=1, max_size=2, unique=True),
                    )
                )
            ),
            eventkey=draw(maybe(st.sampled_from(EVENTKEYS), 2)),
            word=word,
            word_in_body=draw(st.booleans()),
        )

    evs = draw(st.lists(events(), min_size=5, max_size=30))
    above = st.sampled_from(known)
    token = Token(
        group=draw(st.one_of(above, above, above, paths)),
        roles=tuple(
            draw(
                st.one_of(
                    st.just(["viewer"]),
                    st.lists(st.sampled_from(ROLES), min_size=1, max_size=2, unique=True),
                )
            )
        ),
        subject=draw(maybe(st.sampled_from(ACTORS), 2)),
    )
    below = [g for g in known if within(token.group, g) and g != token.group]
    inside = st.sampled_from(below) if below else paths.map(lambda tail: token.group + tail)
    # Each filter narrows a lot: use at most two at once, often none.
    active = draw(st.sets(st.sampled_from(FILTER_NAMES), max_size=2))
    values: dict[str, st.SearchStrategy[Any]] = {
        "types": st.lists(st.sampled_from(TYPE_FILTERS), min_size=1, max_size=2).map(tuple),
        "source": st.sampled_from(SOURCES),
        "subject": st.sampled_from(SUBJECT_FILTERS),
        "actor": st.sampled_from((*ACTORS, "me", "me")),
        "eventkey": st.sampled_from(EVENTKEYS),
        "q": st.sampled_from(QUERIES),
        "since": st.integers(0, len(BOUNDS) - 1),
        "until": st.integers(0, len(BOUNDS) - 1),
        "group": st.one_of(inside, st.sampled_from(known)),
    }
    drawn = {name: draw(values[name]) for name in sorted(active)}
    filters = Filters(
        **{name: drawn.get(name, () if name == "types" else None) for name in FILTER_NAMES}
    )
    return Scenario(tuple(evs), token, filters)


@pytest.fixture(scope="module", params=databases.BACKENDS)
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    """One app on one database per backend for the module; each example uses fresh tenants."""
    if request.param == "sqlite":
        db: Path = tmp_path_factory.mktemp("stats") / "tidings.db"
        settings = Settings(database_url=f"sqlite:///{db}", sqlite_synchronous="NORMAL")
    else:
        settings = Settings(
            database_url=databases.new_schema(request.getfixturevalue("postgres_server"))
        )
    with TestClient(create_app(settings)) as client:
        yield client


_runs = itertools.count()


class World:
    """A scenario's events stored under fresh roots: relative paths become real groups."""

    def __init__(self, client: TestClient, events: tuple[Ev, ...]):
        self.client = client
        self.base = f"st{next(_runs)}"
        self.ids = [f"{self.base}-e{i}" for i in range(len(events))]
        producers: dict[str, str] = {}
        for root, run in itertools.groupby(
            zip(self.ids, events, strict=True), key=lambda pair: self.path(pair[1].group[:1])
        ):
            if root not in producers:
                producers[root] = make_token(client, root, "producer")
            batch = [self.body(event_id, ev) for event_id, ev in run]
            response = client.post(
                "/v1/events",
                content=json.dumps(batch).encode(),
                headers={**auth(producers[root]), "content-type": BATCH},
            )
            assert response.status_code == 201, response.text

    def path(self, relative: Path_) -> str:
        return "/".join((self.base + relative[0], *relative[1:]))

    def body(self, event_id: str, ev: Ev) -> dict[str, Any]:
        data: dict[str, Any] = {"actor": {"subject": ev.actor}, "body": {"n": 1}}
        body: dict[str, Any] = {
            "specversion": "1.0",
            "id": event_id,
            "source": ev.source,
            "type": ev.type,
            "time": TIMES[ev.time][0],
            "group": self.path(ev.group),
            "data": data,
        }
        if ev.subject is not None:
            body["subject"] = ev.subject
        if ev.roles is not None:
            roles = sorted(ev.roles)
            body["allowedroles"] = roles if ev.roles_as_array else ", ".join(roles)
        if ev.allowed:
            body["allowedgroups"] = [self.path(a) for a in ev.allowed]
        if ev.eventkey is not None:
            body["eventkey"] = ev.eventkey
        if ev.word is not None:
            if ev.word_in_body:
                data["body"] = {"n": 1, "info": {"tags": ["x", ev.word]}}
            else:
                body["description"] = f"the {ev.word}!"
        return body

    def params(self, f: Filters) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if f.types:
            params["type"] = list(f.types)
        for name in ("source", "subject", "actor", "eventkey", "q"):
            if getattr(f, name) is not None:
                params[name] = getattr(f, name)
        if f.since is not None:
            params["since"] = BOUNDS[f.since][0]
        if f.until is not None:
            params["until"] = BOUNDS[f.until][0]
        if f.group is not None:
            params["group"] = self.path(f.group)
        return params


def list_all(client: TestClient, token: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Every event of every page, in order."""
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(100):
        response = client.get(
            "/v1/events",
            params={**params, "limit": 7, **({"cursor": cursor} if cursor else {})},
            headers=auth(token),
        )
        assert response.status_code == 200, response.text
        page = response.json()
        seen.extend(page["events"])
        if not page["has_more"]:
            return seen
        cursor = page["next_cursor"]
    raise AssertionError("paging did not end")


def bucket(rendered: str, width: int) -> str:
    """The start of the hour or day holding an RFC 3339 UTC time, computed with datetime."""
    seconds = calendar.timegm(time.strptime(rendered[:19], "%Y-%m-%dT%H:%M:%S"))
    start = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds // width * width)
    return start.strftime("%Y-%m-%dT%H:%M:%SZ")


def key_of(listed: dict[str, Any], field: str) -> Any:
    """An event's value for a group_by field, read from its listed JSON."""
    if field == "actor":
        return listed["data"]["actor"]["subject"]
    return listed.get(field)


def expected_stats(
    listed: list[dict[str, Any]], fields: tuple[str, ...], interval: str | None
) -> Counter[tuple[Any, ...]]:
    counts: Counter[tuple[Any, ...]] = Counter()
    for item in listed:
        key = tuple(key_of(item, field) for field in fields)
        if interval is not None:
            key += (bucket(item["time"], INTERVALS[interval]),)
        counts[key] += 1
    return counts


def stats(
    client: TestClient,
    token: str,
    params: dict[str, Any],
    fields: tuple[str, ...],
    interval: str | None,
) -> Any:
    query = dict(params)
    if fields:
        query["group_by"] = list(fields)
    if interval is not None:
        query["interval"] = interval
    return client.get("/v1/events/stats", params=query, headers=auth(token))


@settings(
    max_examples=35,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenario=scenarios())
def test_stats_equal_counts_of_the_listed_events(service: TestClient, scenario: Scenario) -> None:
    """For every group_by and interval, stats are the listing's counts; they sum to total_count."""
    world = World(service, scenario.events)
    tok = scenario.token
    token = make_token(service, world.path(tok.group), *tok.roles, subject=tok.subject)
    f = scenario.filters
    params = world.params(f)
    roles = effective(tok.roles)

    status = 200
    if "viewer" not in roles or (f.group is not None and not within(tok.group, f.group)):
        status = 403
    elif f.actor == "me" and tok.subject is None:
        status = 400
    observe(f"status {status}")
    if status != 200:
        assert service.get("/v1/events", params=params, headers=auth(token)).status_code == status
        for fields, interval in itertools.product(GROUP_BYS[:2], (None, "day")):
            response = stats(service, token, params, fields, interval)
            assert response.status_code == status, response.text
        return

    scope = f.group if f.group is not None else tok.group
    modelled = [
        event_id
        for event_id, ev in zip(world.ids, scenario.events, strict=True)
        if visible_from(scope, roles, ev) and matches(ev, f, tok)
    ]
    listed = list_all(service, token, params)
    assert [item["id"] for item in listed] == modelled
    observe("listed: none" if not listed else "listed: some")

    counted = service.get("/v1/events", params={**params, "count": "true"}, headers=auth(token))
    assert counted.status_code == 200, counted.text
    total = counted.json()["total_count"]
    assert total == len(listed)

    for fields, interval in itertools.product(GROUP_BYS, (None, "hour", "day")):
        response = stats(service, token, params, fields, interval)
        assert response.status_code == 200, response.text
        rows = response.json()["rows"]
        keys = [*fields, *(["interval_start"] if interval else [])]
        for row in rows:
            assert list(row) == [*keys, "count"], row
            assert isinstance(row["count"], int)
        got = Counter({tuple(row[k] for k in keys): row["count"] for row in rows})
        assert len(got) == len(rows), f"a key repeats in {rows}"
        if not keys:
            assert rows == [{"count": total}]
        else:
            assert all(row["count"] > 0 for row in rows)
            assert got == expected_stats(listed, fields, interval), (fields, interval)
        counts = [row["count"] for row in rows]
        assert counts == sorted(counts, reverse=True), rows
        assert sum(counts) == total


# --- examples ---------------------------------------------------------------------------------


def ingest(client: TestClient, token: str, *events: dict[str, Any]) -> None:
    response = client.post(
        "/v1/events",
        content=json.dumps(list(events)).encode(),
        headers={**auth(token), "content-type": BATCH},
    )
    assert response.status_code == 201, response.text


def get_stats(client: TestClient, token: str, **params: Any) -> list[dict[str, Any]]:
    response = client.get("/v1/events/stats", params=params, headers=auth(token))
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()["rows"]
    return rows


def test_rows_are_sorted_by_count_most_first_then_by_key(
    client: TestClient, tenant: Tenant
) -> None:
    """The most frequent first; equal counts in the order of their keys."""
    counts = {"t.c": 3, "t.a": 1, "t.e": 5, "t.b": 3, "t.d": 1}
    ingest(
        client,
        tenant.producer,
        *(event(tenant.root, type=name) for name, n in counts.items() for _ in range(n)),
    )
    assert get_stats(client, tenant.viewer, group_by="type") == [
        {"type": "t.e", "count": 5},
        {"type": "t.b", "count": 3},
        {"type": "t.c", "count": 3},
        {"type": "t.a", "count": 1},
        {"type": "t.d", "count": 1},
    ]
    assert get_stats(client, tenant.viewer) == [{"count": 13}]


def test_two_group_by_fields_give_one_key_each(client: TestClient, tenant: Tenant) -> None:
    """group_by=actor&group_by=type counts each (actor, type) pair; a repeated field counts once."""

    def by(actor: str, kind: str) -> dict[str, Any]:
        return event(tenant.root, type=kind, data={"actor": {"subject": actor}, "body": {}})

    ingest(
        client, tenant.producer, by("al", "t.x"), by("al", "t.x"), by("al", "t.y"), by("bo", "t.x")
    )
    assert get_stats(client, tenant.viewer, group_by=["actor", "type"]) == [
        {"actor": "al", "type": "t.x", "count": 2},
        {"actor": "al", "type": "t.y", "count": 1},
        {"actor": "bo", "type": "t.x", "count": 1},
    ]
    assert get_stats(client, tenant.viewer, group_by=["type", "type"]) == [
        {"type": "t.x", "count": 3},
        {"type": "t.y", "count": 1},
    ]


def test_events_without_a_subject_count_under_null(client: TestClient, tenant: Tenant) -> None:
    """group_by=subject counts events without a subject under a null subject."""
    plain = event(tenant.root)
    del plain["subject"]
    ingest(client, tenant.producer, plain, dict(plain), event(tenant.root, subject="s"))
    assert get_stats(client, tenant.viewer, group_by="subject") == [
        {"subject": None, "count": 2},
        {"subject": "s", "count": 1},
    ]


def test_interval_start_is_the_rfc3339_start_of_each_utc_hour_or_day(
    client: TestClient, tenant: Tenant
) -> None:
    """interval_start is the UTC hour or day holding the source's time, whatever its offset."""
    times = [
        "2024-03-01T10:15:00Z",
        "2024-03-01T10:59:59.999999999Z",
        "2024-03-01T11:00:00Z",
        "2024-03-01T12:30:00+02:00",  # 10:30Z
        "2024-03-02T00:30:00+01:00",  # 2024-03-01T23:30Z
        "2024-03-02T00:00:00Z",
        "1969-12-31T23:30:00Z",  # before the epoch: its own day, not 1970-01-01
        "1970-01-01T00:30:00Z",
    ]
    ingest(client, tenant.producer, *(event(tenant.root, time=t) for t in times))
    hours = get_stats(client, tenant.viewer, interval="hour")
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:00:00Z", row["interval_start"]) for row in hours)
    assert {row["interval_start"]: row["count"] for row in hours} == {
        "2024-03-01T10:00:00Z": 3,
        "2024-03-01T11:00:00Z": 1,
        "2024-03-01T23:00:00Z": 1,
        "2024-03-02T00:00:00Z": 1,
        "1969-12-31T23:00:00Z": 1,
        "1970-01-01T00:00:00Z": 1,
    }
    assert hours[0] == {"interval_start": "2024-03-01T10:00:00Z", "count": 3}
    days = get_stats(client, tenant.viewer, interval="day")
    assert days == [
        {"interval_start": "2024-03-01T00:00:00Z", "count": 5},
        {"interval_start": "1969-12-31T00:00:00Z", "count": 1},
        {"interval_start": "1970-01-01T00:00:00Z", "count": 1},
        {"interval_start": "2024-03-02T00:00:00Z", "count": 1},
    ]
    by_type = get_stats(client, tenant.viewer, interval="day", group_by="type")
    assert by_type[0] == {
        "type": "dev.example.widget.created.v1",
        "interval_start": "2024-03-01T00:00:00Z",
        "count": 5,
    }


def test_the_earliest_times_stored_have_a_bucket_beginning_at_the_earliest_time(
    client: TestClient, tenant: Tenant
) -> None:
    """The day and hour holding the earliest time tidings stores (-2**63 ns) begin before it:
    their bucket is shown as beginning at that time, not computed past 64 bits (a 500 on
    PostgreSQL, for every bucketed stats call of the tenant while such an event is kept)."""
    earliest = "1677-09-21T00:12:43.145224192Z"  # -2**63 ns
    times = [earliest, "1677-09-21T23:59:59Z", "1677-09-22T00:00:00Z", "2024-03-01T10:15:00Z"]
    ingest(client, tenant.producer, *(event(tenant.root, time=t) for t in times))
    assert sorted(
        (row["interval_start"], row["count"])
        for row in get_stats(client, tenant.viewer, interval="day")
    ) == [("1677-09-21T00:12:43Z", 2), ("1677-09-22T00:00:00Z", 1), ("2024-03-01T00:00:00Z", 1)]
    assert sorted(
        (row["interval_start"], row["count"])
        for row in get_stats(client, tenant.viewer, interval="hour")
    ) == [
        ("1677-09-21T00:12:43Z", 1),
        ("1677-09-21T23:00:00Z", 1),
        ("1677-09-22T00:00:00Z", 1),
        ("2024-03-01T10:00:00Z", 1),
    ]


def test_interval_buckets_by_the_source_time_not_the_stored_time(
    client: TestClient, tenant: Tenant
) -> None:
    """An event stored now with an old time counts in its old day."""
    ingest(client, tenant.producer, event(tenant.root, time="2001-09-09T01:46:40Z"))
    assert get_stats(client, tenant.viewer, interval="day") == [
        {"interval_start": "2001-09-09T00:00:00Z", "count": 1}
    ]


def test_empty_stats(client: TestClient, tenant: Tenant) -> None:
    """Nothing matches: no rows by field or interval, and a count of 0 without either."""
    assert get_stats(client, tenant.viewer, group_by="type") == []
    assert get_stats(client, tenant.viewer, interval="day") == []
    assert get_stats(client, tenant.viewer) == [{"count": 0}]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"group_by": "time"}, "group_by"),
        ({"group_by": "Type"}, "group_by"),
        ({"group_by": ""}, "group_by"),
        ({"group_by": ["type", "data"]}, "group_by"),
        ({"interval": "week"}, "interval"),
        ({"interval": "minute"}, "interval"),
        ({"interval": "Day"}, "interval"),
        ({"interval": ""}, "interval"),
        ({"since": "yesterday"}, "since"),
        ({"type": "t.*.x"}, "type"),
    ],
)
def test_bad_parameters_are_a_400(
    client: TestClient, tenant: Tenant, params: dict[str, Any], field: str
) -> None:
    """An unknown group_by field or interval (or a bad filter) is a 400 naming it."""
    response = client.get("/v1/events/stats", params=params, headers=auth(tenant.viewer))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "bad_request"
    assert field in error["message"]


def test_a_producer_only_token_may_not_read_stats(client: TestClient, tenant: Tenant) -> None:
    """Stats need the viewer role (editor and owner include it); no token is a 401."""
    ingest(client, tenant.producer, event(tenant.root))
    response = client.get("/v1/events/stats", headers=auth(tenant.producer))
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "forbidden"
    assert client.get("/v1/events/stats").status_code == 401
    for role in ("viewer", "editor", "owner"):
        token = make_token(client, tenant.root, role)
        assert get_stats(client, token) == [{"count": 1}]


def test_stats_of_a_group_outside_the_token_are_a_403(client: TestClient, tenant: Tenant) -> None:
    """group= outside the token's subtree is refused, as for the list."""
    team = make_token(client, f"{tenant.root}/team", "viewer")
    response = client.get("/v1/events/stats", params={"group": tenant.root}, headers=auth(team))
    assert response.status_code == 403, response.text


def test_far_since_and_until_are_not_a_500(client: TestClient, tenant: Tenant) -> None:
    """Bounds beyond 64-bit nanoseconds (years 1 and 9999) are valid RFC 3339: all or nothing."""
    ingest(client, tenant.producer, event(tenant.root))
    far = {"since": "0001-01-01T00:00:00Z", "until": "9999-12-31T23:59:59Z"}
    assert get_stats(client, tenant.viewer, **far) == [{"count": 1}]
    assert get_stats(client, tenant.viewer, since=far["until"]) == [{"count": 0}]
    assert get_stats(client, tenant.viewer, until=far["since"]) == [{"count": 0}]
    listed = client.get("/v1/events", params=far, headers=auth(tenant.viewer))
    assert listed.status_code == 200, listed.text
    assert len(listed.json()["events"]) == 1


def test_stats_answer_at_most_limit_rows_the_largest_first(
    client: TestClient, tenant: Tenant
) -> None:
    """`limit` bounds the rows; `has_more` says whether smaller counts were left out."""
    for index, count in enumerate((3, 2, 1)):
        for n in range(count):
            ingest(
                client,
                tenant.producer,
                event(tenant.root, id=f"lim-{index}-{n}", subject=f"s{index}"),
            )
    response = client.get(
        "/v1/events/stats", params={"group_by": "subject", "limit": 2}, headers=auth(tenant.viewer)
    ).json()
    assert response == {
        "rows": [{"subject": "s0", "count": 3}, {"subject": "s1", "count": 2}],
        "has_more": True,
    }
    everything = client.get(
        "/v1/events/stats", params={"group_by": "subject"}, headers=auth(tenant.viewer)
    )
    assert everything.json()["has_more"] is False
