"""CloudEvents in and out: structured, batch and binary mode, per CloudEvents 1.0.

Every parser returns validated `EventInput`s or raises `BadRequest` naming the
attribute at fault; nothing here touches storage.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote

import orjson

from tidings import timestamps
from tidings.errors import BadRequest, UnsupportedMediaType
from tidings.groups import parse_group, root_of
from tidings.model import ROLES, EventInput, StoredEvent, roles_mask

SPECVERSION = "1.0"
DEFAULT_AUDIENCE = "customer"
JSON = "application/json"
# Attributes tidings sets itself and renders; a producer may not send them.
STORED_TIME = "storedtime"
VALIDATION_ERROR = "validationerror"  # the catalog's mark on an event its schema refused
RESERVED = frozenset({STORED_TIME, VALIDATION_ERROR, "data", "data_base64"})
CORE = ("specversion", "id", "source", "type", "subject", "time", "datacontenttype")
_EXTENSION_NAME = re.compile(r"[a-z0-9]{1,20}")
# Control characters are C0, DEL and C1 (Unicode's category Cc).
_NO_SPACE = re.compile(r"[^\s\x00-\x1f\x7f-\x9f]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_AUDIENCE = re.compile(r"[a-z0-9][a-z0-9_.:-]{0,63}")
_DATA_KEYS = frozenset({"actor", "body", "previous"})
_ACTOR_KEYS = frozenset({"subject", "email", "ip"})
# In bytes of UTF-8: (tenant, source, id), the actor and the type are index keys, and a
# PostgreSQL index key holds at most 2,704 bytes.
_LIMITS = {"id": 256, "source": 1024, "type": 256, "subject": 1024}
_ACTOR_LIMIT = 1024
_DEPTH_LIMIT = 254  # orjson writes at most this many levels of objects and arrays
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)
# What a text PostgreSQL must store may not hold (it cannot): the actor and the eventkey here,
# any text of a management request (api/storable.py).
NUL_FAULT = "must not hold NUL (\\u0000)"


def dumps(value: Any) -> str:
    """Compact JSON with sorted keys: the canonical text of tidings."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


# orjson reads an integer beyond 64 bits (below -2**63 or above 2**64 - 1) as a float, so its
# digits would not come back as sent: such a number is refused instead. Each is 20 digits or
# more, or a minus and 19 (a time in nanoseconds or a 64-bit id, 19 digits, is neither); the
# rare body with such a run (in a number or in a string) is read again by the standard library,
# which keeps integers whole, to tell. Digits become "0" to find a run fast.
_SMALLEST_INT, _LARGEST_INT = -(2**63), 2**64 - 1
_DIGITS_AS_ZERO = bytes(ord("0") if 0x30 <= byte <= 0x39 else byte for byte in range(256))
_LONG_RUNS = (b"0" * 20, b"-" + b"0" * 19)


def loads(raw: bytes | str, what: str = "body", whole_integers: bool = True) -> Any:
    """Parse JSON, or raise BadRequest saying where it is malformed or (if `whole_integers`)
    which integer it holds that is beyond 64 bits."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the {what} is not valid JSON: {exc}") from exc
    if whole_integers:
        refuse_inexact_integers(raw.encode() if isinstance(raw, str) else raw, what)
    return value


def refuse_inexact_integers(raw: bytes, what: str) -> None:
    """BadRequest naming the first integer of `raw` (valid JSON) beyond 64 bits, if any."""
    zeroed = raw.translate(_DIGITS_AS_ZERO)
    if not any(run in zeroed for run in _LONG_RUNS):
        return
    try:
        json.loads(raw, parse_int=_whole_integer(what))
    except RecursionError as exc:  # orjson reads 1,024 levels; the standard library fewer
        raise too_deep(f"the {what}") from exc


def too_deep(what: str) -> BadRequest:
    """The refusal of JSON nested deeper than tidings stores."""
    return BadRequest(
        f"{what} nests objects and arrays more than {_DEPTH_LIMIT} deep, which tidings cannot store"
    )


def _whole_integer(what: str) -> Callable[[str], int]:
    """json's parse_int: the integer of `digits`, or BadRequest if it is beyond 64 bits."""

    def parse(digits: str) -> int:
        # A sign and 20 digits at most can be in range (and int() refuses past 4,300 digits).
        if len(digits) <= 21 and _SMALLEST_INT <= (value := int(digits)) <= _LARGEST_INT:
            return value
        shown = digits if len(digits) <= 40 else f"{digits[:20]}...({len(digits)} digits)"
        raise BadRequest(
            f"the {what} holds the integer {shown}, beyond 64 bits: it would not be kept"
            " exactly; send it as a string"
        )

    return parse


