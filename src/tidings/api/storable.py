"""Refusing NUL (U+0000) wherever a request can carry text to storage.

PostgreSQL's `text` cannot hold NUL, so a value holding one would fail deep in a query and
answer 500; on SQLite it would be stored, and the two backends would differ. A request may
carry one in two places, and each is refused with a 400 before anything is read or stored:

- its URL, percent-encoded (`%00`) in the path or the query (`RefuseNulInUrl`);
- a JSON body's strings, escaped (`\\u0000`), keys included (`Body`, the base of the API's
  request models). An event's own texts are checked where events are parsed (`tidings.wire`);
  its data may hold NUL, being stored as JSON text.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from pydantic import BaseModel, ConfigDict, model_validator
from starlette.types import ASGIApp, Receive, Scope, Send

from tidings.api.errors import error_response

NUL = "\x00"
ESCAPED_NUL = "\\u0000"  # as JSON writes it, and as messages show it


def nul_at(value: Any, path: str = "") -> str | None:
    """Where in a JSON value a string (or an object's key) holds NUL: a dotted path (empty at
    the top), or None if none does."""
    if isinstance(value, str):
        return path if NUL in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if NUL in str(key):
                return where
            found = nul_at(item, where)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = nul_at(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


class Body(BaseModel):
    """A JSON request body: no member it does not name, and no text holding NUL."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _refuse_nul(cls, data: Any) -> Any:
        where = nul_at(data)
        if where is not None:
            shown = where.replace(NUL, ESCAPED_NUL) or "the body"
            raise ValueError(f"{shown} must not hold NUL ({ESCAPED_NUL})")
        return data


def nul_in_url(scope: Scope) -> str | None:
    """What in a request's URL holds NUL (`%00`): the path, or a query parameter by name."""
    if b"%00" in scope.get("raw_path", b"") or NUL in scope["path"]:
        return "the path"
    query: bytes = scope.get("query_string", b"")
    if b"%00" not in query:
        return None
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if NUL in name or NUL in value:
            shown = name.replace(NUL, ESCAPED_NUL)
            return f"query parameter {shown!r}"
    return None


class RefuseNulInUrl:
    """ASGI middleware: a request whose path or query holds `%00` is answered 400."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        where = nul_in_url(scope) if scope["type"] == "http" else None
        if where is not None:
            message = f"{where} holds %00 (NUL), which no path segment or parameter may hold"
            await error_response(400, "bad_request", message)(scope, receive, send)
            return
        await self.app(scope, receive, send)
