"""`/v1/types`: the catalog of event types."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from tidings.api.auth import authenticate
from tidings.catalog import builtin_types
from tidings.errors import NotFound

router = APIRouter(prefix="/v1/types", tags=["types"])


@router.get("")
async def list_types(request: Request) -> dict[str, Any]:
    """Every known event type, with its description and example."""
    await authenticate(request)
    return {"types": [event_type.to_dict() for event_type in builtin_types().values()]}


@router.get("/{event_type}")
async def get_type(request: Request, event_type: str) -> dict[str, Any]:
    """One event type."""
    await authenticate(request)
    found = builtin_types().get(event_type)
    if found is None:
        raise NotFound(f"no event type {event_type!r} in the catalog")
    return found.to_dict()
