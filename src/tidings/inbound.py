"""Inbound webhooks: how each mapping turns an external system's payload into events.

`cloudevents`: the payload is a CloudEvent. `generic`: JSON pointers say where
the type, subject, actor, time and id are; the payload becomes the body.
`alertmanager` (Prometheus Alertmanager's webhook) and `grafana` (Grafana
alerting's webhook): one event per alert, firing or resolved, with its
severity, resource and event key (the alert's fingerprint). Each event keeps
the raw payload it came from.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

from tidings import groups, wire
from tidings.errors import BadRequest, Unprocessable
from tidings.model import EventInput, Webhook

MAPPINGS = ("cloudevents", "generic", "alertmanager", "grafana")
_GENERIC_FIELDS = ("type", "subject", "actor", "time", "id")


def check_mapping(mapping: Any) -> dict[str, Any]:
    """A valid mapping: `{"kind": ...}` plus, for generic, JSON pointers or a default type."""
    if isinstance(mapping, str):
        mapping = {"kind": mapping}
    if not isinstance(mapping, dict) or mapping.get("kind") not in MAPPINGS:
        raise BadRequest(f"mapping must be one of {list(MAPPINGS)} or an object with such a 'kind'")
    if mapping["kind"] == "generic":
        unknown = set(mapping) - {"kind", "default_type", *_GENERIC_FIELDS}
        if unknown:
            raise BadRequest(f"generic mapping has unknown keys {sorted(unknown)}")
        for name in _GENERIC_FIELDS:
            pointer = mapping.get(name)
            if pointer is not None and (
                not isinstance(pointer, str) or not pointer.startswith("/")
            ):
                raise BadRequest(f"mapping.{name} must be a JSON pointer such as '/event/type'")
        if "type" not in mapping and "default_type" not in mapping:
            raise BadRequest("a generic mapping needs 'type' (a JSON pointer) or 'default_type'")
        if "default_type" in mapping:  # checked now, not at each post it would fail
            wire.check_attribute("type", mapping["default_type"], "mapping.default_type")
    elif set(mapping) != {"kind"}:
        raise BadRequest(f"the {mapping['kind']} mapping takes no options")
    return dict(mapping)


def resolve_pointer(document: Any, pointer: str) -> Any:
    """The value at a JSON pointer (RFC 6901), or None when there is none."""
    current = document
    for raw in pointer.split("/")[1:]:
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(current, dict):
            current = current.get(token)
        elif isinstance(current, list) and token.isdigit() and int(token) < len(current):
            current = current[int(token)]
        else:
            return None
    return current


def _source(webhook: Webhook) -> str:
    return f"/v1/webhooks/{webhook.id}"


def _digest(value: Any) -> str:
    return hashlib.sha256(wire.dumps(value).encode()).hexdigest()[:32]


def _event(webhook: Webhook, raw: str, attributes: dict[str, Any]) -> EventInput:
    return replace(
        wire.parse_event({"source": _source(webhook), "group": webhook.group, **attributes}),
        raw=raw,
    )


def _cloudevent(webhook: Webhook, payload: Any, raw: str) -> list[EventInput]:
    if not isinstance(payload, dict):
        raise BadRequest("a cloudevents webhook takes one CloudEvent as a JSON object")
    payload = dict(payload)
    group = payload.setdefault("group", webhook.group)
    if not isinstance(group, str) or not groups.contains(webhook.group, group):
        raise Unprocessable(
            f"the event's group {group!r} is outside the webhook's group {webhook.group!r}"
        )
    event = wire.parse_event(payload)
    outside = [g for g in event.allowed_groups if not groups.contains(webhook.group, g)]
    if outside:
        raise Unprocessable(
            f"allowedgroups {outside} lie outside the webhook's group {webhook.group!r}"
        )
    return [replace(event, raw=raw)]


def _text(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)
    raise Unprocessable(f"the payload's {what} must be a string, got {type(value).__name__}")


def _generic(webhook: Webhook, payload: Any, raw: str) -> list[EventInput]:
    mapping = webhook.mapping
    found = {
        name: resolve_pointer(payload, mapping[name]) for name in _GENERIC_FIELDS if name in mapping
    }
    event_type = _text(found.get("type"), "type") or mapping.get("default_type")
    if not event_type:
        raise Unprocessable(
            f"the payload has no type at {mapping.get('type')!r} and the mapping no default_type"
        )
    actor = _text(found.get("actor"), "actor") or f"webhook:{webhook.id}"
    body = payload if isinstance(payload, dict) else {"payload": payload}
    attributes: dict[str, Any] = {
        "type": event_type,
        "id": _text(found.get("id"), "id") or _digest(payload),
        "data": {"actor": {"subject": actor}, "body": body},
    }
    for name in ("subject", "time"):
        value = _text(found.get(name), name)
        if value is not None:
            attributes[name] = value
    return [_event(webhook, raw, attributes)]


def _alerts(webhook: Webhook, payload: Any, raw: str, system: str) -> list[EventInput]:
    if (
        not isinstance(payload, dict)
        or not isinstance(payload.get("alerts"), list)
        or not payload["alerts"]
    ):
        raise BadRequest(
            f"{system}'s webhook payload must be an object with a non-empty 'alerts' list"
        )
    receiver = payload.get("receiver") or system
    shared = {
        k: payload[k]
        for k in ("receiver", "groupKey", "externalURL", "groupLabels")
        if k in payload
    }
    events = []
    for index, alert in enumerate(payload["alerts"]):
        if not isinstance(alert, dict) or alert.get("status") not in ("firing", "resolved"):
            raise BadRequest(
                f"alerts[{index}] must be an object whose status is 'firing' or 'resolved'"
            )
        labels: dict[str, Any] = alert["labels"] if isinstance(alert.get("labels"), dict) else {}
        annotations: dict[str, Any] = (
            alert["annotations"] if isinstance(alert.get("annotations"), dict) else {}
        )
        status = alert["status"]
        when = alert.get("endsAt") if status == "resolved" else alert.get("startsAt")
        body = {**shared, **alert, "labels": labels, "annotations": annotations}
        attributes: dict[str, Any] = {
            "type": f"dev.tidings.{system}.alert.{status}.v1",
            # The whole body names the event: a notification sent again is one event, and the same
            # alert regrouped (another route, another groupKey) is another, never a conflict.
            "id": _digest([system, body]),
            "subject": str(labels.get("alertname") or "alert"),
            "data": {
                "actor": {"subject": f"{system}:{receiver}"},
                "body": body,
            },
        }
        if isinstance(when, str) and not when.startswith("0001-"):
            attributes["time"] = when
        if labels.get("severity"):
            attributes["severity"] = str(labels["severity"])[:64]
        resource = labels.get("instance") or labels.get("job") or labels.get("grafana_folder")
        if resource:
            attributes["resource"] = str(resource)[:256]
        key = alert.get("fingerprint") or _digest(sorted(labels.items()))
        attributes["eventkey"] = str(key)[:256]
        summary = annotations.get("summary") or annotations.get("description")
        if summary:
            attributes["description"] = str(summary)[:1000]
        events.append(_event(webhook, raw, attributes))
    return events


def events_from(webhook: Webhook, payload: Any, raw: str) -> list[EventInput]:
    """The events a payload makes under the webhook's mapping."""
    kind = webhook.mapping["kind"]
    if kind == "cloudevents":
        return _cloudevent(webhook, payload, raw)
    if kind == "generic":
        return _generic(webhook, payload, raw)
    return _alerts(webhook, payload, raw, kind)
