"""Garbage collection settings for long-running tidings processes.

CPython collects cycles after every 700 new container objects, and a full collection walks
every object alive, most of them the modules, routes and models loaded at start. Ingesting a
batch of 100 events makes tens of thousands of short-lived dicts and lists, so on the default
settings the API process of the PostgreSQL batch benchmark spent about a tenth of its CPU
collecting. Objects alive once the service is built are moved out of the collector's reach
(they stay alive anyway), and young objects are collected after 20,000 new ones instead of
700; unreachable cycles are still freed, a little later.
"""

from __future__ import annotations

import gc

# New container objects between young collections (CPython's default: 700).
YOUNG_THRESHOLD = 20_000
# Young collections between middle ones, and middle ones between full ones (default: 10, 10).
OLDER_THRESHOLD = 20


def tune_for_service() -> None:
    """Freeze the objects alive now (imports, the built app) and collect less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, OLDER_THRESHOLD, OLDER_THRESHOLD)
