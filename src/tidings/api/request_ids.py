"""Request ids: every answer carries one in `X-Request-Id`, and every log line written while
its request is served carries it as `request_id`, so that a caller's report ("request X
failed") leads to the lines of that request among many API processes' logs.

The id is the caller's own `X-Request-Id` when it is a plain token (a load balancer's or a
client's, up to 128 characters of letters, digits and `._:+=/-`); otherwise a new UUIDv7.
"""

from __future__ import annotations

import re

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tidings.ids import uuid7

HEADER = "X-Request-Id"
_HEADER_KEY = HEADER.lower().encode()
_PLAIN = re.compile(r"[A-Za-z0-9._:+=/-]{1,128}")


def request_id_of(scope: Scope) -> str:
    """The id of the request: the caller's, if it is plain, else a new one."""
    for name, value in scope.get("headers", ()):
        if name == _HEADER_KEY:
            given: str = value.decode("latin-1")
            if _PLAIN.fullmatch(given):
                return given
            break
    return uuid7()


def current_request_id() -> str | None:
    """The id of the request being served, if any."""
    found: str | None = structlog.contextvars.get_contextvars().get("request_id")
    return found


class RequestIds:
    """ASGI middleware: binds the request's id for the logs and puts it on the answer.

    Each request is served in a task of its own, so the id bound here stays with it, the
    error handler of a 500 included (which answers outside every middleware, and adds the
    header itself: see `errors`).
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        structlog.contextvars.bind_contextvars(request_id=request_id)
        header = (_HEADER_KEY, request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        await self.app(scope, receive, send_with_id)
