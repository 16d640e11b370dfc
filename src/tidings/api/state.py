"""What the routes share: the settings, the storage, the cursor codec and the clock."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.requests import Request

from tidings.config import Settings
from tidings.cursors import CursorCodec
from tidings.metrics import Metrics
from tidings.storage.base import Storage


@dataclass(kw_only=True)
class AppState:
    """The service's running parts, built once at startup."""

    settings: Settings
    storage: Storage
    cursors: CursorCodec = field(default_factory=lambda: CursorCodec(b""))
    clock: Callable[[], int] = time.time_ns
    metrics: Metrics = field(default_factory=Metrics)


def state_of(request: Request) -> AppState:
    """The AppState of the app serving `request`."""
    state: AppState = request.app.state.tidings
    return state