def parse_event(obj: Any) -> EventInput:
    """Validate one event in structured mode (a JSON object)."""
    if not isinstance(obj, dict):
        raise BadRequest("an event must be a JSON object")
    specversion = obj.get("specversion", SPECVERSION)
    if specversion != SPECVERSION:
        raise BadRequest(f"specversion must be {SPECVERSION!r}, got {specversion!r}")
    if "data_base64" in obj:
        raise UnsupportedMediaType("data must be JSON (application/json); data_base64 is refused")
    _check_content_type(obj.get("datacontenttype"), "datacontenttype")
    if "data" not in obj:
        raise BadRequest("data is required: an object with 'actor' and 'body'")
    attributes = {
        k: v for k, v in obj.items() if k not in ("data", "specversion", "datacontenttype")
    }
    return _build(attributes, obj["data"])


def parse_batch(obj: Any) -> list[EventInput]:
    """Validate a batch (a JSON array of events); errors carry each bad item's index."""
    if not isinstance(obj, list):
        raise BadRequest("a batch must be a JSON array of events")
    if not obj:
        raise BadRequest("a batch must hold at least one event")
    events: list[EventInput] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(obj):
        try:
            events.append(parse_event(item))
        except BadRequest as exc:
            errors.append({"index": index, "message": exc.message})
    if errors:
        raise BadRequest(
            f"{len(errors)} of {len(obj)} events in the batch are invalid; none was stored",
            details=errors,
        )
    return events


def parse_binary(headers: Mapping[str, str], body: bytes) -> EventInput:
    """Validate an event in binary mode: `ce-*` headers, the data as the body.

    Header values are unquoted (if sent as quoted-strings) and percent-decoded
    as the CloudEvents HTTP binding says, then validated like any other attribute.
    """
    attributes: dict[str, Any] = {}
    for name, raw in headers.items():
        lowered = name.lower()
        if not lowered.startswith("ce-"):
            continue
        if not raw.isascii():  # the server read its bytes as Latin-1: they would be garbled
            raise BadRequest(
                f"header {name} holds bytes outside ASCII: percent-encode its UTF-8 (%C3%A9 for é)"
            )
        value = raw
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = _QUOTED_PAIR.sub(r"\1", value[1:-1])
        if _BAD_ESCAPE.search(value):
            raise BadRequest(f"header {name} has a '%' not followed by two hex digits")
        try:
            attributes[lowered[3:]] = unquote(value, errors="strict")
        except UnicodeDecodeError as exc:
            raise BadRequest(f"header {name} is not valid percent-encoded UTF-8") from exc
    specversion = attributes.pop("specversion", None)
    if specversion != SPECVERSION:
        raise BadRequest(f"ce-specversion must be {SPECVERSION!r}, got {specversion!r}")
    if "datacontenttype" in attributes:
        raise BadRequest(
            "in binary mode the data's type is the Content-Type header, not ce-datacontenttype"
        )
    return _build(attributes, loads(body, "data"))


def _check_content_type(value: Any, what: str) -> None:
    if value is None:
        return
    if not isinstance(value, str) or value.split(";", 1)[0].strip().lower() != JSON:
        raise UnsupportedMediaType(f"{what} must be {JSON}, got {value!r}")


def _too_long(value: str, limit: int) -> bool:
    """Whether `value` takes more than `limit` bytes in UTF-8 (encoded only if it might)."""
    return len(value) > limit // 4 and len(value.encode("utf-8", "surrogatepass")) > limit


def _text(attributes: dict[str, Any], name: str, required: bool) -> str | None:
    value = attributes.pop(name, None)
    if value is None:
        if required:
            raise BadRequest(f"{name} is required")
        return None
    return check_attribute(name, value)


def check_attribute(name: str, value: Any, what: str | None = None) -> str:
    """`value` if it is a valid `name` attribute (id, source, type or subject), else
    BadRequest naming `what` (by default `name`)."""
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{what or name} must be a non-empty string")
    if _too_long(value, _LIMITS[name]):
        raise BadRequest(f"{what or name} is longer than {_LIMITS[name]} bytes (in UTF-8)")
    if value.isascii() and value.isprintable():  # the usual case, in C: no control character
        if name == "subject" or " " not in value:
            return value
        raise BadRequest(f"{what or name} must not contain whitespace or control characters")
    if name == "subject":
        if _CONTROL.search(value):
            raise BadRequest(f"{what or name} must not contain control characters")
    elif _NO_SPACE.fullmatch(value) is None:
        raise BadRequest(f"{what or name} must not contain whitespace or control characters")
    return value


