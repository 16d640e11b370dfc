"""The application factory: routes, the error mapping, and the lifetime of storage and worker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from tidings import __version__
from tidings.api import access, errors, events, health, subscriptions, types, webhooks, wellknown
from tidings.api.request_ids import RequestIds
from tidings.api.state import AppState
from tidings.api.storable import RefuseNulInUrl
from tidings.config import Settings
from tidings.cursors import CursorCodec
from tidings.issuer import resolve_issuer_url
from tidings.runtime import Delivery
from tidings.storage import storage_for
from tidings.storage.base import Storage

log = structlog.get_logger("tidings.api")

CURSOR_KEY = "cursor-key"


def create_app(settings: Settings | None = None, storage: Storage | None = None) -> FastAPI:
    """A tidings API application; on start it opens (and migrates) the storage and starts the worker."""
    settings = settings or Settings.from_env()
    storage = storage or storage_for(settings)
    state = AppState(settings=settings, storage=storage)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await storage.open()
        delivery = None
        try:
            state.cursors = CursorCodec(await storage.secret(CURSOR_KEY))
            state.delivery_cursors = state.cursors.for_listing("deliveries")
            state.issuer_url = await resolve_issuer_url(
                storage, settings.issuer, settings.public_url
            )
            delivery = await Delivery.start(
                settings,
                storage,
                state.issuer_url,
                state.metrics,
                state.clock,
                run_worker=settings.run_worker,
                housekeeping=settings.housekeeping,
            )
            state.issuer, state.transport, state.worker = (
                delivery.issuer,
                delivery.transport,
                delivery.worker,
            )
            log.info("the service has started", issuer=state.issuer_url)
            yield
        finally:
            if delivery is not None:
                await delivery.stop()
            await storage.close()
        log.info("the service has stopped")

    app = FastAPI(
        title="tidings",
        version=__version__,
        summary="Events service: audit log in, CloudEvents webhooks out.",
        lifespan=lifespan,
    )
    app.state.tidings = state
    errors.install(app)
    app.add_middleware(RefuseNulInUrl)
    app.add_middleware(RequestIds)  # added last, so outside the others: their answers get it too

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = errors.document_errors(
                get_openapi(
                    title=app.title, version=app.version, summary=app.summary, routes=app.routes
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    for module in (events, subscriptions, webhooks, access, types, wellknown, health):
        app.include_router(module.router)
    return app
