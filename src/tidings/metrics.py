"""Prometheus metrics, in a registry per service so that tests can run many side by side."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter

from tidings.catalog import builtin_types

OTHER = "other"


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

    def ingested(self, types: Iterable[str]) -> None:
        """Count newly stored events."""
        for event_type in types:
            self.events_ingested.labels(event_type if event_type in self._known else OTHER).inc()
