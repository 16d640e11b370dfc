"""RFC 3339 timestamps kept to the nanosecond.

Python's datetime stops at microseconds, and the seeds show nanoseconds, so a
time is kept as an integer count of nanoseconds since the epoch plus the number
of fractional digits it was given with; rendering gives back the same precision.
"""

from __future__ import annotations

import calendar
import functools
import re
import time
from dataclasses import dataclass

from tidings.errors import BadRequest

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})",
    re.ASCII,
)
NS = 1_000_000_000
DAY_SECONDS = 86_400
_TWO_DIGITS = [f"{number:02d}" for number in range(60)]
_MIN_SECONDS = calendar.timegm((1, 1, 1, 0, 0, 0, 0, 0, 0))
_MAX_SECONDS = calendar.timegm((9999, 12, 31, 23, 59, 59, 0, 0, 0))


@dataclass(frozen=True, slots=True)
class Timestamp:
    """An instant in nanoseconds since the epoch, and the digits it is shown with."""

    ns: int
    digits: int = 9

    def render(self) -> str:
        """RFC 3339 in UTC, with as many fractional digits as given."""
        return _render(self.ns, self.digits)


# The events of a batch share their stored time (and their time, when they give none).
@functools.lru_cache(maxsize=256)
def _render(ns: int, digits: int) -> str:
    seconds, nanos = divmod(ns, NS)
    days, second = divmod(seconds, DAY_SECONDS)
    minutes, second = divmod(second, 60)
    hour, minute = divmod(minutes, 60)
    text = (
        _date(days)
        + "T"
        + _TWO_DIGITS[hour]
        + ":"
        + _TWO_DIGITS[minute]
        + ":"
        + _TWO_DIGITS[second]
    )
    if digits:
        text += "." + str(nanos).zfill(9)[:digits]
    return text + "Z"


# A page of events spans a few days: their dates are rendered once each, and the time of day
# is put together from two-digit texts (time.gmtime and strftime, or format specifications,
# for each event took most of a list page's rendering).
@functools.lru_cache(maxsize=1024)
def _date(days: int) -> str:
    """The UTC date `days` after the epoch, its year in four digits (%Y does not pad years below
    1000 on every platform; RFC 3339 needs four)."""
    utc = time.gmtime(days * DAY_SECONDS)
    return f"{utc.tm_year:04d}-{utc.tm_mon:02d}-{utc.tm_mday:02d}"


def parse(text: object, what: str = "time") -> Timestamp:
    """Parse an RFC 3339 date-time, or raise BadRequest naming `what`."""
    match = _RFC3339.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise BadRequest(f"{what} must be an RFC 3339 date-time, got {text!r}")
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    fraction, offset = match.group(7) or "", match.group(8)
    if not (year >= 1 and 1 <= month <= 12 and 1 <= day <= _days_in(year, month)) or (
        hour > 23 or minute > 59 or second > 59
    ):
        raise BadRequest(f"{what} is not a valid date-time: {text!r}")
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if offset not in ("Z", "z"):
        sign = 1 if offset[0] == "+" else -1
        off_hours, off_minutes = int(offset[1:3]), int(offset[4:6])
        if off_hours > 23 or off_minutes > 59:
            raise BadRequest(f"{what} has an invalid UTC offset: {text!r}")
        seconds -= sign * (off_hours * 3600 + off_minutes * 60)
        if not _MIN_SECONDS <= seconds <= _MAX_SECONDS:
            raise BadRequest(f"{what} lies outside the years 0001 to 9999 in UTC: {text!r}")
    nanos = int(fraction.ljust(9, "0")) if fraction else 0
    return Timestamp(seconds * NS + nanos, len(fraction))


# What a bigint of nanoseconds holds: every stored time lies within.
EARLIEST_NS, LATEST_NS = -(2**63), 2**63 - 1


def parse_stored(text: object, what: str) -> Timestamp:
    """Parse an instant to be stored, or raise BadRequest naming `what` if it is not one or
    lies outside what 64 bits of nanoseconds hold."""
    parsed = parse(text, what)
    if not EARLIEST_NS <= parsed.ns <= LATEST_NS:
        raise BadRequest(
            f"{what} is outside the range tidings stores (the years 1678 to 2261): {text!r}"
        )
    return parsed


def parse_bound(text: object, what: str) -> int:
    """Parse a bound on stored times, in ns: clamped to 64 bits (years 1 and 9999 lie beyond
    every stored time, and bound as those do)."""
    return max(EARLIEST_NS, min(LATEST_NS, parse(text, what).ns))


def _days_in(year: int, month: int) -> int:
    return calendar.monthrange(year, month)[1]


def from_ns(ns: int, digits: int = 6) -> Timestamp:
    """A timestamp from nanoseconds since the epoch."""
    return Timestamp(ns, digits)


def render_ns(ns: int, digits: int = 6) -> str:
    """`from_ns(ns, digits).render()`, without making the Timestamp (once an event on pages)."""
    return _render(ns, digits)
