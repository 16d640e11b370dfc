"""Opaque, tamper-evident cursors: a position signed with a key kept in the database."""

from __future__ import annotations

import base64
import hashlib
import hmac

from tidings.errors import BadRequest

_VERSION = 1
_POSITION_BYTES = 16  # PostgreSQL positions are (tx, seq) pairs packed in 128 bits
_MAC_BYTES = 13  # 1 + 16 + 13 = 30 bytes: 40 base64 characters, none with spare bits


class CursorCodec:
    """Encodes positions as cursors and refuses cursors it did not make."""

    def __init__(self, key: bytes):
        self._key = key

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:_MAC_BYTES]

    def encode(self, position: int) -> str:
        """A cursor standing for `position`."""
        if position < 0:
            raise ValueError("positions are never negative")
        payload = bytes([_VERSION]) + position.to_bytes(_POSITION_BYTES, "big")
        return base64.urlsafe_b64encode(payload + self._mac(payload)).decode().rstrip("=")

    def decode(self, cursor: str) -> int:
        """The position a cursor stands for; BadRequest if it was not made here or was altered."""
        try:
            raw = base64.b64decode(cursor.encode(), altchars=b"-_", validate=True)
        except (ValueError, UnicodeEncodeError) as exc:
            raise BadRequest("cursor is not valid: pass next_cursor as it was given") from exc
        payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if len(payload) != 1 + _POSITION_BYTES or not hmac.compare_digest(mac, self._mac(payload)):
            raise BadRequest("cursor is not valid: pass next_cursor as it was given")
        if payload[0] != _VERSION:
            raise BadRequest("cursor is from another version of tidings")
        return int.from_bytes(payload[1:], "big")
