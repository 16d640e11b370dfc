"""What a delivery sends: a binary-mode CloudEvent for a webhook, a readable message for Slack.

A webhook request is exactly the one the Chainguard documents show: `Ce-*`
headers for the attributes, `Authorization: Bearer <JWT>`, and the event's data
as compact JSON with sorted keys as the body.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from typing import Any

import orjson

from tidings import __version__
from tidings.model import StoredEvent, Subscription

USER_AGENT = f"tidings/{__version__}"
# Attributes that are not sent as Ce-* headers: the data's type is Content-Type,
# and storedtime belongs to tidings' own audit log.
_NOT_HEADERS = frozenset({"datacontenttype", "storedtime"})
_SAFE = frozenset(range(0x21, 0x7F)) - {0x22, 0x25}


_PLAIN = re.compile(r"[!#$&-~]*")  # printable ASCII but space, '"' and '%': sent as it is


def header_value(value: object) -> str:
    """An attribute as a header value, percent-encoded as the CloudEvents HTTP binding says."""
    text = value if isinstance(value, str) else str(value)
    if _PLAIN.fullmatch(text):
        return text
    return "".join(chr(byte) if byte in _SAFE else f"%{byte:02X}" for byte in text.encode())


def ce_headers(event: StoredEvent) -> dict[str, str]:
    """The `Ce-*` headers of an event, in the seeds' order."""
    attributes: dict[str, Any] = orjson.loads(event.attributes)
    return {
        f"Ce-{name.capitalize()}": header_value(value)
        for name, value in sorted(attributes.items())
        if name not in _NOT_HEADERS
    }


def webhook_request(
    event: StoredEvent, token: str, message_id: str, signing_secret: str | None, now_s: int
) -> tuple[dict[str, str], bytes]:
    """Headers and body of a webhook delivery."""
    body = event.data.encode()
    headers = {
        "Accept-Encoding": "gzip",
        "Authorization": f"Bearer {token}",
        **ce_headers(event),
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
    }
    if signing_secret:
        headers.update(standard_webhooks_headers(signing_secret, message_id, now_s, body))
    return headers, body


def standard_webhooks_headers(
    secret: str, message_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """`webhook-id`, `webhook-timestamp` and `webhook-signature` per the Standard Webhooks spec."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{message_id}.{timestamp}.".encode() + body
    signature = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": f"v1,{signature}",
    }


def _fields(body: dict[str, Any], limit: int = 8) -> list[tuple[str, str]]:
    """The body's main fields: its scalar values, first level, at most `limit`."""
    fields = []
    for key, value in sorted(body.items()):
        if isinstance(value, str | int | float | bool) and value != "":
            text = str(value)
            fields.append((key, text if len(text) <= 200 else text[:197] + "..."))
        if len(fields) == limit:
            break
    return fields


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int = 300) -> str:
    """`text` cut to `limit` characters.

    Escaping makes a character at most 5, so a name cut to 50 and a value cut to 300 stay
    within Slack's 2000 characters a field, and a cut source within 3000 a context element.
    """
    return text if len(text) <= limit else text[: limit - 1] + "…"


def slack_message(event: StoredEvent, sub: Subscription) -> dict[str, Any]:
    """A Slack incoming-webhook message: type, subject, actor, group, time and the body's main fields."""
    attributes: dict[str, Any] = orjson.loads(event.attributes)
    data: dict[str, Any] = orjson.loads(event.data)
    actor = data.get("actor", {}).get("subject", "unknown")
    subject = attributes.get("subject", "")
    summary = f"{event.type} by {_clip(actor)}" + (f" on {_clip(subject)}" if subject else "")
    facts = [
        ("Type", event.type),
        ("Subject", subject or "-"),
        ("Actor", actor),
        ("Group", event.group),
        ("Time", attributes["time"]),
    ]
    facts += _fields(data.get("body", {}), limit=10 - len(facts))
    message: dict[str, Any] = {
        "text": _escape(summary),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": event.type[:150]}},
            {
                "type": "section",
                "fields": [
                    {
                        "type": "mrkdwn",
                        "text": f"*{_escape(_clip(name, 50))}*\n{_escape(_clip(value))}",
                    }
                    for name, value in facts[:10]
                ],
            },
            {
                "type": "context",
                "elements": [
                    {"type": "mrkdwn", "text": _escape(f"{_clip(event.source)} · {event.id}")}
                ],
            },
        ],
    }
    if sub.slack_username:
        message["username"] = sub.slack_username
    if sub.slack_icon:
        icon = sub.slack_icon
        message["icon_emoji" if icon.startswith(":") and icon.endswith(":") else "icon_url"] = icon
    return message


def slack_request(event: StoredEvent, sub: Subscription) -> tuple[dict[str, str], bytes]:
    """Headers and body of a Slack delivery."""
    return {"Content-Type": "application/json", "User-Agent": USER_AGENT}, orjson.dumps(
        slack_message(event, sub)
    )
