"""Why a delivery was refused: one exception per check, each with the HTTP status to answer.

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

401 means "not a genuine delivery from the issuer"; 403 "a delivery, but for a group this
receiver does not serve" (like `iss`, `sub` is checked before the signature, so a forged token
naming another group gets 403 too: treat both as suspicious); 400 "a genuine delivery whose
event is malformed"; 503 "cannot tell right now" (the sender retries).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

__all__ = [
    "AlgorithmKeyMismatch",
    "BadSignature",
    "BadWebhookSignature",
    "BodyTooLarge",
    "DisallowedAlgorithm",
    "DisallowedHeader",
    "EventOutsideGroup",
    "Expired",
    "ForbiddenGroup",
    "InvalidEvent",
    "KeysUnavailable",
    "LifetimeTooLong",
    "MalformedToken",
    "MissingClaim",
    "MissingToken",
    "NotYetValid",
    "UnknownKey",
    "UntrustedIssuer",
    "VerificationError",
    "WrongAudience",
]


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class VerificationError(Exception):
    """The delivery could not be verified."""

    status: ClassVar[int] = 401
    code: ClassVar[str] = "verification_error"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.code = _snake(cls.__name__)

    def __init__(self, message: str | None = None, **details: Any) -> None:
        self.message = message or (self.__doc__ or self.code).strip()
        self.details = details
        super().__init__(self.message)

    def to_dict(self) -> dict[str, Any]:
        """The error as a JSON-able answer body: `{"error": {"code", "message"}}`."""
        return {"error": {"code": self.code, "message": self.message}}


class MissingToken(VerificationError):
    """No `Authorization: Bearer <token>` header."""


class MalformedToken(VerificationError):
    """The token is not a well-formed JWT."""


class MissingClaim(MalformedToken):
    """A required claim is absent."""


class DisallowedAlgorithm(VerificationError):
    """The token's algorithm is not allowed."""


class AlgorithmKeyMismatch(DisallowedAlgorithm):
    """The token's algorithm does not fit its key."""


class DisallowedHeader(VerificationError):
    """The token carries a header that would let it choose its own key."""


class UntrustedIssuer(VerificationError):
    """The token is not from the configured issuer."""


class UnknownKey(VerificationError):
    """The token's `kid` is not in the issuer's key set."""


class BadSignature(VerificationError):
    """The token's signature does not verify."""


class WrongAudience(VerificationError):
    """The token is meant for another audience."""


class Expired(VerificationError):
    """The token has expired."""


class NotYetValid(VerificationError):
    """The token is not valid yet."""


class LifetimeTooLong(VerificationError):
    """The token lives longer than allowed."""


class BadWebhookSignature(VerificationError):
    """The Standard Webhooks signature is missing, stale or wrong."""


class KeysUnavailable(VerificationError):
    """The issuer's discovery document or key set cannot be fetched."""

    status: ClassVar[int] = 503


class ForbiddenGroup(VerificationError):
    """The token is for a group this receiver does not serve."""

    status: ClassVar[int] = 403


class EventOutsideGroup(ForbiddenGroup):
    """The event's group does not lie inside the token's group."""


class InvalidEvent(VerificationError):
    """The headers and body are not a valid CloudEvent."""

    status: ClassVar[int] = 400


class BodyTooLarge(InvalidEvent):
    """The body is larger than allowed."""

    status: ClassVar[int] = 413
