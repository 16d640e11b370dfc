"""The collector settings of long-running processes: startup objects frozen, cycles still freed."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from tidings.gc_tuning import OLDER_THRESHOLD, YOUNG_THRESHOLD, tune_for_service


@pytest.fixture
def restored_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


class Node:
    """An object that can be part of a reference cycle."""

    def __init__(self) -> None:
        self.other: Node | None = None


def test_objects_alive_at_start_are_frozen_and_collections_are_rarer(
    restored_collector: None,
) -> None:
    before = gc.get_freeze_count()
    alive = [Node() for _ in range(100)]
    tune_for_service()
    assert gc.get_freeze_count() >= before + len(alive)
    assert gc.get_threshold() == (YOUNG_THRESHOLD, OLDER_THRESHOLD, OLDER_THRESHOLD)


def test_cycles_made_later_are_still_freed(restored_collector: None) -> None:
    tune_for_service()
    first, second = Node(), Node()
    first.other, second.other = second, first
    gone = weakref.ref(first)
    del first, second
    gc.collect()
    assert gone() is None
