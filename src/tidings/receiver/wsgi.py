"""WSGI adapters (Flask, Django, any WSGI server): verify every delivery before your code runs.

A whole receiver as a WSGI app::

    from tidings.receiver.wsgi import WSGIReceiver

    def handle(event):                     # the verified Event; return a status, or None (204)
        print(event.type, event.body)

    app = WSGIReceiver(verifier, handle)

Flask, as middleware in front of the app: refusals are answered before Flask sees them, and
a view finds the verified event in the environ::

    from tidings.receiver.wsgi import EVENT_KEY, VerifyingMiddleware

    app = Flask(__name__)
    app.wsgi_app = VerifyingMiddleware(app.wsgi_app, verifier, paths={"/hook"})

    @app.post("/hook")
    def hook():
        event = request.environ[EVENT_KEY]
        return "", 204

Key fetches block the calling thread (WSGI servers run a thread per request).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from .errors import BodyTooLarge, InvalidEvent, VerificationError
from .event import Event
from .verifier import Verifier

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = [
    "EVENT_KEY",
    "VerifyingMiddleware",
    "WSGIReceiver",
    "headers_from_environ",
    "read_body",
    "verify_environ",
]

EVENT_KEY = "tidings.event"
log = logging.getLogger("tidings.receiver")

Handler = Callable[[Event], int | None]


def headers_from_environ(environ: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The request headers of a WSGI environ, with their HTTP names."""
    headers = [
        (key[5:].replace("_", "-").title(), value)
        for key, value in environ.items()
        if key.startswith("HTTP_") and isinstance(value, str)
    ]
    for key, name in (("CONTENT_TYPE", "Content-Type"), ("CONTENT_LENGTH", "Content-Length")):
        if environ.get(key):
            headers.append((name, environ[key]))
    return headers


def read_body(environ: Mapping[str, Any], limit: int) -> bytes:
    """The request body (at most `limit` bytes, else BodyTooLarge)."""
    declared = environ.get("CONTENT_LENGTH") or ""
    if not declared:
        length = 0
    elif declared.isascii() and declared.isdigit():  # str.isdigit() alone takes '²' and '٣'
        length = int(declared) if len(declared) < 19 else limit + 1  # past any limit
    else:
        raise InvalidEvent(f"Content-Length is not a number: {declared!r}")
    if length > limit:
        raise BodyTooLarge(f"the body is larger than {limit} bytes")
    body: bytes = environ["wsgi.input"].read(length) if length else b""
    return body


def verify_environ(verifier: Verifier, environ: Mapping[str, Any]) -> tuple[Event, bytes]:
    """The verified event of a WSGI request and its body; raises VerificationError (logged)."""
    try:
        body = read_body(environ, verifier.max_body_bytes)
        return verifier.verify(headers_from_environ(environ), body), body
    except VerificationError as exc:
        client = environ.get("REMOTE_ADDR", "-")
        log.info("refused a delivery from %s: %s %s: %s", client, exc.status, exc.code, exc)
        raise


def _answer(start_response: StartResponse, status: int, body: bytes = b"") -> list[bytes]:
    headers = [("Content-Length", str(len(body)))]
    if body:
        headers.append(("Content-Type", "application/json"))
    start_response(f"{status} {HTTPStatus(status).phrase}", headers)
    return [body]


def _refuse(start_response: StartResponse, error: VerificationError) -> list[bytes]:
    body = json.dumps(error.to_dict()).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    if error.status == 401:
        headers.append(("WWW-Authenticate", 'Bearer error="invalid_token"'))
    start_response(f"{error.status} {HTTPStatus(error.status).phrase}", headers)
    return [body]


class WSGIReceiver:
    """A WSGI app that verifies each POST and hands the event to `handler`."""

    def __init__(self, verifier: Verifier, handler: Handler) -> None:
        self.verifier = verifier
        self.handler = handler

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "POST":
            return _answer(start_response, 405)
        try:
            event, _ = verify_environ(self.verifier, environ)
        except VerificationError as exc:
            return _refuse(start_response, exc)
        status = self.handler(event)
        return _answer(start_response, 204 if status is None else status)


class VerifyingMiddleware:
    """WSGI middleware: verify POSTs (to `paths`, or all), pass the event on in the environ.

    The wrapped app reads the body again from `wsgi.input` as usual.
    """

    def __init__(
        self, app: WSGIApplication, verifier: Verifier, paths: Iterable[str] | None = None
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.paths = None if paths is None else frozenset(paths)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "POST" or (
            self.paths is not None and environ.get("PATH_INFO", "/") not in self.paths
        ):
            return self.app(environ, start_response)
        try:
            event, body = verify_environ(self.verifier, environ)
        except VerificationError as exc:
            return _refuse(start_response, exc)
        environ[EVENT_KEY] = event
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        return self.app(environ, start_response)
