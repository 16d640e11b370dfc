"""What a worker reports after an attempt: the AttemptResult of a claim, for storage tests."""

from __future__ import annotations

from tidings.model import Attempt, AttemptResult, Claim

NS = 1_000_000_000
FIVE_DAYS_NS = 5 * 86_400 * NS


def result(
    claim: Claim,
    now_ns: int,
    code: int,
    next_due_ns: int | None = None,
    disable_reason: str | None = None,
) -> AttemptResult:
    """What a worker reports after an attempt of `claim` answered `code`."""
    if 200 <= code < 300:
        status = "delivered"
    else:
        status = "pending" if next_due_ns is not None else "failed"
    return AttemptResult(
        delivery_id=claim.delivery_id,
        claim_token=claim.claim_token,
        subscription_id=claim.subscription.id,
        attempt=Attempt(
            number=claim.attempts + 1,
            started_ns=now_ns - NS,
            status_code=code,
            latency_ms=3.0,
            error=None,
            response=f"answered {code}",
        ),
        status=status,
        next_due_ns=next_due_ns,
        now_ns=now_ns,
        disable_reason=disable_reason,
        disable_if_failing_since_ns=now_ns - FIVE_DAYS_NS,
    )