def _build(attributes: dict[str, Any], data: Any) -> EventInput:
    event_id = _text(attributes, "id", required=False)
    source = _text(attributes, "source", required=True)
    event_type = _text(attributes, "type", required=True)
    subject = _text(attributes, "subject", required=False)
    raw_time = attributes.pop("time", None)
    time = None if raw_time is None else timestamps.parse_stored(raw_time, "time")
    if "group" not in attributes:
        raise BadRequest("group is required")
    group = parse_group(attributes.pop("group"))
    audience = attributes.pop("audience", DEFAULT_AUDIENCE)
    if not isinstance(audience, str) or _AUDIENCE.fullmatch(audience) is None:
        raise BadRequest(f"audience must be a short lowercase name, got {audience!r}")
    allowed_roles, roles = _list_attribute(attributes, "allowedroles", _role)
    allowed_groups, visible_to = _list_attribute(attributes, "allowedgroups", _group_of(group))
    extensions = _extensions(attributes)
    extensions.update(allowed_roles)
    extensions.update(allowed_groups)
    eventkey = extensions.get("eventkey")
    if eventkey is not None and (
        not isinstance(eventkey, str) or not eventkey or len(eventkey) > 256
    ):
        raise BadRequest("eventkey must be a string of 1 to 256 characters")
    if eventkey is not None and "\x00" in eventkey:
        raise BadRequest(f"eventkey {NUL_FAULT}")
    _check_data(data)
    try:
        data_json = dumps(data)
    except orjson.JSONEncodeError as exc:  # JSON parsers take deeper values than it writes
        raise too_deep("data") from exc
    # The canonical JSON of [id, source, type, subject, time, group, audience, extensions, data],
    # with the data's text spliced in rather than encoded twice.
    head = dumps([event_id, source, event_type, subject, raw_time, group, audience, extensions])
    fingerprint = hashlib.sha256(f"{head[:-1]},{data_json}]".encode()).hexdigest()
    assert source is not None
    assert event_type is not None
    return EventInput(
        id=event_id,
        source=source,
        type=event_type,
        subject=subject,
        time=time,
        group=group,
        audience=audience,
        extensions=extensions,
        data=data,
        data_json=data_json,
        fingerprint=fingerprint,
        roles_mask=roles_mask(roles),
        allowed_groups=tuple(visible_to),
        eventkey=eventkey,
    )


def _role(value: str) -> str:
    if value not in ROLES:
        raise BadRequest(f"allowedroles: unknown role {value!r}; roles are {list(ROLES)}")
    return value


