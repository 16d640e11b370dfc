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

The errors, each with the HTTP `status` to answer:

    VerificationError                     the root; `status`, `code`, `message`, `details`
    ├── MissingToken (401)                no `Authorization: Bearer <token>`
    ├── MalformedToken (401)              not a compact JWS of JSON objects, or a claim of the wrong type
    │   └── MissingClaim (401)            a required claim (`iss`, `sub`, `aud`, `exp`, `iat`) is absent
    ├── DisallowedAlgorithm (401)         `alg` not in the asymmetric allow-list (`none`, `HS256`, ...)
    │   └── AlgorithmKeyMismatch (401)    `alg` does not fit the key the `kid` names
    ├── DisallowedHeader (401)            a `jwk`, `jku`, `x5u`, `x5c`, `crit` or `b64` header
    ├── UntrustedIssuer (401)             `iss` is not exactly the configured issuer
    ├── UnknownKey (401)                  the `kid` is not in the issuer's JWKS (even after a refetch)
    ├── BadSignature (401)                the signature does not verify with that key
    ├── WrongAudience (401)               `aud` does not name the configured audience
    ├── Expired (401)                     `exp` is past, beyond the leeway
    ├── NotYetValid (401)                 `nbf` or `iat` is in the future, beyond the leeway
    ├── LifetimeTooLong (401)             `exp - iat` exceeds the bound
    ├── BadWebhookSignature (401)         the Standard Webhooks signature is missing, stale or wrong
    ├── KeysUnavailable (503)             the discovery document or the JWKS cannot be fetched
    ├── ForbiddenGroup (403)              `sub` is not `webhook:` + an expected group
    │   └── EventOutsideGroup (403)       `Ce-Group` does not lie inside the token's group
    └── InvalidEvent (400)                the `Ce-*` headers and the body are not a valid CloudEvent
        └── BodyTooLarge (413)
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
