"""`/v1/subscriptions`: a group's endpoints, their deliveries, replay and a test send."""

from __future__ import annotations

import base64
import re
import secrets
from dataclasses import replace
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from fastapi import APIRouter, Query, Request, Response
from pydantic import Field

from tidings import groups, timestamps, wire
from tidings.api.auth import authenticate
from tidings.api.state import AppState, state_of
from tidings.api.storable import Body
from tidings.delivery import ssrf
from tidings.delivery.transport import HttpOutcome
from tidings.delivery.worker import build_request
from tidings.errors import BadRequest, NotFound, Unprocessable
from tidings.ids import uuid7
from tidings.model import PAGE_LIMIT, Delivery, EventInput, StoredEvent, Subscription, roles_mask
from tidings.timestamps import from_ns
from tidings.tokens import Principal

router = APIRouter(tags=["subscriptions"])

CREATED = "dev.chainguard.api.events.subscription.created.v1"
DELETED = "dev.chainguard.api.events.subscription.deleted.v1"
TEST_TYPE = "dev.tidings.subscription.test.v1"


MAX_SINK = 2048  # characters of a sink's URL
MAX_TYPES = 100  # type filters of a subscription


class SubscriptionCreate(Body):
    """A new subscription of `parent`'s subtree."""

    parent: str = Field(description="the group whose events (and its subtree's) are delivered")
    sink: str = Field(
        max_length=MAX_SINK,
        description="an http(s) URL; for kind slack, a Slack incoming-webhook URL",
    )
    kind: Literal["webhook", "slack"] = "webhook"
    types: list[str] = Field(
        default_factory=list,
        max_length=MAX_TYPES,
        description="exact types or 'prefix.*'; empty: all",
    )
    subject: str | None = Field(
        default=None, description="only events whose subject starts with this"
    )
    description: str | None = Field(default=None, max_length=1000)
    slack_username: str | None = Field(default=None, max_length=80)
    slack_icon: str | None = Field(
        default=None, max_length=500, description="':emoji:' or an image URL"
    )
    signing_secret: str | None = Field(
        default=None,
        description="'whsec_' + base64 to also sign with Standard Webhooks, or 'generate'",
    )


class SubscriptionUpdate(Body):
    """Changes to a subscription; absent fields stay as they are."""

    sink: str | None = Field(default=None, max_length=MAX_SINK)
    types: list[str] | None = Field(default=None, max_length=MAX_TYPES)
    subject: str | None = None
    description: str | None = Field(default=None, max_length=1000)
    state: Literal["active", "disabled"] | None = None
    slack_username: str | None = Field(default=None, max_length=80)
    slack_icon: str | None = Field(default=None, max_length=500)


class Replay(Body):
    """Queue every matching event stored since `since` again."""

    since: str = Field(description="RFC 3339")


def redacted_sink(sink: str) -> str:
    """A sink without what may be a credential: the query, userinfo, and the path past its first
    segment (a Slack incoming-webhook URL is itself a secret: /services/T000/B000/XXXX)."""
    parts = urlsplit(sink)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    segments = [segment for segment in parts.path.split("/") if segment]
    path = "/" + segments[0] + ("/…" if len(segments) > 1 else "") if segments else "/"
    return urlunsplit((parts.scheme, host, path, "…" if parts.query else "", ""))


def subscription_json(
    sub: Subscription, secret: str | None = None, full_sink: bool = True
) -> dict[str, Any]:
    """The JSON form of a subscription; its signing secret only when created, its whole sink
    only for editors."""
    body: dict[str, Any] = {
        "id": sub.id,
        "parent": sub.group,
        "kind": sub.kind,
        "sink": sub.sink if full_sink else redacted_sink(sub.sink),
        "types": list(sub.types),
        "subject": sub.subject_prefix,
        "description": sub.description,
        "state": sub.state,
        "state_reason": sub.state_reason,
        "slack_username": sub.slack_username,
        "slack_icon": sub.slack_icon,
        "signed": sub.signing_secret is not None,
        "created_at": from_ns(sub.created_ns).render(),
        "updated_at": from_ns(sub.updated_ns).render(),
    }
    if secret is not None:
        body["signing_secret"] = secret
    return body