def _group_of(event_group: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        path = parse_group(value, "allowedgroups")
        if root_of(path) != root_of(event_group):
            raise BadRequest(f"allowedgroups: {value!r} is not in the event's tenant")
        return path

    return check


def _list_attribute(
    attributes: dict[str, Any], name: str, check: Callable[[str], str]
) -> tuple[dict[str, str], list[str]]:
    """A list-valued extension: a JSON array, or a comma-separated string as CloudEvents allows.

    Answers the attribute as it is stored and rendered (comma-separated) and the checked items.
    """
    value = attributes.pop(name, None)
    if value is None:
        return {}, []
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
        raise BadRequest(f"{name} must be a comma-separated string or an array of strings")
    checked = sorted({check(item.strip()) for item in items})
    return {name: ",".join(checked)}, checked


def _extensions(attributes: dict[str, Any]) -> dict[str, Any]:
    extensions: dict[str, Any] = {}
    for name, value in attributes.items():
        if name in RESERVED:
            raise BadRequest(f"{name} is set by tidings and may not be sent")
        if _EXTENSION_NAME.fullmatch(name) is None:
            raise BadRequest(
                f"attribute name {name!r} is invalid: CloudEvents attribute names are 1 to 20 "
                "lowercase letters or digits"
            )
        if name == "dataschema":
            if not isinstance(value, str) or not value:
                raise BadRequest("dataschema must be a non-empty URI")
        elif isinstance(value, bool) or not isinstance(value, str | int):
            raise BadRequest(f"extension attribute {name} must be a string or an integer")
        elif isinstance(value, int) and not -(2**31) <= value < 2**31:
            raise BadRequest(f"extension attribute {name} is outside the 32-bit integer range")
        extensions[name] = value
    return extensions


def actor_subject_fault(subject: str) -> str | None:
    """What is wrong with a non-empty `subject` as an actor's (as a phrase), if anything."""
    if "\x00" in subject:
        return NUL_FAULT
    if _too_long(subject, _ACTOR_LIMIT):
        return f"is longer than {_ACTOR_LIMIT} bytes (in UTF-8)"
    return None


def _check_data(data: Any) -> None:
    if not isinstance(data, dict):
        raise BadRequest("data must be a JSON object with 'actor' and 'body'")
    unknown = [] if data.keys() <= _DATA_KEYS else sorted(set(data) - _DATA_KEYS)
    if unknown:
        raise BadRequest(
            f"data has unknown keys {unknown}; it holds only 'actor', 'body' and 'previous'"
        )
    actor = data.get("actor")
    if not isinstance(actor, dict):
        raise BadRequest("data.actor is required: an object with a 'subject'")
    unknown = [] if actor.keys() <= _ACTOR_KEYS else sorted(set(actor) - _ACTOR_KEYS)
    if unknown:
        raise BadRequest(
            f"data.actor has unknown keys {unknown}; it holds 'subject', 'email', 'ip'"
        )
    if not isinstance(actor.get("subject"), str) or not actor["subject"]:
        raise BadRequest("data.actor.subject is required: a non-empty string")
    fault = actor_subject_fault(actor["subject"])
    if fault is not None:
        raise BadRequest(f"data.actor.subject {fault}")
    if "email" in actor and not isinstance(actor["email"], str):
        raise BadRequest("data.actor.email must be a string")
    if "ip" in actor:
        if not isinstance(actor["ip"], str):  # ip_address() would take an integer
            raise BadRequest(f"data.actor.ip must be an IP address string, got {actor['ip']!r}")
        try:
            ipaddress.ip_address(actor["ip"])
        except (TypeError, ValueError) as exc:
            raise BadRequest(f"data.actor.ip must be an IP address, got {actor['ip']!r}") from exc
    if not isinstance(data.get("body"), dict):
        raise BadRequest("data.body is required: a JSON object")
    if "previous" in data and not isinstance(data["previous"], dict):
        raise BadRequest("data.previous must be a JSON object")


def render_attributes(
    event: EventInput,
    event_id: str,
    time: timestamps.Timestamp,
    stored_ns: int,
    extras: str | None = None,
) -> str:
    """The CloudEvents JSON of a new event's attributes (all but `data`); `extras` is its
    `attribute_extras`, if the caller has them already."""
    return compose_attributes(
        event_id=event_id,
        source=event.source,
        type_=event.type,
        subject=event.subject,
        time=time,
        group=event.group,
        extras=attribute_extras(event) if extras is None else extras,
        stored_ns=stored_ns,
    )


def attribute_extras(event: EventInput) -> str:
    """The JSON object of the attributes that have no column of their own: the audience, then
    the extensions in name order (never empty: every event has an audience)."""
    return orjson.dumps(
        {"audience": event.audience, **dict(sorted(event.extensions.items()))}
    ).decode()


def compose_attributes(
    *,
    event_id: str,
    source: str,
    type_: str,
    subject: str | None,
    time: timestamps.Timestamp,
    group: str,
    extras: str,
    stored_ns: int,
) -> str:
    """The CloudEvents JSON of an event's attributes, from its parts as storage keeps them:
    `extras` is `attribute_extras` of the event."""
    attributes: dict[str, Any] = {
        "specversion": SPECVERSION,
        "id": event_id,
        "source": source,
        "type": type_,
    }
    if subject is not None:
        attributes["subject"] = subject
    attributes["time"] = time.render()
    attributes["datacontenttype"] = JSON
    attributes["group"] = group
    head = orjson.dumps(attributes).decode()
    stored = timestamps.render_ns(stored_ns)
    return f'{head[:-1]},{extras[1:-1]},"{STORED_TIME}":"{stored}"}}'


def stored_ns(event: StoredEvent) -> int:
    """When `event` was stored, to the microsecond its `storedtime` shows."""
    stored: str = orjson.loads(event.attributes)[STORED_TIME]
    return timestamps.parse(stored, STORED_TIME).ns


def render_page(
    events: list[StoredEvent],
    has_more: bool,
    next_cursor: str | None,
    total_count: int | None = None,
) -> bytes:
    """The JSON of a list page, built from the stored texts without parsing them."""
    head = '{"events":[' + ",".join(event.to_json() for event in events) + "]"
    tail = f',"has_more":{"true" if has_more else "false"},"next_cursor":{orjson.dumps(next_cursor).decode()}'
    if total_count is not None:
        tail += f',"total_count":{total_count}'
    return (head + tail + "}").encode()
