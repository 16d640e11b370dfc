"""The retry schedule: a pure function from an attempt's outcome to the next delay.

Attempt 1 goes at once; each later one waits the schedule's delay, counted from
the previous attempt, with ±20% jitter. A `Retry-After` on a 429 or 503
replaces the next delay, capped at the schedule's longest. After the last
attempt of the schedule the delivery has failed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

MINUTE, HOUR = 60.0, 3600.0
DEFAULT_DELAYS: tuple[float, ...] = (
    0,
    5,
    5 * MINUTE,
    30 * MINUTE,
    2 * HOUR,
    5 * HOUR,
    10 * HOUR,
    10 * HOUR,
)
JITTER = 0.2
RETRY_AFTER_STATUSES = frozenset({429, 503})


@dataclass(frozen=True, slots=True)
class Schedule:
    """Delays before each attempt, in seconds: `delays[0]` before the first (normally 0)."""

    delays: Sequence[float] = DEFAULT_DELAYS
    jitter: float = JITTER

    @property
    def attempts(self) -> int:
        """How many attempts a delivery gets."""
        return len(self.delays)

    def next_delay(
        self,
        attempts_made: int,
        status: int | None,
        retry_after_s: float | None,
        rng: random.Random | None = None,
    ) -> float | None:
        """Seconds until the next attempt after `attempts_made` failed ones; None when exhausted."""
        if attempts_made >= len(self.delays):
            return None
        if retry_after_s is not None and status in RETRY_AFTER_STATUSES:
            return min(max(retry_after_s, 0.0), max(self.delays))
        delay = float(self.delays[attempts_made])
        spread = delay * self.jitter
        return delay + (rng or random).uniform(-spread, spread) if spread else delay


def parse_schedule(text: str) -> Schedule:
    """A schedule from a comma-separated list of delays with units: `0,5s,5m,30m,2h`."""
    units = {"ms": 0.001, "s": 1.0, "m": MINUTE, "h": HOUR, "d": 24 * HOUR}
    delays = []
    for part in (p.strip() for p in text.split(",")):
        unit = next((u for u in ("ms", "s", "m", "h", "d") if part.endswith(u)), "")
        number = part[: len(part) - len(unit)] if unit else part
        try:
            value = float(number) * units.get(unit, 1.0)
        except ValueError as exc:
            raise ValueError(f"invalid delay {part!r} in retry schedule {text!r}") from exc
        if not math.isfinite(value):
            raise ValueError(f"non-finite delay {part!r} in retry schedule {text!r}")
        if value < 0:
            raise ValueError(f"negative delay {part!r} in retry schedule {text!r}")
        delays.append(value)
    if not delays:
        raise ValueError("the retry schedule needs at least one attempt")
    return Schedule(tuple(delays))
