"""The answers (409) to an event whose `(source, id)` is taken by other content: by an event
stored before, or by another event of the same batch. Both backends answer alike."""

from __future__ import annotations

from tidings.errors import Conflict


def stored_with_other_content(index: int, source: str, event_id: str) -> Conflict:
    """An event (the batch's `index`) whose key an event stored with other content holds."""
    return Conflict(
        f"an event with source {source!r} and id {event_id!r} is stored with other content",
        details=[{"index": index, "source": source, "id": event_id}],
    )


def repeated_in_batch(index: int, source: str, event_id: str) -> Conflict:
    """An event (the batch's `index`) whose key an earlier event of its batch has, with other
    content."""
    return Conflict(
        f"the batch holds two different events with source {source!r} and id {event_id!r}",
        details=[{"index": index, "source": source, "id": event_id}],
    )
