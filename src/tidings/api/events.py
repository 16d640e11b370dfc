"""`/v1/events`: ingest (structured, batch, binary mode), list with cursors, get by id."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import Response

from tidings import groups, timestamps, wire
from tidings.api.auth import authenticate
from tidings.api.body import read_limited
from tidings.api.state import AppState, state_of
from tidings.cursors import Cursor, CursorCodec
from tidings.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from tidings.model import PAGE_LIMIT, EventInput, EventQuery, StoredEvent, roles_mask
from tidings.storage.indexing import WORD
from tidings.tokens import Principal

router = APIRouter(prefix="/v1/events", tags=["events"])

SINGLE_TYPES = ("application/json", "application/cloudevents+json")
BATCH_TYPE = "application/cloudevents-batch+json"
JSON_MEDIA = "application/json"

_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["source", "type", "group", "data"],
    "properties": {
        "specversion": {"type": "string", "enum": ["1.0"]},
        "id": {"type": "string", "description": "generated (UUIDv7) when missing"},
        "source": {"type": "string"},
        "type": {"type": "string"},
        "subject": {"type": "string"},
        "time": {
            "type": "string",
            "format": "date-time",
            "description": "the ingest time when missing",
        },
        "group": {"type": "string", "description": "the owning group's path"},
        "audience": {"type": "string", "default": "customer"},
        "requestid": {"type": "string"},
        "description": {"type": "string"},
        "data": {
            "type": "object",
            "required": ["actor", "body"],
            "properties": {
                "actor": {
                    "type": "object",
                    "required": ["subject"],
                    "properties": {
                        "subject": {"type": "string"},
                        "email": {"type": "string"},
                        "ip": {"type": "string"},
                    },
                },
                "body": {"type": "object"},
                "previous": {"type": "object"},
            },
        },
    },
    "additionalProperties": {"type": ["string", "integer"], "description": "extension attributes"},
}
_INGEST_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "One event (structured mode), a batch, or binary mode (ce-* headers, data as body).",
        "content": {
            "application/json": {"schema": _EVENT_SCHEMA},
            "application/cloudevents+json": {"schema": _EVENT_SCHEMA},
            BATCH_TYPE: {"schema": {"type": "array", "items": _EVENT_SCHEMA, "maxItems": 1000}},
        },
    },
    "responses": {
        "201": {
            "description": 'stored: the event as CloudEvents JSON, or {"events": [...]} for a batch'
        },
        "200": {"description": "a repeat of stored events: the stored ones"},
        "400": {"description": "malformed"},
        "401": {"description": "no or bad token"},
        "403": {"description": "the token lacks 'producer' over the event's group"},
        "409": {"description": "(source, id) is stored with other content"},
        "413": {"description": "over 1 MiB (one event) or 16 MiB / 1,000 events (a batch)"},
        "415": {"description": "unsupported content type"},
    },
}

_JSON_HEADERS = {"content-type": "application/json"}


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


@router.post("", openapi_extra=_INGEST_DOC, status_code=201, response_class=Response)
async def ingest(request: Request) -> Response:
    """Ingest one event or a batch; the answer means the events are on disk."""
    principal = await authenticate(request)
    principal.require("producer")
    state = state_of(request)
    settings = state.settings
    media = _media_type(request)
    batch = False
    if "ce-specversion" in request.headers:
        if media != JSON_MEDIA:
            raise UnsupportedMediaType(
                f"in binary mode the data must be {JSON_MEDIA}, got {media!r}"
            )
        body = await read_limited(request, settings.max_event_bytes, "event")
        events = [wire.parse_binary(request.headers, body)]
    elif media in SINGLE_TYPES:
        body = await read_limited(request, settings.max_event_bytes, "event")
        events = [wire.parse_event(wire.loads(body))]
    elif media == BATCH_TYPE:
        batch = True
        body = await read_limited(request, settings.max_batch_bytes, "batch")
        parsed = wire.loads(body)
        if isinstance(parsed, list) and len(parsed) > settings.max_batch_events:
            raise PayloadTooLarge(
                f"the batch holds {len(parsed)} events; at most {settings.max_batch_events} are accepted"
            )
        events = wire.parse_batch(parsed)
    else:
        raise UnsupportedMediaType(
            f"Content-Type {media or 'missing'!r} is not supported; send {SINGLE_TYPES[0]}, "
            f"{SINGLE_TYPES[1]}, {BATCH_TYPE}, or binary mode with ce-* headers"
        )
    _authorize(principal.group, events, batch)
    events = await state.catalog.check(events, batch)
    results = await state.storage.ingest(events, state.clock())
    state.metrics.ingested(result.event.type for result in results if result.created)
    if any(result.deliveries for result in results):
        state.wake_worker()
    status = 201 if any(result.created for result in results) else 200
    if batch:
        payload = '{"events":[' + ",".join(r.event.to_json() for r in results) + "]}"
    else:
        payload = results[0].event.to_json()
    return Response(payload, status_code=status, headers=_JSON_HEADERS)


def _authorize(token_group: str, events: list[EventInput], batch: bool) -> None:
    """A producer writes only into its subtree: the event's group and every group it is shared with."""
    outside = [
        (i, group)
        for i, event in enumerate(events)
        for group in (event.group, *event.allowed_groups)
        if not groups.contains(token_group, group)
    ]
    if not outside:
        return
    details = [{"index": i, "group": group} for i, group in outside] if batch else []
    raise Forbidden(
        f"the token's group {token_group!r} does not contain "
        + (
            f"the groups of {len({i for i, _ in outside})} events in the batch"
            if batch
            else f"the group {outside[0][1]!r} of the event"
        ),
        details=details,
    )


