"""Refusing, with a 400, what a request may carry but storage cannot hold.

Such a value would fail deep in a query or a JSON encoder and answer 500, or be stored on
one backend and not on the other. Each is refused before anything is read or stored:

- NUL (U+0000), which PostgreSQL's `text` cannot hold: percent-encoded (`%00`) in a URL's
  path or query (`RefuseNulInUrl`), escaped (`\\u0000`) in a JSON body's strings and keys;
- in a JSON body (`Body`, the base of the API's request models), also a lone surrogate
  (`\\ud800`, not a character: no UTF-8 encodes it), a number that is not one (NaN,
  Infinity) and an integer beyond 64 bits (the JSON encoder stops there).

An event's own texts are checked where events are parsed (`tidings.wire`): its data may hold
NUL, being stored as JSON text.
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import parse_qsl

from pydantic import BaseModel, ConfigDict, model_validator
from starlette.types import ASGIApp, Receive, Scope, Send

from tidings.api.errors import error_response
from tidings.wire import NUL_FAULT

NUL = "\x00"
_INT64 = range(-(2**63), 2**63)


def _text_fault(text: str) -> str | None:
    if NUL in text:
        return NUL_FAULT
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            return "must not hold a lone surrogate (\\ud800 to \\udfff): it is no character"
    return None


def unstorable_at(value: Any, path: str = "") -> tuple[str, str] | None:
    """The first place in a JSON value that storage cannot hold: its dotted path (empty at the
    top) and what is wrong there; None if there is none."""
    if isinstance(value, str):
        fault = _text_fault(value)
        return None if fault is None else (path, fault)
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if value in _INT64 else (path, "is an integer beyond 64 bits")
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, "is not a number (NaN or Infinity)")
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            fault = _text_fault(str(key))
            if fault is not None:
                return where, fault
            found = unstorable_at(item, where)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = unstorable_at(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def shown(path: str) -> str:
    """A path as a message shows it: its NULs and lone surrogates escaped as JSON would."""
    return "".join(
        f"\\u{ord(char):04x}" if char == NUL or "\ud800" <= char <= "\udfff" else char
        for char in path
    )


class Body(BaseModel):
    """A JSON request body: no member it does not name, nothing storage cannot hold."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _refuse_unstorable(cls, data: Any) -> Any:
        found = unstorable_at(data)
        if found is not None:
            where, fault = found
            raise ValueError(f"{shown(where) or 'the body'} {fault}")
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
            return f"query parameter '{shown(name)}'"
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
