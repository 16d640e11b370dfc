"""The application factory: routes, the error mapping, and the storage's lifetime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from tidings import __version__
from tidings.api import access, errors, events, health, types
from tidings.api.state import AppState
from tidings.config import Settings
from tidings.cursors import CursorCodec
from tidings.storage import open_storage
from tidings.storage.base import Storage

CURSOR_KEY = "cursor-key"


def create_app(settings: Settings | None = None, storage: Storage | None = None) -> FastAPI:
    """A tidings API application; it opens (and migrates) the storage when it starts."""
    settings = settings or Settings.from_env()
    storage = storage or open_storage(settings.database_url, settings.sqlite_synchronous)
    state = AppState(settings=settings, storage=storage)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await storage.open()
        state.cursors = CursorCodec(await storage.secret(CURSOR_KEY))
        try:
            yield
        finally:
            await storage.close()

    app = FastAPI(
        title="tidings",
        version=__version__,
        summary="Events service: audit log in, CloudEvents webhooks out.",
        lifespan=lifespan,
    )
    app.state.tidings = state
    errors.install(app)
    for module in (events, access, types, health):
        app.include_router(module.router)
    return app
