"""A verified delivery as a typed event, and the binary-mode CloudEvent parsing behind it.

A delivery is a binary-mode CloudEvent (CloudEvents 1.0 HTTP binding): every
attribute a `Ce-*` header, percent-encoded where needed; the data, JSON, the body:
`{"actor": {"subject", ...}, "body": {...}}` (tidings adds `previous` on updates).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import unquote

from .errors import EventOutsideGroup, InvalidEvent

__all__ = [
    "Actor",
    "Event",
    "HeadersLike",
    "TokenClaims",
    "group_contains",
    "is_group",
    "lower_headers",
    "parse_event",
]

SPECVERSION = "1.0"
_SEGMENT = r"[a-z0-9][a-z0-9_-]{0,63}"
_GROUP = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT}){{0,15}}")
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})", re.ASCII
)
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


class SupportsItems(Protocol):
    """Anything with `.items()` of header pairs: a dict, Starlette or Werkzeug headers."""

    def items(self) -> Iterable[tuple[str, str]]: ...


HeadersLike = SupportsItems | Iterable[tuple[str, str]]


def lower_headers(headers: HeadersLike) -> dict[str, list[str]]:
    """Every header value by lowercased name, repeated headers kept."""
    pairs: Iterable[tuple[str, str]] = headers.items() if hasattr(headers, "items") else headers
    lowered: dict[str, list[str]] = {}
    for name, value in pairs:
        lowered.setdefault(name.lower(), []).append(value)
    return lowered


def is_group(path: str) -> bool:
    """Whether `path` is a group path: 1 to 16 lowercase segments separated by `/`."""
    return _GROUP.fullmatch(path) is not None


def group_contains(ancestor: str, path: str) -> bool:
    """Whether `path` is `ancestor` or lies below it (whole segments: `a/b` holds not `a/bc`)."""
    return path == ancestor or path.startswith(ancestor + "/")


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """The verified claims of the delivery's token."""

    issuer: str
    subject: str
    group: str
    audience: str | list[str]
    issued_at: int
    expires_at: int
    jti: str | None
    kid: str
    algorithm: str
    raw: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who caused the event: `subject` always, `email` and `ip` when the platform recorded them."""

    subject: str
    email: str | None = None
    ip: str | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """A verified delivery: the CloudEvent's attributes, its actor and body, and the token."""

    id: str
    source: str
    type: str
    specversion: str
    subject: str | None
    time: str | None  # RFC 3339 as sent (it may carry nanoseconds)
    group: str
    audience: str | None
    extensions: Mapping[str, str]  # every other Ce-* attribute, decoded
    actor: Actor
    body: dict[str, Any]
    previous: dict[str, Any] | None
    data: dict[str, Any]  # the whole JSON body: actor, body, previous, ...
    raw_body: bytes = field(repr=False)
    claims: TokenClaims = field(repr=False)
    webhook_id: str | None = None  # the Standard Webhooks message id, when one was verified

    @property
    def timestamp(self) -> datetime | None:
        """`time` as an aware datetime (to the microsecond), or None."""
        return None if self.time is None else _datetime(self.time)

    def to_cloudevent(self) -> dict[str, Any]:
        """The event in CloudEvents structured mode (JSON), as tidings' audit log shows it."""
        document: dict[str, Any] = {"specversion": self.specversion, "id": self.id}
        document["source"] = self.source
        document["type"] = self.type
        if self.subject is not None:
            document["subject"] = self.subject
        if self.time is not None:
            document["time"] = self.time
        document["datacontenttype"] = "application/json"
        document["group"] = self.group
        if self.audience is not None:
            document["audience"] = self.audience
        document.update(sorted(self.extensions.items()))
        document["data"] = self.data
        return document


def _decode(name: str, raw: str) -> str:
    """A header value decoded as the CloudEvents HTTP binding says."""
    value = raw.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = re.sub(r"\\(.)", r"\1", value[1:-1], flags=re.DOTALL)
    if _BAD_ESCAPE.search(value):
        raise InvalidEvent(f"header {name} has a '%' not followed by two hex digits")
    try:
        return unquote(value, errors="strict")
    except UnicodeDecodeError as exc:
        raise InvalidEvent(f"header {name} is not valid percent-encoded UTF-8") from exc


def _required(attributes: dict[str, str], name: str) -> str:
    value = attributes.pop(name, None)
    if not value:
        raise InvalidEvent(f"the Ce-{name.capitalize()} header is required")
    return value


