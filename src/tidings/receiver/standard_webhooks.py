"""Standard Webhooks signatures (https://www.standardwebhooks.com), verified with the stdlib.

A tidings subscription created with a `signing_secret` adds three headers to every
delivery: `webhook-id` (the message id), `webhook-timestamp` (Unix seconds) and
`webhook-signature` (`v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`, several
space-separated during a secret's rotation). Unlike the OIDC token, this signature
covers the body: a receiver that checks both knows the event is the one tidings sent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence

from .errors import BadWebhookSignature

__all__ = ["DEFAULT_TOLERANCE_S", "secret_key", "sign", "verify_signature"]

DEFAULT_TOLERANCE_S = 300
PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret."""
    try:
        key = base64.b64decode(secret.removeprefix(PREFIX), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a Standard Webhooks secret is 'whsec_' and base64") from exc
    if not 24 <= len(key) <= 64:  # as the spec says, and as tidings takes them
        raise ValueError("a Standard Webhooks secret is 'whsec_' and base64 of 24 to 64 bytes")
    return key


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `v1,<base64>` signature of a message."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def _one(headers: Mapping[str, list[str]], name: str) -> str:
    values = headers.get(name) or []
    if len(values) != 1 or not values[0].strip():
        raise BadWebhookSignature(f"exactly one {name} header is required")
    return values[0].strip()


def verify_signature(
    secrets: Sequence[str],
    headers: Mapping[str, list[str]],
    body: bytes,
    now_s: float,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> str:
    """Check the Standard Webhooks headers (lowercased names) against any of `secrets`.

    Returns the message id; raises BadWebhookSignature when a header is missing, the
    timestamp is more than `tolerance_s` away from `now_s`, or no signature matches.
    """
    message_id = _one(headers, "webhook-id")
    raw_timestamp = _one(headers, "webhook-timestamp")
    if not (raw_timestamp.isascii() and raw_timestamp.isdigit() and len(raw_timestamp) <= 12):
        raise BadWebhookSignature(f"webhook-timestamp is not Unix seconds: {raw_timestamp!r}")
    timestamp = int(raw_timestamp)
    if abs(now_s - timestamp) > tolerance_s:
        raise BadWebhookSignature(
            f"webhook-timestamp {timestamp} is more than {tolerance_s:.0f} s from now"
        )
    offered = [
        part.removeprefix("v1,")
        for part in _one(headers, "webhook-signature").split()
        if part.startswith("v1,")
    ]
    signed = f"{message_id}.{timestamp}.".encode() + body
    for secret in secrets:
        expected = base64.b64encode(
            hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
        ).decode()
        if any(hmac.compare_digest(expected, candidate) for candidate in offered):
            return message_id
    raise BadWebhookSignature("no webhook-signature matches the body with the signing secret")
