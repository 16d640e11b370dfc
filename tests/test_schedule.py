"""The retry schedule as a pure function: delays, jitter, Retry-After, exhaustion, parsing."""

from __future__ import annotations

import random

import pytest

from tidings.delivery.schedule import DEFAULT_DELAYS, Schedule, parse_schedule

MINUTE, HOUR = 60.0, 3600.0
# The delay after each failed attempt 1..7 of the default schedule.
DEFAULT_GAPS = [5.0, 5 * MINUTE, 30 * MINUTE, 2 * HOUR, 5 * HOUR, 10 * HOUR, 10 * HOUR]


def test_default_schedule_is_eight_attempts_with_twenty_percent_jitter() -> None:
    """The default is at once, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, with ±20% jitter."""
    schedule = Schedule()
    assert tuple(schedule.delays) == (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
    assert tuple(schedule.delays) == DEFAULT_DELAYS
    assert schedule.attempts == 8
    assert schedule.jitter == 0.2


def test_default_delays_are_exact_without_jitter() -> None:
    """With jitter 0 the delay after attempt n is exactly the schedule's n-th delay."""
    schedule = Schedule(jitter=0)
    got = [schedule.next_delay(n, 500, None) for n in range(1, 8)]
    assert got == DEFAULT_GAPS


def test_schedule_is_exhausted_after_eight_attempts() -> None:
    """After the eighth failed attempt there is no next delay."""
    schedule = Schedule(jitter=0)
    assert schedule.next_delay(7, 500, None) == 10 * HOUR
    assert schedule.next_delay(8, 500, None) is None
    assert schedule.next_delay(9, None, None) is None


def test_exhaustion_wins_over_retry_after() -> None:
    """A Retry-After on the last attempt does not earn another one."""
    assert Schedule(jitter=0).next_delay(8, 429, 10.0) is None
    assert Schedule((0,), jitter=0).next_delay(1, 503, 1.0) is None


def test_jitter_stays_within_twenty_percent() -> None:
    """Over many seeded draws every delay lies within ±20% of the nominal one and uses the range."""
    schedule = Schedule()
    rng = random.Random(20240501)
    for attempts, nominal in enumerate(DEFAULT_GAPS, start=1):
        draws = [schedule.next_delay(attempts, 500, None, rng) for _ in range(2000)]
        values = [d for d in draws if d is not None]
        assert len(values) == len(draws)
        assert all(nominal * 0.8 <= d <= nominal * 1.2 for d in values)
        assert min(values) < nominal * 0.85
        assert max(values) > nominal * 1.15


def test_jitter_is_reproducible_with_a_seeded_rng() -> None:
    """The same seed gives the same delays: the schedule draws only from the rng it is given."""
    schedule = Schedule()
    first = [schedule.next_delay(3, None, None, random.Random(7)) for _ in range(3)]
    second = [schedule.next_delay(3, None, None, random.Random(7)) for _ in range(3)]
    assert first == second
    assert len(set(first)) == 1


def test_zero_delay_has_no_jitter() -> None:
    """A delay of 0 stays 0 whatever the jitter."""
    assert Schedule((0, 0, 5)).next_delay(1, 500, None, random.Random(1)) == 0


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_replaces_the_delay_on_429_and_503(status: int) -> None:
    """On a 429 or 503 a Retry-After is the next delay, exactly, without jitter."""
    schedule = Schedule()
    assert schedule.next_delay(1, status, 120.0, random.Random(3)) == 120.0
    assert schedule.next_delay(5, status, 2.5, random.Random(3)) == 2.5


@pytest.mark.parametrize("status", [None, 200, 302, 400, 404, 500, 502, 504])
def test_retry_after_is_ignored_on_other_statuses(status: int | None) -> None:
    """On any status but 429 and 503 a Retry-After changes nothing."""
    schedule = Schedule(jitter=0)
    assert schedule.next_delay(1, status, 120.0) == 5.0
    assert schedule.next_delay(3, status, 1.0) == 30 * MINUTE


def test_retry_after_is_capped_at_the_longest_delay() -> None:
    """A Retry-After longer than the schedule's longest delay is cut to it."""
    assert Schedule(jitter=0).next_delay(1, 429, 10**7) == 10 * HOUR
    assert Schedule((0, 5, 60), jitter=0).next_delay(1, 503, 3600.0) == 60.0


def test_negative_retry_after_means_at_once() -> None:
    """A negative Retry-After is treated as zero."""
    assert Schedule(jitter=0).next_delay(2, 429, -30.0) == 0.0


@pytest.mark.parametrize(
    ("text", "delays"),
    [
        ("0,5s,5m,30m,2h,5h,10h,10h", DEFAULT_DELAYS),
        ("0, 250ms, 1s", (0.0, 0.25, 1.0)),
        ("1d,2d", (86_400.0, 172_800.0)),
        ("7", (7.0,)),
        ("1.5m", (90.0,)),
        ("0ms", (0.0,)),
    ],
)
def test_parse_schedule_units(text: str, delays: tuple[float, ...]) -> None:
    """ms, s, m, h and d are units; a bare number is seconds; spaces around items are ignored."""
    schedule = parse_schedule(text)
    assert tuple(schedule.delays) == pytest.approx(delays)
    assert schedule.attempts == len(delays)
    assert schedule.jitter == 0.2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "invalid delay"),
        ("0,,5s", "invalid delay"),
        ("5x", "invalid delay"),
        ("s", "invalid delay"),
        ("5 minutes", "invalid delay"),
        ("0,-5s", "negative delay"),
        ("0,infs", "delay"),
        ("nan", "delay"),
        ("1e400", "delay"),
    ],
)
def test_parse_schedule_errors(text: str, message: str) -> None:
    """Malformed, negative or non-finite delays are refused with a message naming the schedule."""
    with pytest.raises(ValueError, match=message) as raised:
        parse_schedule(text)
    assert repr(text) in str(raised.value) or text == ""
