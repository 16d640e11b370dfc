"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from tidings.api.errors import error_response
from tidings.api.state import state_of
from tidings.errors import NOT_READY
from tidings.metrics import PROBE_WAIT_S

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
async def readyz(request: Request) -> dict[str, str] | Response:
    """The database answers and its migrations are current."""
    if await state_of(request).storage.ready_within(PROBE_WAIT_S):
        return {"status": "ready"}
    return error_response(503, "not_ready", NOT_READY)


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Metrics in the Prometheus text format."""
    state = state_of(request)
    body = await state.metrics.exposition(state.storage, state.clock())
    return Response(body, media_type=CONTENT_TYPE_LATEST)
