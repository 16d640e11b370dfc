"""Verify tidings deliveries in your own receiver: `Verifier`, `Event`, and why a request fails.

    from tidings.receiver import Verifier, VerificationError

    verifier = Verifier("https://tidings.example.com", "0475f6baca584a8964a6bce6b74dbe78dd8805b6")

    def handle(headers, body):                 # any framework: the headers and the raw body
        try:
            event = verifier.verify(headers, body)   # or: await verifier.averify(...)
        except VerificationError as exc:
            return exc.status, exc.message           # 401, 403, 400, 413 or 503
        print(event.type, event.actor.subject, event.body)
        return 204, ""

Adapters: `tidings.receiver.starlette` (Starlette and FastAPI) and `tidings.receiver.wsgi`
(any WSGI app, Flask included). This package needs only PyJWT[crypto] and the standard
library; the Starlette adapter imports Starlette, and only when it is imported.

Every failure is a `VerificationError` whose `status` says what to answer (401, 403, 400,
413 or 503); the whole tree is drawn in `tidings.receiver.errors`.
"""

from .errors import (
    AlgorithmKeyMismatch,
    BadSignature,
    BadWebhookSignature,
    BodyTooLarge,
    DisallowedAlgorithm,
    DisallowedHeader,
    EventOutsideGroup,
    Expired,
    ForbiddenGroup,
    InvalidEvent,
    KeysUnavailable,
    LifetimeTooLong,
    MalformedToken,
    MissingClaim,
    MissingToken,
    NotYetValid,
    UnknownKey,
    UntrustedIssuer,
    VerificationError,
    WrongAudience,
)
from .event import Actor, Event, TokenClaims
from .jwks import KeySet, PublicKey, urllib_fetch
from .verifier import ALLOWED_ALGORITHMS, Verifier

__all__ = [
    "ALLOWED_ALGORITHMS",
    "Actor",
    "AlgorithmKeyMismatch",
    "BadSignature",
    "BadWebhookSignature",
    "BodyTooLarge",
    "DisallowedAlgorithm",
    "DisallowedHeader",
    "Event",
    "EventOutsideGroup",
    "Expired",
    "ForbiddenGroup",
    "InvalidEvent",
    "KeySet",
    "KeysUnavailable",
    "LifetimeTooLong",
    "MalformedToken",
    "MissingClaim",
    "MissingToken",
    "NotYetValid",
    "PublicKey",
    "TokenClaims",
    "UnknownKey",
    "UntrustedIssuer",
    "VerificationError",
    "Verifier",
    "WrongAudience",
    "urllib_fetch",
]
