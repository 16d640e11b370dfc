"""What recorded attempts do to their subscriptions, the same on every backend.

A success ends a subscription's failing streak; a failure starts one if none
is running; a failure with a reason (410 Gone), or one that comes when the
streak began before its limit (5 days of failures), disables the subscription.
A backend applies the results it recorded, in order, to the streaks it read
under its write lock, and writes only what changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from tidings.model import AttemptResult

# The writes of `subscription_writes`, with the backend's placeholder for {p}.
SET_FAILING_SINCE = "UPDATE subscriptions SET failing_since_ns = {p} WHERE id = {p}"
DISABLE = (
    "UPDATE subscriptions SET state = 'disabled', state_reason = {p}, updated_ns = {p}"
    " WHERE id = {p} AND state = 'active'"
)


def failing_reason(now_ns: int, failing_since_limit_ns: int) -> str:
    """Why a subscription is disabled after its deliveries kept failing."""
    days = (now_ns - failing_since_limit_ns) / 86_400e9
    return f"every delivery has failed for {days:g} days"


def subscription_writes(
    recorded: Iterable[AttemptResult], failing_since: Mapping[str, int | None]
) -> tuple[list[tuple[int | None, str]], list[tuple[str, int, str]]]:
    """The parameters of SET_FAILING_SINCE and of DISABLE after `recorded`, applied in order
    to the streaks in `failing_since` (by subscription id; a missing one is gone)."""
    streaks = dict(failing_since)
    disabled: dict[str, tuple[str, int, str]] = {}
    for result in recorded:
        sub = result.subscription_id
        if sub not in streaks:
            continue
        if result.status == "delivered":
            streaks[sub] = None
            continue
        since = streaks[sub]
        if since is None:
            since = streaks[sub] = result.now_ns
        reason, limit = result.disable_reason, result.disable_if_failing_since_ns
        if reason is None and limit is not None and since <= limit:
            reason = failing_reason(result.now_ns, limit)
        if reason is not None and sub not in disabled:
            disabled[sub] = (reason, result.now_ns, sub)
    changed = [(since, sub) for sub, since in streaks.items() if since != failing_since[sub]]
    return changed, list(disabled.values())
