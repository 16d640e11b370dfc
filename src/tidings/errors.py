"""The exceptions of tidings, each carrying the HTTP status it maps to.

    TidingsError
    ├── BadRequest (400)            malformed input
    ├── Unauthenticated (401)       no, unknown or expired token
    ├── Forbidden (403)             the token may not do this
    ├── NotFound (404)              absent, or not visible to the token
    ├── Conflict (409)              clashes with what is stored
    ├── PayloadTooLarge (413)
    ├── UnsupportedMediaType (415)
    ├── Unprocessable (422)         well formed, but against a rule
    └── TooManyRequests (429)

The API turns every one of them into `{"error": {"code", "message", "details"}}`
in exactly one place (`tidings.api.errors`).
"""

from __future__ import annotations

from typing import Any, ClassVar


class TidingsError(Exception):
    """Something went wrong."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"

    def __init__(self, message: str | None = None, details: list[dict[str, Any]] | None = None):
        self.message = message or (self.__doc__ or self.code).strip()
        self.details = details or []
        super().__init__(self.message)


class BadRequest(TidingsError):
    """The request is malformed."""

    status = 400
    code = "bad_request"


class Unauthenticated(TidingsError):
    """A valid bearer token is required."""

    status = 401
    code = "unauthenticated"


class Forbidden(TidingsError):
    """The token is not allowed to do this."""

    status = 403
    code = "forbidden"


class NotFound(TidingsError):
    """Not found."""

    status = 404
    code = "not_found"


class Conflict(TidingsError):
    """The request conflicts with what is stored."""

    status = 409
    code = "conflict"


class PayloadTooLarge(TidingsError):
    """The request body is too large."""

    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(TidingsError):
    """The content type is not supported."""

    status = 415
    code = "unsupported_media_type"


class Unprocessable(TidingsError):
    """The request is well formed but breaks a rule."""

    status = 422
    code = "unprocessable"


class TooManyRequests(TidingsError):
    """Too many requests."""

    status = 429
    code = "too_many_requests"

    def __init__(self, message: str | None = None, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


# What /readyz answers (503) when the process cannot serve: an API process's or a worker's.
NOT_READY = "the database is unreachable or its schema is not current"
