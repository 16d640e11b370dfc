"""What the routes share: settings, storage, cursor codec, clock, issuer, transport and worker."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.requests import Request

from tidings.catalog import Catalog
from tidings.config import Settings
from tidings.cursors import CursorCodec
from tidings.metrics import Metrics
from tidings.ratelimit import RateLimiter
from tidings.storage.base import Storage
from tidings.tokens import TokenCache

if TYPE_CHECKING:
    from tidings.delivery.transport import Transport
    from tidings.delivery.worker import Worker
    from tidings.issuer import Issuer


@dataclass(kw_only=True)
class AppState:
    """The service's running parts, built once at startup."""

    settings: Settings
    storage: Storage
    cursors: CursorCodec = field(default_factory=lambda: CursorCodec(b""))  # the events'
    delivery_cursors: CursorCodec = field(default_factory=lambda: CursorCodec(b"deliveries"))
    clock: Callable[[], int] = time.time_ns
    metrics: Metrics = field(default_factory=Metrics)
    issuer_url: str = ""
    issuer: Issuer | None = None
    transport: Transport | None = None
    worker: Worker | None = None
    catalog: Catalog = field(init=False)
    rate_limiter: RateLimiter = field(default_factory=RateLimiter)
    tokens: TokenCache = field(default_factory=TokenCache)

    def __post_init__(self) -> None:
        self.catalog = Catalog(self.storage, self.settings.catalog_file)

    def wake_worker(self) -> None:
        """Tell the in-process worker (if any) that deliveries are due."""
        if self.worker is not None:
            self.worker.wake()


def state_of(request: Request) -> AppState:
    """The AppState of the app serving `request`."""
    state: AppState = request.app.state.tidings
    return state