def delivery_json(delivery: Delivery) -> dict[str, Any]:
    """The JSON form of a delivery with its attempts."""
    return {
        "id": str(delivery.id),
        "subscription": delivery.subscription_id,
        "event": {
            "id": delivery.event_id,
            "source": delivery.event_source,
            "type": delivery.event_type,
        },
        "status": delivery.status,
        "attempts": [
            {
                "number": a.number,
                "at": from_ns(a.started_ns).render(),
                "status_code": a.status_code,
                "latency_ms": round(a.latency_ms, 3),
                "error": a.error,
                "response": a.response,
            }
            for a in delivery.attempt_log
        ],
        "next_attempt_at": from_ns(delivery.due_ns).render()
        if delivery.status == "pending"
        else None,
        "created_at": from_ns(delivery.created_ns).render(),
        "updated_at": from_ns(delivery.updated_ns).render(),
    }


def _types(values: list[str]) -> tuple[str, ...]:
    for value in values:
        if "*" in value.removesuffix(".*"):
            raise BadRequest(f"type filter {value!r} must be an exact type or 'prefix.*'")
        # What is left is a type, or its prefix: empty, whitespace and length as types have.
        wire.check_attribute("type", value.removesuffix(".*"), f"type filter {value[:40]!r}")
    return tuple(values)


def _subject(value: str | None) -> str | None:
    """A subject filter (a prefix of the subjects to deliver), checked as subjects are."""
    return wire.check_attribute("subject", value, "subject") if value else None


def _secret(value: str | None) -> str | None:
    if value is None:
        return None
    if value == "generate":
        return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    try:
        key = base64.b64decode(value.removeprefix("whsec_"), validate=True)
    except ValueError as exc:  # binascii.Error, or a text not ASCII
        raise BadRequest(
            "signing_secret must be 'whsec_' followed by base64, or 'generate'"
        ) from exc
    if not value.startswith("whsec_") or not 24 <= len(key) <= 64:
        raise BadRequest("signing_secret must be 'whsec_' followed by base64 of 24 to 64 bytes")
    return value


_EMOJI = re.compile(r":[a-z0-9_+'-]{1,98}:")


def _icon(value: str | None) -> str | None:
    """A Slack icon: an ':emoji:' name or an http(s) image URL."""
    if value is None or _EMOJI.fullmatch(value) or re.fullmatch(r"https?://\S+", value):
        return value
    raise BadRequest(f"slack_icon must be an ':emoji:' name or an http(s) image URL, got {value!r}")


async def _check_sink(state: AppState, sink: str) -> None:
    try:
        await ssrf.check_sink(sink, state.settings.allow_private_sinks)
    except ssrf.UnsafeSink as exc:
        raise Unprocessable(f"sink {sink!r} is refused: {exc}") from exc


def _audit_event(
    state: AppState, principal: Principal, event_type: str, sub: Subscription, body: dict[str, Any]
) -> EventInput:
    """The audit event recording a change to a subscription, as Chainguard shapes it."""
    return wire.parse_event(
        {
            "type": event_type,
            "source": f"{state.issuer_url}/v1/subscriptions",
            "subject": sub.id,
            "group": sub.group,
            "data": {
                "actor": {"subject": principal.subject or f"token:{principal.token_id}"},
                "body": body,
            },
        }
    )


async def _send_test(state: AppState, sub: Subscription, principal: Principal) -> HttpOutcome:
    """Send a test event (not stored) to the sink, exactly as a delivery would be sent."""
    if state.transport is None or state.issuer is None:
        raise Unprocessable("this process cannot send: it runs without a delivery transport")
    now = state.clock()
    test = wire.parse_event(
        {
            "type": TEST_TYPE,
            "source": f"{state.issuer_url}/v1/subscriptions",
            "subject": sub.id,
            "group": sub.group,
            "data": {
                "actor": {"subject": principal.subject or f"token:{principal.token_id}"},
                "body": {"id": sub.id, "sink": sub.sink, "message": "a test event from tidings"},
            },
        }
    )
    event_id = uuid7()
    attributes = wire.render_attributes(test, event_id, from_ns(now), now)
    event = StoredEvent.of_new(test, 0, event_id, attributes)  # never stored: position 0
    headers, body = await build_request(sub, event, f"test_{event_id}", state.issuer.token_for, now)
    return await state.transport.post(sub.sink, headers, body)


