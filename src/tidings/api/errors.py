"""The one mapping from errors to HTTP answers: `{"error": {"code", "message", "details"}}`."""

from __future__ import annotations

import sqlite3
from typing import Any

import structlog
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tidings.api.request_ids import HEADER, current_request_id
from tidings.errors import TidingsError, TooManyRequests
from tidings.storage.sqlite_engine import is_busy

log = structlog.get_logger("tidings.api")
DATABASE_RETRY_AFTER_S = 1


def error_response(
    status: int, code: str, message: str, details: list[dict[str, Any]] | None = None
) -> JSONResponse:
    """An error answer in tidings' one format."""
    body = {"error": {"code": code, "message": message, "details": details or []}}
    return JSONResponse(body, status_code=status)


async def _tidings_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TidingsError)
    response = error_response(exc.status, exc.code, exc.message, exc.details)
    if isinstance(exc, TooManyRequests):
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    details = [
        {
            "field": ".".join(str(part) for part in error["loc"][1:]) or "body",
            "message": error["msg"],
        }
        for error in exc.errors()
    ]
    message = "; ".join(f"{d['field']}: {d['message']}" for d in details)
    return error_response(400, "bad_request", message, details)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}
    return error_response(
        exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail)
    )


# PostgreSQL's errors of the moment, which the same request may not meet again: a connection
# that failed (class 08, but a protocol violation), a transaction rolled back to be retried
# (40: serialization, deadlock), resources short (53: disk, memory, connections), the server
# shutting down or not yet accepting connections (57P01-57P03), a lock not available (55P03).
# A broken connection and the pool's timeout carry no SQLSTATE. Others stay 500s: a program
# limit (54) or a cancelled statement (57014, a statement timeout) would come back on a retry.
# SQLite's one error of the moment is a lock another process held past the busy timeout.
_TRANSIENT_CLASSES = ("08", "40", "53")
_TRANSIENT_STATES = ("57P01", "57P02", "57P03", "55P03")
_NEVER_TRANSIENT = ("08P01",)


def is_transient(exc: Exception) -> bool:
    """Whether a database's error is one of the moment (see above)."""
    from psycopg.errors import PipelineAborted

    if isinstance(exc, sqlite3.Error):
        return is_busy(exc)
    if isinstance(exc, PipelineAborted):  # an earlier statement of the pipeline failed
        return False
    sqlstate: str | None = getattr(exc, "sqlstate", None)
    if sqlstate is None:
        return True
    if sqlstate in _NEVER_TRANSIENT:
        return False
    return sqlstate[:2] in _TRANSIENT_CLASSES or sqlstate in _TRANSIENT_STATES


async def _database_unavailable(request: Request, exc: Exception) -> Response:
    if not is_transient(exc):
        raise exc  # to the handler of 500s, which logs it
    log.warning("the database is unavailable", path=request.url.path, error=str(exc))
    response = error_response(
        503,
        "unavailable",
        "the database is locked by another process just now; retry"
        if isinstance(exc, sqlite3.Error)
        else "the database is unavailable just now (restarting, or the connection broke); retry",
    )
    response.headers["Retry-After"] = str(DATABASE_RETRY_AFTER_S)
    return response


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error", path=request.url.path)
    response = error_response(
        500, "internal", "an internal error occurred; it has been logged with the request's id"
    )
    request_id = current_request_id()
    if request_id is not None:  # a 500 is answered outside the middleware that adds it
        response.headers[HEADER] = request_id
    return response


def install(app: FastAPI) -> None:
    """Make `app` answer every error in tidings' format."""
    app.add_exception_handler(TidingsError, _tidings_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    # The databases' errors of the moment are 503s (`is_transient`). psycopg is imported here,
    # where the app is made, not where the CLI imports this module.
    from psycopg import OperationalError

    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(sqlite3.OperationalError, _database_unavailable)
    app.add_exception_handler(Exception, _unexpected)


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "details"],
            "properties": {
                "code": {"type": "string", "examples": ["bad_request"]},
                "message": {"type": "string"},
                "details": {"type": "array", "items": {"type": "object"}},
            },
        }
    },
}
_ERRORS = {
    "400": "malformed: the message says what is wrong",
    "401": "no, unknown or expired token",
    "403": "the token may not do this",
    "404": "not found, or not visible to the token",
    "503": "the database is unavailable just now (PostgreSQL restarting, say): retry after"
    " Retry-After seconds",
}


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Make an OpenAPI document tell the truth about errors: FastAPI documents its validation
    errors as 422 `HTTPValidationError`, which tidings answers as 400 in its own format."""
    schema.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    for name in ("HTTPValidationError", "ValidationError"):
        schema["components"]["schemas"].pop(name, None)
    reference = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None) if "HTTPValidationError" in str(
                responses.get("422")
            ) else None
            authenticated = (
                path.startswith("/v1/") and not path.endswith("/events")
            ) or path == "/v1/events"
            for status, description in _ERRORS.items():
                if status == "400" or authenticated:
                    entry = responses.setdefault(status, {"description": description})
                    entry.setdefault("content", reference)
    return schema