def parse_event(
    headers: Mapping[str, list[str]], body: bytes, claims: TokenClaims, webhook_id: str | None
) -> Event:
    """The event of a delivery whose token verified; its group must lie inside the token's."""
    attributes: dict[str, str] = {}
    for name, values in headers.items():
        if not name.startswith("ce-"):
            continue
        if len(values) > 1:
            raise InvalidEvent(f"the {name} header appears {len(values)} times")
        attribute = name[3:]
        if not re.fullmatch(r"[a-z0-9]{1,20}", attribute):
            raise InvalidEvent(f"{name} does not name a CloudEvents attribute")
        attributes[attribute] = _decode(name, values[0])
    content_type = (headers.get("content-type") or [""])[0]
    if content_type.split(";", 1)[0].strip().lower() != "application/json":
        raise InvalidEvent(f"Content-Type must be application/json, got {content_type!r}")
    if "datacontenttype" in attributes:
        raise InvalidEvent("in binary mode the data's type is Content-Type, not Ce-Datacontenttype")
    specversion = attributes.pop("specversion", None)
    if specversion != SPECVERSION:
        raise InvalidEvent(f"Ce-Specversion must be {SPECVERSION!r}, got {specversion!r}")
    event_id, source = _required(attributes, "id"), _required(attributes, "source")
    event_type, group = _required(attributes, "type"), _required(attributes, "group")
    subject = attributes.pop("subject", None)
    time = attributes.pop("time", None)
    if time is not None:
        try:  # the form, then the date: a 13th month or a 61st second is no time either
            if _RFC3339.fullmatch(time) is None:
                raise ValueError("not RFC 3339")
            _datetime(time)
        except (ValueError, OverflowError) as exc:
            raise InvalidEvent(f"Ce-Time must be an RFC 3339 date-time, got {time!r}") from exc
    if not is_group(group):
        raise InvalidEvent(f"Ce-Group is not a group path: {group!r}")
    # An event may be shared with groups outside its own (Ce-Allowedgroups): a subscription of
    # such a group receives it with its own token.
    shared = [g.strip() for g in str(attributes.get("allowedgroups", "")).split(",") if g.strip()]
    if not group_contains(claims.group, group) and not any(
        is_group(g) and (group_contains(claims.group, g) or group_contains(g, claims.group))
        for g in shared
    ):
        raise EventOutsideGroup(
            f"the event's group {group!r} is not inside the token's group {claims.group!r}",
            group=group,
            token_group=claims.group,
        )
    audience = attributes.pop("audience", None)
    data = _data(body)
    actor = data["actor"]
    return Event(
        id=event_id,
        source=source,
        type=event_type,
        specversion=SPECVERSION,
        subject=subject,
        time=time,
        group=group,
        audience=audience,
        extensions=dict(sorted(attributes.items())),
        actor=Actor(subject=actor["subject"], email=actor.get("email"), ip=actor.get("ip")),
        body=data["body"],
        previous=data.get("previous"),
        data=data,
        raw_body=body,
        claims=claims,
        webhook_id=webhook_id,
    )


def _datetime(time: str) -> datetime:
    """An RFC 3339 `time` (of _RFC3339's form) as an aware datetime, to the microsecond;
    ValueError if its date or time of day does not exist."""
    text = time.replace("z", "Z").replace("t", "T")
    head, _, rest = text.partition(".")
    if rest:  # datetime takes at most 6 fractional digits
        digits = re.match(r"\d+", rest)
        assert digits is not None
        text = f"{head}.{digits.group()[:6]}{rest[digits.end() :]}"
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _data(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # nested past the stack
        raise InvalidEvent(f"the body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidEvent("the body must be a JSON object with 'actor' and 'body'")
    actor = data.get("actor")
    if not isinstance(actor, dict) or not isinstance(actor.get("subject"), str):
        raise InvalidEvent("the body's 'actor' must be an object with a string 'subject'")
    for optional in ("email", "ip"):
        if optional in actor and not isinstance(actor[optional], str):
            raise InvalidEvent(f"the body's actor.{optional} must be a string")
    if not isinstance(data.get("body"), dict):
        raise InvalidEvent("the body's 'body' must be a JSON object")
    if "previous" in data and not isinstance(data["previous"], dict):
        raise InvalidEvent("the body's 'previous' must be a JSON object")
    return data
