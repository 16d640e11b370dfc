"""Starlette and FastAPI adapters: verify every delivery before your handler sees it.

Starlette, an endpoint that answers refusals itself::

    from starlette.applications import Starlette
    from starlette.routing import Route
    from tidings.receiver.starlette import receiver_endpoint

    async def handle(event):               # the verified Event; return a Response or None (204)
        print(event.type, event.body)

    app = Starlette(routes=[Route("/hook", receiver_endpoint(verifier, handle), methods=["POST"])])

FastAPI, a dependency (a refusal becomes an HTTPException with the right status)::

    from fastapi import Depends, FastAPI
    from tidings.receiver.starlette import verified_event

    app = FastAPI()
    VerifiedEvent = Depends(verified_event(verifier))

    @app.post("/hook", status_code=204)
    async def hook(event: Event = VerifiedEvent) -> None: ...

Key fetches run in a worker thread (`Verifier.averify`): the event loop never blocks.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .errors import BodyTooLarge, VerificationError
from .event import Event
from .verifier import Verifier

__all__ = ["error_response", "read_body", "receiver_endpoint", "verified_event", "verify_request"]

log = logging.getLogger("tidings.receiver")

Handler = Callable[[Event], Awaitable[Response | None] | Response | None]


def challenge(error: VerificationError) -> dict[str, str]:
    """The `WWW-Authenticate` header a 401 carries (RFC 6750)."""
    if error.status != 401:
        return {}
    return {"WWW-Authenticate": 'Bearer error="invalid_token"'}


def error_response(error: VerificationError) -> JSONResponse:
    """A refusal as JSON: `{"error": {"code", "message"}}` with the error's status."""
    return JSONResponse(error.to_dict(), status_code=error.status, headers=challenge(error))


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (BodyTooLarge) more than `limit` bytes without reading it all."""
    declared = request.headers.get("content-length")
    if (
        declared is not None
        and declared.isascii()  # str.isdigit() alone takes '²' and '٣'
        and declared.isdigit()
        and (len(declared) > 18 or int(declared) > limit)
    ):
        raise BodyTooLarge(f"the body is larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def verify_request(verifier: Verifier, request: Request) -> Event:
    """The verified event of `request`, or the VerificationError saying why not (logged)."""
    try:
        body = await read_body(request, verifier.max_body_bytes)
        return await verifier.averify(request.headers, body)
    except VerificationError as exc:
        client = request.client.host if request.client else "-"
        log.info("refused a delivery from %s: %s %s: %s", client, exc.status, exc.code, exc)
        raise


def verified_event(verifier: Verifier) -> Callable[[Request], Awaitable[Event]]:
    """A FastAPI dependency giving the verified event, or failing with the error's status."""

    async def dependency(request: Request) -> Event:
        try:
            return await verify_request(verifier, request)
        except VerificationError as exc:
            raise HTTPException(exc.status, exc.message, headers=challenge(exc) or None) from exc

    return dependency


def receiver_endpoint(
    verifier: Verifier, handler: Handler
) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette endpoint: verify, then `handler(event)`; a refusal answers its status."""

    async def endpoint(request: Request) -> Response:
        try:
            event = await verify_request(verifier, request)
        except VerificationError as exc:
            return error_response(exc)
        result = handler(event)
        if inspect.isawaitable(result):
            result = await result
        return result if isinstance(result, Response) else Response(status_code=204)

    return endpoint
