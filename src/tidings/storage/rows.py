"""How records map to table rows, the same on every backend."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import orjson

from tidings import groups
from tidings.catalog import EventType
from tidings.model import (
    Claim,
    EventInput,
    SigningKey,
    StoredEvent,
    Subscription,
    Token,
    Webhook,
    roles_mask,
)

SUBSCRIPTION_COLUMNS = (
    "id, group_path, kind, sink, types, subject_prefix, description, state, state_reason,"
    " slack_username, slack_icon, signing_secret, roles, failing_since_ns, created_ns, updated_ns"
)
TOKEN_COLUMNS = "id, secret_hash, group_path, roles, name, subject, expires_ns, created_ns"  # noqa: S105
WEBHOOK_COLUMNS = "id, group_path, name, mapping, key_hash, rate_limit, created_ns"
EVENT_TYPE_COLUMNS = "type, description, schema, example, validation"
SIGNING_KEY_COLUMNS = "kid, private_key, public_jwk, created_ns, signs_from_ns, retires_ns"


def subscription_from_row(row: Sequence[Any]) -> Subscription:
    """A Subscription from a row of SUBSCRIPTION_COLUMNS."""
    return Subscription(
        id=row[0],
        group=row[1],
        kind=row[2],
        sink=row[3],
        types=tuple(orjson.loads(row[4])),
        subject_prefix=row[5],
        description=row[6],
        state=row[7],
        state_reason=row[8],
        slack_username=row[9],
        slack_icon=row[10],
        signing_secret=row[11],
        roles=tuple(row[12].split(",")) if row[12] else (),
        failing_since_ns=row[13],
        created_ns=row[14],
        updated_ns=row[15],
    )


def subscription_values(sub: Subscription) -> tuple[Any, ...]:
    """A subscription's values in SUBSCRIPTION_COLUMNS order, then its tenant."""
    return (
        sub.id,
        sub.group,
        sub.kind,
        sub.sink,
        orjson.dumps(list(sub.types)).decode(),
        sub.subject_prefix,
        sub.description,
        sub.state,
        sub.state_reason,
        sub.slack_username,
        sub.slack_icon,
        sub.signing_secret,
        ",".join(sub.roles),
        sub.failing_since_ns,
        sub.created_ns,
        sub.updated_ns,
        groups.root_of(sub.group),
    )


MUTABLE_SUBSCRIPTION_FIELDS = (
    "sink",
    "types",
    "subject_prefix",
    "description",
    "state",
    "state_reason",
    "slack_username",
    "slack_icon",
    "failing_since_ns",
    "updated_ns",
)


def subscription_update(
    sub: Subscription, fields: Collection[str], p: str
) -> tuple[str, tuple[Any, ...]]:
    """An UPDATE of only the given fields of a subscription (others may change meanwhile,
    e.g. a worker disabling it), with the backend's placeholder `p`."""
    unknown = set(fields) - set(MUTABLE_SUBSCRIPTION_FIELDS)
    if unknown:
        raise ValueError(f"not mutable: {sorted(unknown)}")
    chosen = [name for name in MUTABLE_SUBSCRIPTION_FIELDS if name in fields]
    values = [
        orjson.dumps(list(sub.types)).decode() if name == "types" else getattr(sub, name)
        for name in chosen
    ]
    assignments = ", ".join(f"{name} = {p}" for name in chosen)
    return f"UPDATE subscriptions SET {assignments} WHERE id = {p}", (*values, sub.id)


def delivers_to(sub: Subscription, event: EventInput) -> bool:
    """Whether a subscription (of the event's group, an ancestor, or an allowed group's) gets it:
    its filter matches and the roles it acts with may see the event."""
    return sub.matches(event.type, event.subject) and (
        event.roles_mask == 0 or bool(event.roles_mask & roles_mask(sub.roles))
    )


def event_identity(event: EventInput, event_id: str) -> tuple[str, str, str, str, str]:
    """An event's first columns in both backends' `events`: tenant, group, id (given or
    minted), source, type."""
    return groups.root_of(event.group), event.group, event_id, event.source, event.type


def groups_above(event: EventInput) -> set[str]:
    """The groups whose subscriptions may get the event: above its group or an allowed group."""
    found = set(groups.ancestors(event.group))
    for allowed in event.allowed_groups:
        found.update(groups.ancestors(allowed))
    return found


def token_from_row(row: Sequence[Any]) -> Token:
    """A Token from a row of TOKEN_COLUMNS."""
    return Token(
        id=row[0],
        secret_hash=row[1],
        group=row[2],
        roles=tuple(row[3].split(",")),
        name=row[4],
        subject=row[5],
        expires_ns=row[6],
        created_ns=row[7],
    )


def token_values(token: Token) -> tuple[Any, ...]:
    """A token's values in TOKEN_COLUMNS order."""
    return (
        token.id,
        token.secret_hash,
        token.group,
        ",".join(token.roles),
        token.name,
        token.subject,
        token.expires_ns,
        token.created_ns,
    )


