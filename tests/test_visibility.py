"""Property: listing and getting events see exactly the token's subtree, whatever the tree.

Group names are drawn from segments that share prefixes and hold `_` and `-`
(`a`, `a_`, `ab`, `a-b`, `a0`, ...), so that any string-prefix or LIKE matching
of group paths would let a sibling through. The expected results are computed
here from segment tuples, independently of `tidings.groups`.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import auth, make_token
from tidings.api import create_app
from tidings.config import Settings

BATCH = "application/cloudevents-batch+json"
SEGMENTS = ("a", "a_", "ab", "a-b", "a0", "a_b", "b")
TYPES = ("t.a.x", "t.a.y", "t.ab.x", "t.a", "u.a.x")
TYPE_FILTERS = ("t.a.x", "t.a", "t.a.*", "t.*", "t.ab.*", "u.a.x", "t.a.x.*", "t.a_.*")
SUBJECTS = (None, "s", "s1", "s1/x", "s10", "s_", "t")
SUBJECT_FILTERS = ("s", "s1", "s*", "s1*", "s_*", "*", "t*", "x")
ACTORS = ("u1", "u10", "u2")
SOURCES = ("src", "src2")
TIMES = tuple(f"2024-01-01T00:00:0{i}Z" for i in range(4))

Path_ = tuple[str, ...]


@dataclass(frozen=True)
class Ev:
    """One event of a scenario; `time` indexes TIMES."""

    group: Path_
    type: str
    subject: str | None
    actor: str
    source: str
    time: int


@dataclass(frozen=True)
class Filters:
    """The query parameters of a scenario; `group` is relative like every path here."""

    types: tuple[str, ...]
    source: str | None
    subject: str | None
    actor: str | None
    since: int | None
    until: int | None
    group: Path_ | None


@dataclass(frozen=True)
class Query:
    """One listing: as whom, with which filters, a page of how many, in which order."""

    token_group: Path_
    filters: Filters
    limit: int
    order: str


@dataclass(frozen=True)
class Scenario:
    events: tuple[Ev, ...]
    queries: tuple[Query, ...]


def prefixes(path: Path_) -> list[Path_]:
    return [path[: i + 1] for i in range(len(path))]


def within(ancestor: Path_, path: Path_) -> bool:
    """Whether `path` is `ancestor` or below it, segment by segment."""
    return path[: len(ancestor)] == ancestor


def matches(ev: Ev, f: Filters) -> bool:
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
    if f.actor is not None and ev.actor != f.actor:
        return False
    if f.since is not None and ev.time < f.since:
        return False
    if f.until is not None and ev.time >= f.until:
        return False
    return f.group is None or within(f.group, ev.group)


paths = st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=3).map(tuple)


@st.composite
def trees(draw: st.DrawFn, sizes: tuple[int, ...] = (2, 4, 2)) -> list[Path_]:
    """Every path of `len(sizes)` levels; each level is `a` and siblings sharing its prefix."""
    levels = [
        [
            "a",
            *draw(
                st.lists(st.sampled_from(SEGMENTS[1:]), min_size=n - 1, max_size=n - 1, unique=True)
            ),
        ]
        for n in sizes
    ]
    tree: list[Path_] = [()]
    for depth, level in enumerate(levels):
        tree += [(*p, s) for p in tree if len(p) == depth for s in level]
    return tree[1:]


def prefix_named(groups: list[Path_]) -> list[Path_]:
    """The groups whose name is a proper prefix of a sibling's name (`a` next to `a_`, `a0`)."""
    return [
        g
        for g in groups
        if any(h[:-1] == g[:-1] and h[-1] != g[-1] and h[-1].startswith(g[-1]) for h in groups)
    ]


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """None two times in three, else a value of `strategy`."""
    return st.sampled_from((False, False, True)).flatmap(
        lambda given: strategy if given else st.none()
    )


@st.composite
def queries(draw: st.DrawFn, groups: list[Path_]) -> Query:
    # Mostly a group of the tree or above one (so that something is visible), sometimes any path.
    above = st.sampled_from(groups).flatmap(lambda g: st.integers(1, len(g)).map(lambda n: g[:n]))
    token_group = draw(st.one_of(above, st.sampled_from(groups), paths))
    below = [g for g in groups if within(token_group, g) and g != token_group]
    inside = st.sampled_from(below) if below else paths.map(lambda tail: token_group + tail)
    filters = Filters(
        types=tuple(
            draw(maybe(st.lists(st.sampled_from(TYPE_FILTERS), min_size=1, max_size=2))) or ()
        ),
        source=draw(maybe(st.sampled_from(SOURCES))),
        subject=draw(maybe(st.sampled_from(SUBJECT_FILTERS))),
        actor=draw(maybe(st.sampled_from(ACTORS))),
        since=draw(maybe(st.integers(0, len(TIMES) - 1))),
        until=draw(maybe(st.integers(1, len(TIMES)))),
        # Mostly none or inside the token's group; sometimes any group (maybe outside: a 403).
        group=draw(st.one_of(st.none(), st.none(), inside, st.sampled_from(groups))),
    )
    limit = draw(st.one_of(st.integers(1, 4), st.integers(1, 4), st.just(100)))
    order = draw(st.sampled_from(("asc", "desc")))
    return Query(token_group, filters, limit, order)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    groups = draw(trees())
    events = draw(
        st.lists(
            st.builds(
                Ev,
                group=st.sampled_from(groups),
                type=st.sampled_from(TYPES),
                subject=st.sampled_from(SUBJECTS),
                actor=st.sampled_from(ACTORS),
                source=st.sampled_from(SOURCES),
                time=st.integers(0, len(TIMES) - 1),
            ),
            min_size=8,
            max_size=40,
        )
    )
    return Scenario(tuple(events), tuple(draw(st.lists(queries(groups), min_size=1, max_size=4))))


