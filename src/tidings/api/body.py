"""Reading request bodies under a size limit, refusing oversize ones before reading them whole."""

from __future__ import annotations

from starlette.requests import Request

from tidings.errors import BadRequest, PayloadTooLarge


def _describe(limit: int) -> str:
    return f"{limit // (1 << 20)} MiB" if limit >= 1 << 20 else f"{limit} bytes"


async def read_limited(request: Request, limit: int, what: str = "request body") -> bytes:
    """The body, or PayloadTooLarge as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError as exc:
            raise BadRequest("Content-Length is not a number") from exc
        if size > limit:
            raise PayloadTooLarge(
                f"the {what} is {size} bytes; at most {_describe(limit)} is accepted"
            )
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise PayloadTooLarge(f"the {what} exceeds {_describe(limit)}")
        chunks.append(chunk)
    return b"".join(chunks)
