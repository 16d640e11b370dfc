"""`/v1/events`: ingest (structured, batch, binary mode), list with cursors, get by id."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from starlette.requests import Request
from starlette.responses import Response

from tidings import groups, timestamps, wire
from tidings.api.auth import authenticate
from tidings.api.body import read_limited
from tidings.api.state import state_of
from tidings.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from tidings.model import EventInput, EventQuery, StoredEvent

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
    results = await state.storage.ingest(events, state.clock())
    state.metrics.ingested(result.event.type for result in results if result.created)
    state.wake_worker()
    status = 201 if any(result.created for result in results) else 200
    if batch:
        payload = '{"events":[' + ",".join(r.event.to_json() for r in results) + "]}"
    else:
        payload = results[0].event.to_json()
    return Response(payload, status_code=status, headers=_JSON_HEADERS)


def _authorize(token_group: str, events: list[EventInput], batch: bool) -> None:
    outside = [i for i, event in enumerate(events) if not groups.contains(token_group, event.group)]
    if not outside:
        return
    details = [{"index": i, "group": events[i].group} for i in outside] if batch else []
    raise Forbidden(
        f"the token's group {token_group!r} does not contain the group of "
        + (f"{len(outside)} events in the batch" if batch else f"the event ({events[0].group!r})"),
        details=details,
    )


@router.get("", response_class=Response)
async def list_events(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=100, description="page size")] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    order: Annotated[Literal["asc", "desc"], Query(description="by ingest order")] = "asc",
    type: Annotated[list[str] | None, Query(description="exact type, or 'prefix.*'")] = None,
    source: Annotated[str | None, Query()] = None,
    subject: Annotated[str | None, Query(description="exact subject, or 'prefix*'")] = None,
    group: Annotated[str | None, Query(description="a subtree inside the token's group")] = None,
    actor: Annotated[str | None, Query(description="the actor's subject")] = None,
    since: Annotated[str | None, Query(description="RFC 3339; events at or after")] = None,
    until: Annotated[str | None, Query(description="RFC 3339; events before")] = None,
) -> Response:
    """List the visible events, filtered, a page at a time."""
    principal = await authenticate(request)
    principal.require("viewer")
    state = state_of(request)
    scope = principal.group
    if group is not None:
        groups.parse_group(group, "group")
        if not principal.sees(group):
            raise Forbidden(f"group {group!r} is outside the token's group {principal.group!r}")
        scope = group
    types, prefixes = _type_filter(type or [])
    subject_exact, subject_prefix = (
        (None, subject[:-1]) if subject and subject.endswith("*") else (subject, None)
    )
    after = state.cursors.decode(cursor) if cursor is not None else None
    descending = order == "desc"
    query = EventQuery(
        scope=scope,
        types=types,
        type_prefixes=prefixes,
        source=source,
        subject=subject_exact,
        subject_prefix=subject_prefix,
        actor=actor,
        since_ns=None if since is None else timestamps.parse(since, "since").ns,
        until_ns=None if until is None else timestamps.parse(until, "until").ns,
        after=after,
        descending=descending,
        limit=limit + 1,
    )
    found = await state.storage.list_events(query)
    has_more = len(found) > limit
    page = found[:limit]
    next_cursor = _next_cursor(state.cursors.encode, page, has_more, descending, after)
    return Response(wire.render_page(page, has_more, next_cursor), headers=_JSON_HEADERS)


def _next_cursor(
    encode: Any, page: list[StoredEvent], has_more: bool, descending: bool, after: int | None
) -> str | None:
    """Where the next page starts. Ascending, the last page still has one, to resume from later."""
    if page and (has_more or not descending):
        return str(encode(page[-1].position))
    if not descending:
        return str(encode(after or 0))
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


@router.get("/{event_id:path}", response_class=Response)
async def get_event(
    request: Request,
    event_id: str,
    source: Annotated[str | None, Query(description="tells apart events that share an id")] = None,
) -> Response:
    """One visible event by its CloudEvents id."""
    principal = await authenticate(request)
    principal.require("viewer")
    state = state_of(request)
    found = await state.storage.find_events(principal.group, event_id, source, limit=2)
    if not found:
        raise NotFound(
            f"no visible event has id {event_id!r}" + (f" and source {source!r}" if source else "")
        )
    if len(found) > 1:
        raise Conflict(
            f"several visible events have id {event_id!r}; pass source to choose one",
            details=[{"source": event.source} for event in found],
        )
    return Response(found[0].to_json(), headers=_JSON_HEADERS)
