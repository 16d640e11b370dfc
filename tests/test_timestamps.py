"""RFC 3339 timestamps: nanosecond precision kept, offsets folded into UTC, nonsense refused."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings import timestamps
from tidings.errors import BadRequest
from tidings.timestamps import NS, Timestamp

# 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999999Z, in nanoseconds.
MIN_NS = calendar.timegm((1, 1, 1, 0, 0, 0, 0, 0, 0)) * NS
MAX_NS = calendar.timegm((9999, 12, 31, 23, 59, 59, 0, 0, 0)) * NS + NS - 1


@pytest.mark.parametrize(
    "text",
    [
        "2023-01-31T22:36:41Z",
        "2023-01-31T22:36:41.4Z",
        "2023-01-31T22:36:41.42Z",
        "2023-01-31T22:36:41.426Z",
        "2023-01-31T22:36:41.4265Z",
        "2023-01-31T22:36:41.42658Z",
        "2023-01-31T22:36:41.421912Z",
        "2026-06-17T22:32:33.1232381Z",
        "2026-06-17T22:32:33.12323813Z",
        "2026-06-17T22:32:33.132325174Z",
        "2023-01-31T22:36:41.000Z",
    ],
)
def test_utc_time_renders_back_with_the_same_digits(text: str) -> None:
    """0 to 9 fractional digits are kept exactly, trailing zeros included."""
    assert timestamps.parse(text).render() == text


def test_nanoseconds_are_counted_exactly() -> None:
    """The fraction is read to the nanosecond, without float rounding."""
    parsed = timestamps.parse("2026-06-17T22:32:33.132325174Z")
    assert parsed == Timestamp(1781735553 * NS + 132325174, 9)


def test_fraction_of_ten_digits_is_refused() -> None:
    """At most nine fractional digits are accepted."""
    with pytest.raises(BadRequest, match="time"):
        timestamps.parse("2023-01-31T22:36:41.1234567891Z")


@pytest.mark.parametrize(
    ("text", "utc"),
    [
        ("2024-05-01T10:00:00.5+02:00", "2024-05-01T08:00:00.5Z"),
        ("2024-05-01T00:30:00-05:30", "2024-05-01T06:00:00Z"),
        ("2024-01-01T01:00:00+01:00", "2024-01-01T00:00:00Z"),
        ("2023-12-31T23:00:00.000000001-01:00", "2024-01-01T00:00:00.000000001Z"),
        ("2024-05-01T10:00:00+00:00", "2024-05-01T10:00:00Z"),
        ("2024-05-01T10:00:00-00:00", "2024-05-01T10:00:00Z"),
        ("2024-05-01t10:00:00z", "2024-05-01T10:00:00Z"),
    ],
)
def test_offsets_are_converted_to_utc(text: str, utc: str) -> None:
    """A time with an offset (or lowercase t/z) is the same instant rendered in UTC with Z."""
    assert timestamps.parse(text).render() == utc


def test_leap_day_is_accepted_only_in_leap_years() -> None:
    """February 29th exists in 2024 and 2000, not in 2023 or 1900."""
    assert timestamps.parse("2024-02-29T00:00:00Z").render() == "2024-02-29T00:00:00Z"
    assert timestamps.parse("2000-02-29T00:00:00Z").render() == "2000-02-29T00:00:00Z"
    for text in ("2023-02-29T00:00:00Z", "1900-02-29T00:00:00Z"):
        with pytest.raises(BadRequest):
            timestamps.parse(text)


@pytest.mark.parametrize(
    "text",
    [
        "2024-02-30T00:00:00Z",
        "2024-04-31T00:00:00Z",
        "2024-13-01T00:00:00Z",
        "2024-00-10T00:00:00Z",
        "2024-01-00T00:00:00Z",
        "2024-01-32T00:00:00Z",
        "2024-01-01T24:00:00Z",
        "2024-01-01T23:60:00Z",
        "2024-01-01T23:59:61Z",
        "2024-01-01T00:00:00+24:00",
        "2024-01-01T00:00:00+01:60",
        "0000-01-01T00:00:00Z",
    ],
)
def test_impossible_dates_and_times_are_refused(text: str) -> None:
    """Out-of-range months, days, hours, minutes, seconds, offsets and year zero are a BadRequest."""
    with pytest.raises(BadRequest, match="expires_at"):
        timestamps.parse(text, "expires_at")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "2024-01-01",
        "2024-01-01T00:00:00",
        "2024-01-01 00:00:00Z",
        "2024-01-01T00:00Z",
        "2024-1-01T00:00:00Z",
        "24-01-01T00:00:00Z",
        "2024-01-01T00:00:00.Z",
        "2024-01-01T00:00:00+0100",
        "2024-01-01T00:00:00+01",
        " 2024-01-01T00:00:00Z",
        "2024-01-01T00:00:00Z ",
        "2024-01-01T00:00:00Z\n",
        "\uff12\uff10\uff12\uff14-01-01T00:00:00Z",
        "2024-01-01T00:00:00.\u0661Z",
    ],
)
def test_malformed_text_is_refused_naming_the_field(text: str) -> None:
    """Anything that is not an RFC 3339 date-time (ASCII digits only) is a BadRequest naming the field."""
    with pytest.raises(BadRequest, match="since"):
        timestamps.parse(text, "since")


def test_non_strings_are_refused() -> None:
    """A number or null is not a time."""
    for value in (None, 1700000000, 1.5):
        with pytest.raises(BadRequest, match="time"):
            timestamps.parse(value)


def test_times_before_1970_and_early_years_render_in_full() -> None:
    """Negative instants and years below 1000 render as valid RFC 3339 with a 4-digit year."""
    for text in ("1969-12-31T23:59:59.5Z", "0999-06-01T12:00:00Z", "0001-01-01T00:00:00Z"):
        assert timestamps.parse(text).render() == text


def test_instants_outside_years_1_to_9999_are_refused() -> None:
    """An offset that moves the instant past year 9999 or before year 1 is refused."""
    for text in ("9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"):
        with pytest.raises(BadRequest, match="time"):
            timestamps.parse(text)


def test_from_ns_defaults_to_microseconds() -> None:
    """Times tidings makes itself are rendered with six digits."""
    assert timestamps.from_ns(1_700_000_000_123_456_789).render() == "2023-11-14T22:13:20.123456Z"


@st.composite
def _timestamps(draw: st.DrawFn) -> Timestamp:
    digits = draw(st.integers(0, 9))
    ns = draw(st.integers(MIN_NS, MAX_NS))
    step = 10 ** (9 - digits)
    return Timestamp(ns - ns % step, digits)


@given(_timestamps())
def test_render_then_parse_is_the_identity(stamp: Timestamp) -> None:
    """Any instant in years 1..9999 with 0..9 digits survives rendering and parsing unchanged."""
    text = stamp.render()
    assert len(text) == 20 + (stamp.digits + 1 if stamp.digits else 0)
    assert timestamps.parse(text) == stamp


@given(_timestamps(), st.integers(-23 * 60 - 59, 23 * 60 + 59))
def test_an_offset_never_changes_the_instant(stamp: Timestamp, offset_minutes: int) -> None:
    """The same instant written with any offset parses to the same nanosecond count."""
    shifted = stamp.ns + offset_minutes * 60 * NS
    if not MIN_NS <= shifted <= MAX_NS:
        return
    local = Timestamp(shifted, stamp.digits).render()[:-1]
    sign = "+" if offset_minutes >= 0 else "-"
    hours, minutes = divmod(abs(offset_minutes), 60)
    text = f"{local}{sign}{hours:02d}:{minutes:02d}"
    assert timestamps.parse(text) == stamp


@given(_timestamps())
def test_render_names_the_same_second_as_datetime(stamp: Timestamp) -> None:
    """Date and time of day agree with the standard library's calendar, before 1970 too."""
    second = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=stamp.ns // NS)
    assert stamp.render()[:19] == second.replace(tzinfo=None).isoformat()