def webhook_from_row(row: Sequence[Any]) -> Webhook:
    """A Webhook from a row of WEBHOOK_COLUMNS."""
    return Webhook(
        id=row[0],
        group=row[1],
        name=row[2],
        mapping=orjson.loads(row[3]),
        key_hash=row[4],
        rate_limit=row[5],
        created_ns=row[6],
    )


def webhook_values(webhook: Webhook) -> tuple[Any, ...]:
    """A webhook's values in WEBHOOK_COLUMNS order, then its tenant."""
    return (
        webhook.id,
        webhook.group,
        webhook.name,
        orjson.dumps(webhook.mapping).decode(),
        webhook.key_hash,
        webhook.rate_limit,
        webhook.created_ns,
        groups.root_of(webhook.group),
    )


def event_type_from_row(row: Sequence[Any]) -> EventType:
    """A tenant's EventType from a row of EVENT_TYPE_COLUMNS."""
    return EventType(
        type=row[0],
        description=row[1] or "",
        schema=None if row[2] is None else orjson.loads(row[2]),
        examples=() if row[3] is None else (orjson.loads(row[3]),),
        validation=row[4],
        origin="tenant",
    )


def event_type_values(tenant: str, event_type: EventType, now_ns: int) -> tuple[Any, ...]:
    """A tenant's event type as (tenant, EVENT_TYPE_COLUMNS..., created_ns, updated_ns)."""
    return (
        tenant,
        event_type.type,
        event_type.description,
        None if event_type.schema is None else orjson.dumps(event_type.schema).decode(),
        orjson.dumps(event_type.examples[0]).decode() if event_type.examples else None,
        event_type.validation,
        now_ns,
        now_ns,
    )


UPSERT_EVENT_TYPE = (
    f"INSERT INTO event_types (tenant, {EVENT_TYPE_COLUMNS}, created_ns, updated_ns)"
    " VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}) ON CONFLICT (tenant, type) DO UPDATE SET"
    " description = excluded.description, schema = excluded.schema, example = excluded.example,"
    " validation = excluded.validation, updated_ns = excluded.updated_ns"
)


def signing_key_from_row(row: Sequence[Any]) -> SigningKey:
    """A SigningKey from a row of SIGNING_KEY_COLUMNS."""
    return SigningKey(
        kid=row[0],
        private_key=bytes(row[1]),
        public_jwk=orjson.loads(row[2]),
        created_ns=row[3],
        signs_from_ns=row[4],
        retires_ns=row[5],
    )


def signing_key_values(key: SigningKey) -> tuple[Any, ...]:
    """A key's values in SIGNING_KEY_COLUMNS order."""
    return (
        key.kid,
        key.private_key,
        orjson.dumps(key.public_jwk).decode(),
        key.created_ns,
        key.signs_from_ns,
        key.retires_ns,
    )


def placeholders(sql: str, p: str) -> str:
    """A shared statement with the backend's placeholder."""
    return sql.replace("{p}", p)


def deliveries_page_sql(
    p: str,
    select: str,
    sub_id: str,
    status: str | None,
    after: int | None,
    limit: int,
    viewer_roles: int,
) -> tuple[str, list[Any]]:
    """A page of a subscription's deliveries (`select`: the columns and FROM, with `d` the
    delivery and `e` its event) of events a reader with `viewer_roles` sees, newest first;
    `p` is the backend's placeholder."""
    sql = (
        f"{select} WHERE d.subscription_id = {p}"
        f" AND (e.roles_mask = 0 OR (e.roles_mask & {p}) != 0)"
    )
    params: list[Any] = [sub_id, viewer_roles]
    if status is not None:
        sql += f" AND d.status = {p}"
        params.append(status)
    if after is not None:
        sql += f" AND d.id < {p}"
        params.append(after)
    sql += f" ORDER BY d.id DESC LIMIT {p}"
    params.append(limit)
    return sql, params


def claims_of(
    claimed: Sequence[tuple[int, str, Any, int]],
    token: str,
    subs: dict[str, Subscription],
    events: dict[Any, StoredEvent],
) -> tuple[list[Claim], list[int]]:
    """The claims of claimed deliveries `(id, subscription id, event key, attempts)`, and the
    ids of those to fail at once: their subscription or event is gone, or it is not active."""
    claims: list[Claim] = []
    orphans: list[int] = []
    for delivery_id, sub_id, event_key, attempts in claimed:
        sub, event = subs.get(sub_id), events.get(event_key)
        if sub is None or event is None or sub.state != "active":
            orphans.append(delivery_id)
            continue
        claims.append(
            Claim(
                delivery_id=delivery_id,
                claim_token=token,
                attempts=attempts,
                subscription=sub,
                event=event,
            )
        )
    return claims, orphans
