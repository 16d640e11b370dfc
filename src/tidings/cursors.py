"""Opaque, tamper-evident cursors: a position signed with a key kept in the database."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct

from tidings.errors import BadRequest

_VERSION = 1
_FORMAT = ">BQ"  # version, position
_MAC_BYTES = 12


class CursorCodec:
    """Encodes positions as cursors and refuses cursors it did not make."""

    def __init__(self, key: bytes):
        self._key = key

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:_MAC_BYTES]

    def encode(self, position: int) -> str:
        """A cursor standing for `position`."""
        payload = struct.pack(_FORMAT, _VERSION, position)
        return base64.urlsafe_b64encode(payload + self._mac(payload)).decode().rstrip("=")

    def decode(self, cursor: str) -> int:
        """The position a cursor stands for; BadRequest if it was not made here or was altered."""
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except ValueError as exc:
            raise BadRequest("cursor is not valid: pass next_cursor as it was given") from exc
        size = struct.calcsize(_FORMAT)
        payload, mac = raw[:size], raw[size:]
        if len(raw) != size + _MAC_BYTES or not hmac.compare_digest(mac, self._mac(payload)):
            raise BadRequest("cursor is not valid: pass next_cursor as it was given")
        version, position = struct.unpack(_FORMAT, payload)
        if version != _VERSION:
            raise BadRequest("cursor is from another version of tidings")
        return int(position)
