"""Opaque, tamper-evident cursors: a position signed with a key kept in the database.

A cursor of events also carries the stored time of the event it stands after (format 2): the
PostgreSQL backend opens a page's window of days there instead of looking the event up in
every partition. It is a hint, never trusted: the page's probe decides what the page holds.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

from tidings.errors import BadRequest

_POSITION_ONLY = 1
_WITH_STORED_TIME = 2
_POSITION_BYTES = 16  # PostgreSQL positions are (tx, seq) pairs packed in 128 bits
_STORED_BYTES = 8
# The signature's length per format: 1 + 16 + 13 = 30 bytes (40 base64 characters) and
# 1 + 16 + 8 + 14 = 39 bytes (52), so that no character has spare bits to alter unseen.
_MAC_BYTES = {_POSITION_ONLY: 13, _WITH_STORED_TIME: 14}
_PAYLOAD_BYTES = {
    _POSITION_ONLY: 1 + _POSITION_BYTES,
    _WITH_STORED_TIME: 1 + _POSITION_BYTES + _STORED_BYTES,
}


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page starts: after `position`, whose event was stored at `stored_ns` if known."""

    position: int
    stored_ns: int | None = None


class CursorCodec:
    """Encodes positions as cursors and refuses cursors it did not make."""

    def __init__(self, key: bytes):
        self._key = key

    def for_listing(self, name: str) -> CursorCodec:
        """A codec whose cursors only it takes: each listing but the events' signs with a key
        of its own, derived from this one, so that a cursor of one listing is refused by
        another instead of being read as a position it never was."""
        return CursorCodec(
            hmac.new(self._key, f"cursor of {name}".encode(), hashlib.sha256).digest()
        )

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[: _MAC_BYTES[payload[0]]]

    def encode(self, position: int, stored_ns: int | None = None) -> str:
        """A cursor standing for `position` (and the stored time of its event, if given)."""
        if position < 0:
            raise ValueError("positions are never negative")
        form = _POSITION_ONLY if stored_ns is None else _WITH_STORED_TIME
        payload = bytes([form]) + position.to_bytes(_POSITION_BYTES, "big")
        if stored_ns is not None:
            payload += stored_ns.to_bytes(_STORED_BYTES, "big", signed=True)
        return base64.urlsafe_b64encode(payload + self._mac(payload)).decode().rstrip("=")

    def decode(self, cursor: str) -> Cursor:
        """What a cursor stands for; BadRequest if it was not made here or was altered."""
        try:
            raw = base64.b64decode(cursor.encode(), altchars=b"-_", validate=True)
        except (ValueError, UnicodeEncodeError) as exc:
            raise BadRequest("cursor is not valid: pass next_cursor as it was given") from exc
        if not raw or raw[0] not in _PAYLOAD_BYTES:  # no format to check a signature by
            raise BadRequest(
                "cursor is not valid or from another version of tidings: pass next_cursor as it"
                " was given"
            )
        payload, mac = raw[: _PAYLOAD_BYTES[raw[0]]], raw[_PAYLOAD_BYTES[raw[0]] :]
        if len(mac) != _MAC_BYTES[raw[0]] or not hmac.compare_digest(mac, self._mac(payload)):
            raise BadRequest("cursor is not valid: pass next_cursor as it was given")
        position = int.from_bytes(payload[1 : 1 + _POSITION_BYTES], "big")
        if payload[0] == _POSITION_ONLY:
            return Cursor(position)
        return Cursor(position, int.from_bytes(payload[1 + _POSITION_BYTES :], "big", signed=True))