async def visible_subscription(state: AppState, principal: Principal, sub_id: str) -> Subscription:
    """The subscription if the principal's subtree holds it, else NotFound."""
    sub = await state.storage.subscription(sub_id)
    if sub is None or not principal.sees(sub.group):
        raise NotFound(f"no subscription {sub_id!r} is visible to this token")
    return sub


@router.post("/v1/subscriptions", status_code=201)
async def create_subscription(request: Request, spec: SubscriptionCreate) -> dict[str, Any]:
    """Subscribe an endpoint to a group's events; its id is a UIDP under the parent."""
    principal = await authenticate(request)
    parent = groups.parse_group(spec.parent, "parent")
    principal.require("editor", parent)
    state = state_of(request)
    await _check_sink(state, spec.sink)
    now = state.clock()
    secret = _secret(spec.signing_secret)
    sub = Subscription(
        id=groups.new_child(parent),
        group=parent,
        kind=spec.kind,
        sink=spec.sink,
        types=_types(spec.types),
        subject_prefix=_subject(spec.subject),
        description=spec.description,
        slack_username=spec.slack_username,
        slack_icon=_icon(spec.slack_icon),
        signing_secret=secret,
        roles=tuple(sorted(principal.roles)),
        created_ns=now,
        updated_ns=now,
    )
    # The audit log is read by every viewer above the group: it names the sink without secrets.
    audit = _audit_event(
        state, principal, CREATED, sub, {"id": sub.id, "sink": redacted_sink(sub.sink)}
    )
    await state.storage.create_subscription(sub, [audit], now)
    state.wake_worker()
    return subscription_json(sub, secret)


@router.get("/v1/subscriptions")
async def list_subscriptions(
    request: Request,
    group: Annotated[str | None, Query(description="a subtree inside the token's group")] = None,
) -> dict[str, Any]:
    """The subscriptions of a subtree."""
    principal = await authenticate(request)
    scope = principal.group if group is None else groups.parse_group(group, "group")
    principal.require("viewer", scope)
    found = await state_of(request).storage.subscriptions(scope)
    return {
        "subscriptions": [
            subscription_json(s, full_sink="editor" in principal.roles) for s in found
        ],
        "has_more": False,
        "next_cursor": None,
    }


@router.post("/v1/subscriptions/{sub_id:path}/test")
async def test_subscription(request: Request, sub_id: str) -> dict[str, Any]:
    """Send a test event to the sink now and answer how it went."""
    principal = await authenticate(request)
    state = state_of(request)
    sub = await visible_subscription(state, principal, sub_id)
    principal.require("editor", sub.group)
    outcome = await _send_test(state, sub, principal)
    return {
        "status_code": outcome.status,
        "latency_ms": round(outcome.latency_ms, 3),
        "error": outcome.error,
        "response": outcome.response,
        "delivered": outcome.status is not None and 200 <= outcome.status < 300,
    }


@router.get("/v1/subscriptions/{sub_id:path}/deliveries")
async def list_deliveries(
    request: Request,
    sub_id: str,
    status: Annotated[Literal["pending", "delivered", "failed"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_LIMIT)] = PAGE_LIMIT,
    cursor: Annotated[str | None, Query()] = None,
) -> dict[str, Any]:
    """A subscription's deliveries, newest first, each with its attempts."""
    principal = await authenticate(request)
    state = state_of(request)
    sub = await visible_subscription(state, principal, sub_id)
    principal.require("viewer", sub.group)
    after = None if cursor is None else state.delivery_cursors.decode(cursor).position
    found = await state.storage.deliveries(
        sub.id, status, after, limit + 1, roles_mask(principal.roles)
    )
    has_more = len(found) > limit
    page = found[:limit]
    return {
        "deliveries": [delivery_json(d) for d in page],
        "has_more": has_more,
        "next_cursor": state.delivery_cursors.encode(page[-1].id) if has_more else None,
    }


