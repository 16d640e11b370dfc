"""A token bucket per key, in process memory: `rate` requests a second with bursts up to `rate`
(and at least one: a rate below one a second admits one request every 1/rate seconds)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class RateLimiter:
    """Admits requests per key at a sustained rate; answers how long to wait when it does not."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000):
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}

    def admit(self, key: str, rate: float) -> float:
        """0 if the request may proceed (and is counted), else the seconds until it would."""
        now = self.clock()
        burst = max(rate, 1.0)
        tokens, stamp = self._buckets.get(key, (burst, now))
        tokens = min(burst, tokens + (now - stamp) * rate)
        if tokens >= 1:
            if len(self._buckets) >= self.max_keys and key not in self._buckets:
                self._buckets.clear()
            self._buckets[key] = (tokens - 1, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1 - tokens) / rate


def retry_after(seconds: float) -> int:
    """A Retry-After value in whole seconds, at least 1."""
    return max(1, math.ceil(seconds))