@pytest.fixture
def service(database_url: str) -> Iterator[TestClient]:
    """One app per test, on either backend; each example stores its events under fresh roots."""
    app = create_app(Settings(database_url=database_url, sqlite_synchronous="NORMAL"))
    with TestClient(app) as client:
        yield client


# The app is made once per test, not per example: every example uses fresh tenants.
SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.function_scoped_fixture]}


_runs = itertools.count()


class World:
    """A scenario's events stored under fresh roots: relative paths become real groups."""

    def __init__(self, client: TestClient, events: tuple[Ev, ...]):
        self.client = client
        # Roots are `base + first segment`, so roots too share prefixes (x1a, x1a_, x1ab...).
        self.base = f"x{next(_runs)}"
        self.ids: list[str] = [f"{self.base}-e{i}" for i in range(len(events))]
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

    def relative(self, path: str) -> Path_:
        first, *rest = path.split("/")
        assert first.startswith(self.base)
        return (first[len(self.base) :], *rest)

    def body(self, event_id: str, ev: Ev) -> dict[str, Any]:
        body: dict[str, Any] = {
            "specversion": "1.0",
            "id": event_id,
            "source": ev.source,
            "type": ev.type,
            "time": TIMES[ev.time],
            "group": self.path(ev.group),
            "data": {"actor": {"subject": ev.actor}, "body": {}},
        }
        if ev.subject is not None:
            body["subject"] = ev.subject
        return body

    def params(self, f: Filters, limit: int, order: str) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, "order": order}
        if f.types:
            params["type"] = list(f.types)
        for name in ("source", "subject", "actor"):
            if getattr(f, name) is not None:
                params[name] = getattr(f, name)
        if f.since is not None:
            params["since"] = TIMES[f.since]
        if f.until is not None:
            params["until"] = (*TIMES, "2024-01-01T00:00:04Z")[f.until]
        if f.group is not None:
            params["group"] = self.path(f.group)
        return params


def check(world: World, events: tuple[Ev, ...], query: Query) -> None:
    """Page through `query` and compare with what it must return."""
    client = world.client
    viewer = make_token(client, world.path(query.token_group), "viewer")
    f = query.filters
    params = world.params(f, query.limit, query.order)

    if f.group is not None and not within(query.token_group, f.group):
        response = client.get("/v1/events", params=params, headers=auth(viewer))
        assert response.status_code == 403, response.text
        return

    expected = [
        event_id
        for event_id, ev in zip(world.ids, events, strict=True)
        if within(query.token_group, ev.group) and matches(ev, f)
    ]
    if query.order == "desc":
        expected.reverse()

    seen: list[str] = []
    cursor: str | None = None
    for _ in range(len(events) + 2):
        response = client.get(
            "/v1/events",
            params={**params, **({"cursor": cursor} if cursor else {})},
            headers=auth(viewer),
        )
        assert response.status_code == 200, response.text
        page = response.json()
        for item in page["events"]:
            group = world.relative(item["group"])
            assert within(query.token_group, group), item
            assert f.group is None or within(f.group, group), item
        seen.extend(item["id"] for item in page["events"])
        assert len(page["events"]) <= query.limit
        # has_more promised this page something: only a first page may be empty.
        assert page["events"] or cursor is None
        if page["has_more"]:
            assert len(page["events"]) == query.limit
            assert isinstance(page["next_cursor"], str)
        elif query.order == "asc":
            assert isinstance(page["next_cursor"], str)
        else:
            assert page["next_cursor"] is None
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    else:
        raise AssertionError("paging did not end")
    assert seen == expected


@settings(max_examples=40, **SETTINGS)
@given(scenario=scenarios())
def test_paging_returns_each_visible_matching_event_once_in_order(
    service: TestClient, scenario: Scenario
) -> None:
    """Paging through any filtered list yields exactly the visible matching events, in order."""
    world = World(service, scenario.events)
    for query in scenario.queries:
        check(world, scenario.events, query)


@settings(max_examples=12, **SETTINGS)
@given(groups=trees(sizes=(2, 4, 1)), data=st.data())
def test_get_by_id_sees_exactly_the_tokens_subtree(
    service: TestClient, groups: list[Path_], data: st.DataObject
) -> None:
    """GET /v1/events/{id} finds an event iff its group lies in the token's subtree."""
    events = tuple(Ev(g, "t.a", None, "u1", "src", 0) for g in groups)
    world = World(service, events)
    # Mostly groups (below the root) that a string-prefix test would confuse with a sibling.
    confusable = [g for g in prefix_named(groups) if len(g) > 1] or groups
    tokens = [
        data.draw(st.sampled_from(confusable), label="token group"),
        data.draw(st.sampled_from(confusable), label="token group"),
        data.draw(st.sampled_from(groups) | paths, label="token group"),
    ]
    for token_group in tokens:
        viewer = make_token(service, world.path(token_group), "viewer")
        for event_id, ev in zip(world.ids, events, strict=True):
            response = service.get(f"/v1/events/{event_id}", headers=auth(viewer))
            if within(token_group, ev.group):
                assert response.status_code == 200, (token_group, ev.group, response.text)
                assert response.json()["group"] == world.path(ev.group)
            else:
                assert response.status_code == 404, (token_group, ev.group, response.text)
