"""UUIDv7 event ids (RFC 9562) whose time is the time they were minted.

The 48-bit Unix milliseconds are followed, in the 12 bits of `rand_a`, by the fraction of
the millisecond (RFC 9562 section 6.2, method 3), so ids minted by one process sort in the
order they were minted. Two ids in the same 1/4096 ms take the next value of that 60-bit
clock: the embedded time runs ahead only past 4,096 ids a millisecond, and catches up as
soon as the rate drops. The 62 bits of `rand_b` come from the system's CSPRNG, read once
for a whole batch.
"""

from __future__ import annotations

import os
import threading
import time

_SUBMS = 4096  # steps of the millisecond in rand_a
_VERSION = 0x7 << 76
_VARIANT = 0b10 << 62
_RAND_B = (1 << 62) - 1


class _Clock:
    """Milliseconds << 12 | the fraction of the millisecond, never the same twice in a process
    (ids are minted on the event loop and on SQLite's commit thread)."""

    def __init__(self) -> None:
        self.last = 0
        self._lock = threading.Lock()

    def take(self, count: int) -> range:
        """The next `count` values, ascending: from now (or just past the last value taken)."""
        ms, rest = divmod(time.time_ns(), 1_000_000)
        with self._lock:
            first = max((ms << 12) | (rest * _SUBMS // 1_000_000), self.last + 1)
            self.last = first + count - 1
        return range(first, first + count)


_clock = _Clock()  # one per process


def _format(value: int) -> str:
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def uuid7s(count: int) -> list[str]:
    """`count` new UUIDv7 ids, ascending, in their canonical text form."""
    entropy = os.urandom(8 * count)
    ids = []
    for index, clock in enumerate(_clock.take(count)):
        random_bits = int.from_bytes(entropy[8 * index : 8 * index + 8]) & _RAND_B
        value = ((clock >> 12) << 80) | _VERSION | ((clock & 0xFFF) << 64) | _VARIANT | random_bits
        ids.append(_format(value))
    return ids


def uuid7() -> str:
    """A new UUIDv7 id in its canonical text form."""
    return uuid7s(1)[0]
