"""Cursors: opaque, round-trip their position, and refuse anything they did not make."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.cursors import Cursor, CursorCodec
from tidings.errors import BadRequest

KEY = b"k" * 32
CODEC = CursorCodec(KEY)
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@given(st.integers(min_value=0, max_value=2**128 - 1))
def test_decode_gives_back_the_encoded_position(position: int) -> None:
    """Every position survives encoding and decoding."""
    assert CODEC.decode(CODEC.encode(position)) == Cursor(position)


@given(
    st.integers(min_value=0, max_value=2**128 - 1),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
def test_an_events_cursor_gives_back_its_position_and_stored_time(
    position: int, stored_ns: int
) -> None:
    cursor = CODEC.encode(position, stored_ns)
    assert CODEC.decode(cursor) == Cursor(position, stored_ns)
    assert len(cursor) == 52


def test_cursor_is_url_safe_and_opaque() -> None:
    """A cursor needs no escaping in a query string and does not show its position."""
    cursor = CODEC.encode(12345)
    assert set(cursor) <= set(ALPHABET)
    assert "12345" not in cursor
    assert CODEC.encode(12345) == cursor


@pytest.mark.parametrize("stored_ns", [None, 1_700_000_000_123_456_789])
def test_every_single_character_change_is_refused(stored_ns: int | None) -> None:
    """Replacing any one character of a cursor with any other makes it invalid (no character
    has spare bits to change unseen)."""
    cursor = CODEC.encode(41, stored_ns)
    for index, original in enumerate(cursor):
        for replacement in ALPHABET:
            if replacement == original:
                continue
            tampered = cursor[:index] + replacement + cursor[index + 1 :]
            with pytest.raises(BadRequest, match="cursor"):
                CODEC.decode(tampered)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda c: c[:-1],
        lambda c: c[1:],
        lambda c: c + "A",
        lambda c: c + c,
        lambda c: c[::-1],
        lambda c: "",
        lambda c: "not a cursor",
        lambda c: "é" + c,
    ],
)
def test_truncated_extended_or_foreign_text_is_refused(mangle: Callable[[str], str]) -> None:
    """Cutting, extending, reversing or replacing a cursor makes it invalid."""
    with pytest.raises(BadRequest, match="cursor"):
        CODEC.decode(mangle(CODEC.encode(41)))


def test_a_cursor_with_another_position_spliced_in_is_refused() -> None:
    """The position cannot be swapped while keeping another cursor's signature."""
    first, second = CODEC.encode(1), CODEC.encode(1_000_000)
    spliced = second[:22] + first[22:]  # the version and position, then the other signature
    assert spliced not in (first, second)
    with pytest.raises(BadRequest, match="cursor"):
        CODEC.decode(spliced)


def test_a_stored_time_cannot_be_added_to_or_dropped_from_a_cursor() -> None:
    """The formats' signatures differ in length and cover the whole payload."""
    plain, hinted = CODEC.encode(7), CODEC.encode(7, 123)
    for forged in (hinted[:40], plain + hinted[40:], "Ag" + plain[2:] + "AAAAAAAAAAAA"):
        with pytest.raises(BadRequest, match="cursor"):
            CODEC.decode(forged)


def test_a_cursor_from_another_key_is_refused() -> None:
    """A cursor made by a service with another key is not accepted."""
    with pytest.raises(BadRequest, match="cursor"):
        CODEC.decode(CursorCodec(b"other key").encode(41))


def test_a_forged_position_without_the_key_is_refused() -> None:
    """Rewriting the position bytes under a guessed key's signature fails."""
    payload = struct.pack(">BQ", 1, 999)
    forged_mac = hmac.new(b"guess", payload, hashlib.sha256).digest()[:12]
    forged = base64.urlsafe_b64encode(payload + forged_mac).decode().rstrip("=")
    with pytest.raises(BadRequest, match="cursor"):
        CODEC.decode(forged)


def test_a_cursor_of_another_version_is_refused() -> None:
    """A correctly signed cursor of an unknown format version is refused."""
    payload = bytes([3]) + (41).to_bytes(16, "big")
    mac = hmac.new(KEY, payload, hashlib.sha256).digest()[:13]
    cursor = base64.urlsafe_b64encode(payload + mac).decode().rstrip("=")
    with pytest.raises(BadRequest, match="version"):
        CODEC.decode(cursor)