class EventFilters(BaseModel):
    """The filters shared by the list and the stats of events."""

    type: list[str] = Field(
        default_factory=list, description="exact type, or 'prefix.*'; repeatable"
    )
    source: str | None = None
    subject: str | None = Field(default=None, description="exact subject, or 'prefix*'")
    group: str | None = Field(default=None, description="a subtree inside the token's group")
    actor: str | None = Field(
        default=None, description="the actor's subject; 'me': the token's subject"
    )
    eventkey: str | None = Field(
        default=None, description="the source's own key: one alert's history"
    )
    since: str | None = Field(default=None, description="RFC 3339; events at or after")
    until: str | None = Field(default=None, description="RFC 3339; events before")
    q: str | None = Field(
        default=None, description="full-text search of type, subject, actor, description, body"
    )


def event_query(principal: Principal, filters: EventFilters, **paging: Any) -> EventQuery:
    """The storage query for `filters`, as visible to `principal`."""
    scope = principal.group
    if filters.group is not None:
        groups.parse_group(filters.group, "group")
        if not principal.sees(filters.group):
            raise Forbidden(
                f"group {filters.group!r} is outside the token's group {principal.group!r}"
            )
        scope = filters.group
    types, prefixes = _type_filter(filters.type)
    subject = filters.subject
    subject_exact, subject_prefix = (
        (None, subject[:-1]) if subject and subject.endswith("*") else (subject, None)
    )
    actor = filters.actor
    if actor == "me":
        if principal.subject is None:
            raise BadRequest("actor=me needs a token with a subject; this token has none")
        actor = principal.subject
    return EventQuery(
        scope=scope,
        types=types,
        type_prefixes=prefixes,
        source=filters.source,
        subject=subject_exact,
        subject_prefix=subject_prefix,
        actor=actor,
        eventkey=filters.eventkey,
        text=None if filters.q is None else search_expression(filters.q),
        viewer_roles=roles_mask(principal.roles),
        since_ns=None if filters.since is None else timestamps.parse_bound(filters.since, "since"),
        until_ns=None if filters.until is None else timestamps.parse_bound(filters.until, "until"),
        **paging,
    )


def search_expression(text: str) -> str:
    """The words to search for (each must appear, as a prefix of a word of the event)."""
    if not WORD.findall(text) or len(text) > 500:
        raise BadRequest(
            "q must hold 1 to 500 characters with at least one word (letters or digits)"
        )
    return text


@router.get("", response_class=Response)
async def list_events(
    request: Request,
    filters: Annotated[EventFilters, Query()],
    limit: Annotated[int, Query(ge=1, le=PAGE_LIMIT, description="page size")] = PAGE_LIMIT,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    order: Annotated[Literal["asc", "desc"], Query(description="by ingest order")] = "asc",
    count: Annotated[bool, Query(description="add total_count: every matching event")] = False,
) -> Response:
    """List the visible events, filtered, a page at a time."""
    principal = await authenticate(request)
    principal.require("viewer")
    state = state_of(request)
    after = state.cursors.decode(cursor) if cursor is not None else None
    descending = order == "desc"
    query = event_query(
        principal,
        filters,
        after=None if after is None else after.position,
        after_stored_ns=None if after is None else after.stored_ns,
        descending=descending,
        limit=limit + 1,
    )
    found = await state.storage.list_events(query)
    has_more = len(found) > limit
    page = found[:limit]
    next_cursor = _next_cursor(state.cursors, page, has_more, descending, after)
    total = await state.storage.count_events(query) if count else None
    return Response(wire.render_page(page, has_more, next_cursor, total), headers=_JSON_HEADERS)


