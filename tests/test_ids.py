"""UUIDv7 event ids: valid RFC 9562 values, ascending, and carrying the time they were minted."""

from __future__ import annotations

import threading
import time
import uuid

from tidings.ids import MINTED_AHEAD_MS, minted_ms, uuid7, uuid7s


def embedded_ms(value: str) -> int:
    return uuid.UUID(value).int >> 80


def test_ids_are_rfc_9562_version_7() -> None:
    for value in [uuid7(), *uuid7s(50)]:
        parsed = uuid.UUID(value)
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == value


def test_ids_ascend_in_the_order_they_are_minted() -> None:
    minted = [uuid7() for _ in range(2_000)] + uuid7s(5_000) + [uuid7()]
    assert minted == sorted(minted)
    assert len(set(minted)) == len(minted)


def test_many_ids_at_once_keep_the_time_they_were_minted() -> None:
    """A burst of ids does not push their time ahead of the clock (one step per id would
    put 20,000 ids 20 seconds ahead)."""
    before_ms = time.time_ns() // 1_000_000
    minted = uuid7s(20_000)
    after_ms = time.time_ns() // 1_000_000
    assert before_ms <= embedded_ms(minted[0])
    assert embedded_ms(minted[-1]) <= after_ms + 5


def test_the_random_part_differs_between_ids() -> None:
    low_bits = {uuid.UUID(value).int & ((1 << 62) - 1) for value in uuid7s(1_000)}
    assert len(low_bits) == 1_000


def test_ids_minted_on_two_threads_at_once_never_share_a_clock_value() -> None:
    """The commit thread of SQLite and the event loop mint ids at the same time."""
    minted: list[list[str]] = [[], []]

    def mint(into: list[str]) -> None:
        for _ in range(200):
            into.extend(uuid7s(50))

    threads = [threading.Thread(target=mint, args=(into,)) for into in minted]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    clocks = [uuid.UUID(value).int >> 64 & ~(0xF << 12) for value in minted[0] + minted[1]]
    assert len(set(clocks)) == 20_000
    for own in minted:
        assert own == sorted(own)


def test_ids_minted_at_a_stored_time_name_its_millisecond_and_ascend() -> None:
    at = 1_700_000_000_123_456_789
    minted = uuid7s(500, at)
    assert minted == sorted(minted)
    assert {embedded_ms(value) for value in minted} == {at // 1_000_000}
    assert {minted_ms(value) for value in minted} == {at // 1_000_000}
    assert all(uuid.UUID(value).version == 7 for value in minted)


def test_a_stored_time_just_before_the_last_one_mints_after_it_and_a_much_earlier_one_anew() -> (
    None
):
    """Requests read their stored time before they mint, so the times come a little out of
    order: ids still ascend, named at most MINTED_AHEAD_MS ahead; a time seconds back (a test's
    clock) names itself."""
    at = 1_700_000_100_000_000_000
    [last] = uuid7s(1, at)
    [behind] = uuid7s(1, at - 300_000_000)
    assert behind > last
    assert 0 < embedded_ms(behind) - (at - 300_000_000) // 1_000_000 <= MINTED_AHEAD_MS
    [far_behind] = uuid7s(1, at - 60_000_000_000)
    assert embedded_ms(far_behind) == (at - 60_000_000_000) // 1_000_000


def test_only_ids_in_the_form_tidings_mints_name_a_millisecond() -> None:
    [value] = uuid7s(1)
    assert minted_ms(value) == embedded_ms(value)
    assert minted_ms(value.upper()) is None
    assert minted_ms(str(uuid.uuid4())) is None
    assert minted_ms("order-42") is None
