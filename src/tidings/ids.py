"""UUIDv7 event ids (RFC 9562) whose time is the time they were minted.

The 48-bit Unix milliseconds are followed, in the 12 bits of `rand_a`, by the fraction of
the millisecond (RFC 9562 section 6.2, method 3), so ids minted by one process sort in the
order they were minted. Two ids in the same 1/4096 ms take the next value of that 60-bit
clock: the embedded time runs ahead only past 4,096 ids a millisecond, and catches up as
soon as the rate drops. The 62 bits of `rand_b` come from the system's CSPRNG, read once
for a whole batch.

Ingest mints its events' ids at their stored time (`at_ns`), not at the wall clock's: an
id tidings minted names the millisecond its event was stored in, or one at most
MINTED_AHEAD_MS after it (see `minted_ms`).
"""

from __future__ import annotations

import os
import re
import threading
import time

_SUBMS = 4096  # steps of the millisecond in rand_a
_VERSION = 0x7 << 76
_VARIANT = 0b10 << 62
_RAND_B = (1 << 62) - 1


class _Clock:
    """Milliseconds << 12 | the fraction of the millisecond, never the same twice in a process
    (ids are minted on the event loop and on SQLite's commit thread) while the times asked for
    stay within `run_ahead` steps of the last value taken; a time further back starts anew."""

    def __init__(self, run_ahead: float) -> None:
        self.last = 0
        self.run_ahead = run_ahead
        self._lock = threading.Lock()

    def take(self, count: int, at_ns: int) -> range:
        """The next `count` values, ascending: from `at_ns` (or just past the last value taken)."""
        ms, rest = divmod(at_ns, 1_000_000)
        start = (ms << 12) | (rest * _SUBMS // 1_000_000)
        with self._lock:
            first = max(start, self.last + 1) if self.last - start < self.run_ahead else start
            self.last = first + count - 1
        return range(first, first + count)


# An id minted at a stored time names a millisecond at most this far after it: the stored
# times of requests minting at once come a little out of order, and their ids run ahead of
# them by up to a second (past that, the random bits alone keep ids apart), plus a batch's
# own steps (4,096 ids a millisecond).
MINTED_AHEAD_MS = 2000
_clock = _Clock(run_ahead=float("inf"))  # the wall clock's, one per process
_stored_clock = _Clock(run_ahead=1000 * _SUBMS)  # stored times'


def _format(value: int) -> str:
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def uuid7s(count: int, at_ns: int | None = None) -> list[str]:
    """`count` new UUIDv7 ids, ascending, in their canonical text form: minted now, or
    naming the time `at_ns`."""
    entropy = os.urandom(8 * count)
    ids = []
    clocks = (
        _clock.take(count, time.time_ns()) if at_ns is None else _stored_clock.take(count, at_ns)
    )
    for index, clock in enumerate(clocks):
        random_bits = int.from_bytes(entropy[8 * index : 8 * index + 8]) & _RAND_B
        value = ((clock >> 12) << 80) | _VERSION | ((clock & 0xFFF) << 64) | _VARIANT | random_bits
        ids.append(_format(value))
    return ids


def uuid7() -> str:
    """A new UUIDv7 id in its canonical text form."""
    return uuid7s(1)[0]


_UUID7 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def minted_ms(event_id: str) -> int | None:
    """The millisecond an id names if it has the form of the ids tidings mints, else None.

    An event whose id tidings minted at its stored time was stored in that millisecond or at
    most MINTED_AHEAD_MS before it."""
    if _UUID7.fullmatch(event_id) is None:
        return None
    return int(event_id[:8] + event_id[9:13], 16)