@router.post("/v1/subscriptions/{sub_id:path}/replay", status_code=202)
async def replay(request: Request, sub_id: str, spec: Replay) -> dict[str, Any]:
    """Queue every matching event stored since `since` for this subscription again."""
    principal = await authenticate(request)
    state = state_of(request)
    sub = await visible_subscription(state, principal, sub_id)
    principal.require("editor", sub.group)
    if sub.state != "active":
        raise Unprocessable("the subscription is disabled; activate it before replaying")
    since = timestamps.parse_bound(spec.since, "since")
    queued = await state.storage.replay(sub, since, state.clock())
    state.wake_worker()
    return {"queued": queued}


@router.get("/v1/subscriptions/{sub_id:path}")
async def get_subscription(request: Request, sub_id: str) -> dict[str, Any]:
    """One subscription."""
    principal = await authenticate(request)
    state = state_of(request)
    sub = await visible_subscription(state, principal, sub_id)
    principal.require("viewer", sub.group)
    return subscription_json(sub, full_sink="editor" in principal.roles)


@router.patch("/v1/subscriptions/{sub_id:path}")
async def update_subscription(
    request: Request, sub_id: str, spec: SubscriptionUpdate
) -> dict[str, Any]:
    """Change a subscription's sink, filter, state or Slack appearance."""
    principal = await authenticate(request)
    state = state_of(request)
    sub = await visible_subscription(state, principal, sub_id)
    principal.require("editor", sub.group)
    changes: dict[str, Any] = {"updated_ns": state.clock()}
    if spec.sink is not None:
        await _check_sink(state, spec.sink)
        changes["sink"] = spec.sink
    if spec.types is not None:
        changes["types"] = _types(spec.types)
    if "subject" in spec.model_fields_set:
        changes["subject_prefix"] = _subject(spec.subject)
    for name in ("description", "slack_username", "slack_icon"):
        if name in spec.model_fields_set:
            changes[name] = getattr(spec, name)
    if "slack_icon" in changes:
        changes["slack_icon"] = _icon(changes["slack_icon"])
    if spec.state is not None and spec.state != sub.state:
        changes["state"] = spec.state
        changes["state_reason"] = None if spec.state == "active" else "disabled by request"
        changes["failing_since_ns"] = None
    updated = replace(sub, **changes)
    await state.storage.update_subscription(updated, set(changes))
    return subscription_json(updated)


@router.delete("/v1/subscriptions/{sub_id:path}", status_code=204, response_class=Response)
async def delete_subscription(request: Request, sub_id: str) -> Response:
    """Delete a subscription; its pending deliveries go with it."""
    principal = await authenticate(request)
    state = state_of(request)
    sub = await visible_subscription(state, principal, sub_id)
    principal.require("editor", sub.group)
    audit = _audit_event(state, principal, DELETED, sub, {"id": sub.id})
    if await state.storage.delete_subscription(sub.id, [audit], state.clock()) is None:
        raise NotFound(f"no subscription {sub_id!r} is visible to this token")
    state.wake_worker()
    return Response(status_code=204)


@router.post("/v1/deliveries/{delivery_id}/retry", status_code=202)
async def retry_delivery(request: Request, delivery_id: str) -> dict[str, Any]:
    """Queue a finished delivery again, at once, with a fresh schedule."""
    principal = await authenticate(request)
    state = state_of(request)
    valid = delivery_id.isascii() and delivery_id.isdigit() and len(delivery_id) <= 18
    delivery = await state.storage.delivery(int(delivery_id)) if valid else None
    sub = None if delivery is None else await state.storage.subscription(delivery.subscription_id)
    if delivery is None or sub is None or not principal.sees(sub.group):
        raise NotFound(f"no delivery {delivery_id!r} is visible to this token")
    principal.require("editor", sub.group)
    if sub.state != "active":
        raise Unprocessable(
            "the subscription is disabled; activate it before retrying its deliveries"
        )
    if not await state.storage.retry_delivery(delivery.id, state.clock()):
        raise Unprocessable("the delivery is still pending; it will be attempted on its schedule")
    state.wake_worker()
    return {"id": str(delivery.id), "status": "pending"}
