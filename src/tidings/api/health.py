"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tidings.api.errors import error_response
from tidings.api.state import state_of

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
async def readyz(request: Request) -> dict[str, str] | Response:
    """The database answers and its migrations are current."""
    if await state_of(request).storage.ready():
        return {"status": "ready"}
    return error_response(
        503, "not_ready", "the database is unreachable or its schema is not current"
    )


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Metrics in the Prometheus text format."""
    state = state_of(request)
    now = state.clock()
    due, in_flight, oldest = await state.storage.delivery_backlog(now)
    state.metrics.backlog(due, in_flight, 0.0 if oldest is None else max(0, now - oldest) / 1e9)
    registry = state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
