"""Prometheus metrics, in a registry per service so that tests can run many side by side."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterable
from typing import TYPE_CHECKING

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from tidings.catalog import builtin_types

if TYPE_CHECKING:
    from tidings.storage.base import Storage

OTHER = "other"
# How long a probe or a scrape waits for the database, below the default scrape timeout (10 s)
# and the pool's wait for a connection (30 s).
PROBE_WAIT_S = 2.0
log = structlog.get_logger("tidings.metrics")


class Metrics:
    """The service's counters and histograms. Labels stay bounded: unknown types count as 'other'."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events_ingested = Counter(
            "tidings_events_ingested",
            "Events stored, by type (types outside the catalog count as 'other').",
            ["type"],
            registry=self.registry,
        )
        self._known = frozenset(builtin_types())
        self.delivery_attempts = Counter(
            "tidings_delivery_attempts",
            "Delivery attempts by outcome: delivered, retrying or failed.",
            ["outcome"],
            registry=self.registry,
        )
        self.delivery_latency = Histogram(
            "tidings_delivery_latency_seconds",
            "Time from sending a delivery to its answer.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15),
            registry=self.registry,
        )
        self.delivery_attempt_number = Histogram(
            "tidings_delivery_attempt_number",
            "Which attempt of its delivery each attempt was.",
            buckets=(1, 2, 3, 4, 5, 6, 7, 8),
            registry=self.registry,
        )
        self.deliveries_due = Gauge(
            "tidings_deliveries_due", "Deliveries due and not claimed.", registry=self.registry
        )
        self.deliveries_in_flight = Gauge(
            "tidings_deliveries_in_flight",
            "Deliveries claimed by a worker.",
            registry=self.registry,
        )
        self.oldest_due_age = Gauge(
            "tidings_oldest_due_delivery_age_seconds",
            "How long the oldest due delivery has waited.",
            registry=self.registry,
        )

    def ingested(self, types: Iterable[str]) -> None:
        """Count newly stored events."""
        counts = collections.Counter(t if t in self._known else OTHER for t in types)
        for label, count in counts.items():
            self.events_ingested.labels(label).inc(count)

    def attempted(
        self, status_code: int | None, latency_ms: float, number: int, status: str
    ) -> None:
        """Count one delivery attempt."""
        outcome = {"pending": "retrying"}.get(status, status)
        self.delivery_attempts.labels(outcome).inc()
        self.delivery_latency.observe(latency_ms / 1000)
        self.delivery_attempt_number.observe(number)

    def backlog(self, due: int, in_flight: int, oldest_due_age_s: float) -> None:
        """Set the backlog gauges."""
        self.deliveries_due.set(due)
        self.deliveries_in_flight.set(in_flight)
        self.oldest_due_age.set(oldest_due_age_s)

    async def exposition(self, storage: Storage, now_ns: int) -> bytes:
        """The metrics in the Prometheus text format, the backlog gauges read from `storage`
        just before (every process sees the whole backlog: it lives in the database). When the
        database does not answer within PROBE_WAIT_S, the gauges keep their last values and the
        counters are answered all the same: they matter most during an outage."""
        try:
            due, in_flight, oldest = await asyncio.wait_for(
                storage.delivery_backlog(now_ns), PROBE_WAIT_S
            )
        except Exception:
            log.warning("the delivery backlog could not be read; its gauges keep their values")
        else:
            self.backlog(due, in_flight, 0.0 if oldest is None else max(0, now_ns - oldest) / 1e9)
        return generate_latest(self.registry)
