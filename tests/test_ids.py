"""UUIDv7 event ids: valid RFC 9562 values, ascending, and carrying the time they were minted."""

from __future__ import annotations

import threading
import time
import uuid

from tidings.ids import uuid7, uuid7s


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
