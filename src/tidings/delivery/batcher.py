"""Writing many small items together: a batch is written when it is full, `delay_s` after its
first item, or when told to (nothing more is coming), whichever comes first."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """Gathers items for `write`, which answers one result per item, in order."""

    def __init__(
        self, write: Callable[[list[T]], Awaitable[list[R]]], size: int, delay_s: float
    ) -> None:
        self._write = write
        self._size = size
        self._delay_s = delay_s
        self._items: list[T] = []
        self._futures: list[asyncio.Future[R]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._writing: set[asyncio.Task[None]] = set()

    def add(self, item: T) -> asyncio.Future[R]:
        """Queue `item`; the future is its result once its batch is written."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._items.append(item)
        self._futures.append(future)
        if len(self._items) >= self._size:
            self.flush()
        elif self._timer is None:
            self._timer = loop.call_later(self._delay_s, self.flush)
        return future

    def flush(self) -> None:
        """Start writing what is queued, now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._items:
            return
        items, futures = self._items, self._futures
        self._items, self._futures = [], []
        task = asyncio.ensure_future(self._written(items, futures))
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)

    async def _written(self, items: list[T], futures: list[asyncio.Future[R]]) -> None:
        try:
            results = await self._write(items)
        except asyncio.CancelledError:
            for future in futures:
                future.cancel()
            raise
        except Exception as exc:
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            return
        for future, result in zip(futures, results, strict=True):
            if not future.done():
                future.set_result(result)
