"""`/v1/webhooks`: inbound webhooks that external systems post raw JSON to (Cloudforet's model)."""

from __future__ import annotations

import hmac
import secrets
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import Field

from tidings import groups, inbound, wire
from tidings.api.auth import authenticate
from tidings.api.body import read_limited
from tidings.api.state import AppState, state_of
from tidings.api.storable import Body
from tidings.errors import NotFound, TooManyRequests, Unauthenticated
from tidings.model import Webhook
from tidings.ratelimit import retry_after
from tidings.timestamps import from_ns
from tidings.tokens import hash_secret

router = APIRouter(tags=["webhooks"])
KEY_PREFIX = "tdw_"


class WebhookCreate(Body):
    """A new inbound webhook of `group`."""

    group: str
    name: str = Field(min_length=1, max_length=200)
    mapping: dict[str, Any] | str = Field(
        description="'cloudevents', 'alertmanager', 'grafana', or {'kind': 'generic', 'type': '/ptr', ...}"
    )
    rate_limit: float = Field(
        default=100.0,
        ge=0.01,
        le=10_000,
        allow_inf_nan=False,
        description="requests per second (one per 100 s or more)",
    )


def webhook_json(webhook: Webhook, access_key: str | None = None) -> dict[str, Any]:
    """The JSON form of a webhook; its access key only when created."""
    body: dict[str, Any] = {
        "id": webhook.id,
        "group": webhook.group,
        "name": webhook.name,
        "mapping": webhook.mapping,
        "rate_limit": webhook.rate_limit,
        "url": f"/v1/webhooks/{webhook.id}/events",
        "created_at": from_ns(webhook.created_ns).render(),
    }
    if access_key is not None:
        body["access_key"] = access_key
    return body


@router.post("/v1/webhooks", status_code=201)
async def create_webhook(request: Request, spec: WebhookCreate) -> dict[str, Any]:
    """Create an inbound webhook; its access key is shown only here and stored hashed."""
    principal = await authenticate(request)
    group = groups.parse_group(spec.group, "group")
    principal.require("editor", group)
    state = state_of(request)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    webhook = Webhook(
        id="webhook-" + secrets.token_hex(8),
        group=group,
        name=spec.name,
        mapping=inbound.check_mapping(spec.mapping),
        key_hash=hash_secret(key),
        rate_limit=spec.rate_limit,
        created_ns=state.clock(),
    )
    await state.storage.create_webhook(webhook)
    return webhook_json(webhook, key)


@router.get("/v1/webhooks")
async def list_webhooks(request: Request, group: str | None = None) -> dict[str, Any]:
    """The inbound webhooks of a subtree (without their keys)."""
    principal = await authenticate(request)
    scope = principal.group if group is None else groups.parse_group(group, "group")
    principal.require("viewer", scope)
    found = await state_of(request).storage.webhooks(scope)
    return {"webhooks": [webhook_json(w) for w in found], "has_more": False, "next_cursor": None}


@router.delete("/v1/webhooks/{webhook_id}", status_code=204, response_class=Response)
async def delete_webhook(request: Request, webhook_id: str) -> Response:
    """Delete an inbound webhook; its key stops working at once."""
    principal = await authenticate(request)
    state = state_of(request)
    webhook = await state.storage.webhook(webhook_id)
    if webhook is None or not principal.sees(webhook.group):
        raise NotFound(f"no webhook {webhook_id!r} is visible to this token")
    principal.require("editor", webhook.group)
    await state.storage.delete_webhook(webhook_id)
    return Response(status_code=204)


_RECEIVE_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"type": "object"}}},
    },
    "parameters": [
        {"name": "X-Access-Key", "in": "header", "required": False, "schema": {"type": "string"}},
        {"name": "access_key", "in": "query", "required": False, "schema": {"type": "string"}},
    ],
    "responses": {
        "201": {"description": 'the events the payload became: {"events": [...]}'},
        "401": {"description": "a wrong or missing access key; nothing is stored"},
        "429": {"description": "over the webhook's rate limit; see Retry-After"},
    },
}


async def _keyed(state: AppState, webhook_id: str, key: object) -> Webhook:
    """The webhook whose access key `key` is, or Unauthenticated (in constant time whether
    the webhook exists or not)."""
    webhook = await state.storage.webhook(webhook_id)
    expected = webhook.key_hash if webhook is not None else hash_secret("")
    if (
        not isinstance(key, str)
        or not hmac.compare_digest(hash_secret(key), expected)
        or webhook is None
    ):
        raise Unauthenticated("a valid access key for this webhook is required (X-Access-Key)")
    return webhook


@router.post(
    "/v1/webhooks/{webhook_id}/events", openapi_extra=_RECEIVE_DOC, response_class=Response
)
async def receive(request: Request, webhook_id: str) -> Response:
    """Turn an external system's payload into events, authenticated by the webhook's access key.

    The key comes in `X-Access-Key`, an `access_key` query parameter, or, as Cloudforet sends
    it, in the body: `{"webhook_id", "access_key", "data"}` (the payload is then `data`). A key
    in the header or the query is checked before the body is read.
    """
    state = state_of(request)
    key = request.headers.get("x-access-key") or request.query_params.get("access_key")
    webhook = None if key is None else await _keyed(state, webhook_id, key)
    raw = await read_limited(request, state.settings.max_event_bytes, "payload")
    # An external system's payload is taken as it comes: it is kept as received (served by
    # /payload), so an integer beyond 64 bits, approximate in the mapped data, is kept exactly.
    payload = wire.loads(raw, "payload", whole_integers=False)
    if key is None and isinstance(payload, dict) and "access_key" in payload and "data" in payload:
        key = payload.get("access_key")
        if payload.get("webhook_id") not in (None, webhook_id):
            raise Unauthenticated("the body's webhook_id does not match the URL")
        payload = payload["data"]
        raw = wire.dumps(payload).encode()
    if webhook is None:
        webhook = await _keyed(state, webhook_id, key)
    wait = state.rate_limiter.admit(webhook.id, webhook.rate_limit)
    if wait:
        raise TooManyRequests(
            f"webhook {webhook.id} accepts {webhook.rate_limit:g} requests a second",
            retry_after(wait),
        )
    events = await state.catalog.check(
        inbound.events_from(webhook, payload, raw.decode()), batch=True
    )
    results = await state.storage.ingest(events, state.clock())
    state.metrics.ingested(result.event.type for result in results if result.created)
    state.wake_worker()
    status = 201 if any(result.created for result in results) else 200
    body = '{"events":[' + ",".join(result.event.to_json() for result in results) + "]}"
    return Response(body, status_code=status, media_type="application/json")