GROUP_BY = ("type", "group", "actor", "source", "subject")


@router.get("/stats")
async def event_stats(
    request: Request,
    filters: Annotated[EventFilters, Query()],
    group_by: Annotated[
        list[Literal["type", "group", "actor", "source", "subject"]] | None,
        Query(description="fields to count by; repeatable"),
    ] = None,
    interval: Annotated[
        Literal["hour", "day"] | None, Query(description="count per hour or day")
    ] = None,
    limit: Annotated[
        int, Query(ge=1, le=10_000, description="rows at most, the largest counts")
    ] = 1000,
) -> dict[str, Any]:
    """Counts of the visible events matching the filters, by field and/or time bucket, most first."""
    principal = await authenticate(request)
    principal.require("viewer")
    fields = list(dict.fromkeys(group_by or []))
    state = state_of(request)
    query = event_query(principal, filters, limit=limit + 1)
    rows = await state.storage.event_stats(query, fields, interval)
    answer = []
    for row in rows[:limit]:
        item: dict[str, Any] = dict(zip(fields, row, strict=False))
        if interval is not None:
            item["interval_start"] = timestamps.from_ns(int(row[len(fields)]), 0).render()
        item["count"] = int(row[-1])
        answer.append(item)
    return {"rows": answer, "has_more": len(rows) > limit}


def _next_cursor(
    codec: CursorCodec,
    page: list[StoredEvent],
    has_more: bool,
    descending: bool,
    after: Cursor | None,
) -> str | None:
    """Where the next page starts. Ascending, the last page still has one, to resume from later."""
    if page and (has_more or not descending):
        return codec.encode(page[-1].position, wire.stored_ns(page[-1]))
    if not descending:
        return codec.encode(0) if after is None else codec.encode(after.position, after.stored_ns)
    return None


def _type_filter(values: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    exact: list[str] = []
    prefixes: list[str] = []
    for value in values:
        if not value:
            raise BadRequest("type must not be empty")
        if value.endswith(".*") and "*" not in value[:-2]:
            prefixes.append(value[:-1])
        elif "*" in value:
            raise BadRequest(f"type {value!r}: a wildcard is allowed only as a final '.*'")
        else:
            exact.append(value)
    return tuple(exact), tuple(prefixes)


# Declared before get_event: its `{event_id:path}` would otherwise take `<id>/payload` too.
SourceQuery = Annotated[str | None, Query(description="tells apart events that share an id")]


async def visible_event(
    request: Request, event_id: str, source: str | None
) -> tuple[AppState, StoredEvent]:
    """The one event with this id (and source) that the caller may see: 404 if none, 409 if several."""
    principal = await authenticate(request)
    principal.require("viewer")
    state = state_of(request)
    found = await state.storage.find_events(
        principal.group, event_id, source, limit=2, viewer_roles=roles_mask(principal.roles)
    )
    if not found:
        raise NotFound(
            f"no visible event has id {event_id!r}" + (f" and source {source!r}" if source else "")
        )
    if len(found) > 1:
        raise Conflict(
            f"several visible events have id {event_id!r}; pass source to choose one",
            details=[{"source": event.source} for event in found],
        )
    return state, found[0]


_PAYLOAD = "/payload"


@router.get("/{event_id}/payload", response_class=Response)
async def get_payload(request: Request, event_id: str, source: SourceQuery = None) -> Response:
    """The raw payload an inbound webhook received for this event (`event_id` percent-encoded,
    as every id in a path)."""
    return await get_event(request, event_id + _PAYLOAD, source)


@router.get("/{event_id:path}", response_class=Response)
async def get_event(request: Request, event_id: str, source: SourceQuery = None) -> Response:
    """One visible event by its CloudEvents id, or its raw payload.

    The router sees the path decoded, so the path itself tells the two apart: it ends with a
    literal `/payload` for the payload of the event named before it (an id holding "/" too),
    and with `%2Fpayload` for the event whose id ends with "/payload"."""
    raw_path: bytes | None = request.scope.get("raw_path")
    if event_id.endswith(_PAYLOAD) and (raw_path is None or raw_path.endswith(_PAYLOAD.encode())):
        state, event = await visible_event(request, event_id.removesuffix(_PAYLOAD), source)
        payload = await state.storage.event_payload(event.position)
        if payload is None:
            raise NotFound(
                "this event did not come through an inbound webhook; it has no raw payload"
            )
        return Response(payload, headers=_JSON_HEADERS)
    _, event = await visible_event(request, event_id, source)
    return Response(event.to_json(), headers=_JSON_HEADERS)
