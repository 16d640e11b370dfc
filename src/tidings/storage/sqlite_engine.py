"""SQLite connections for asyncio: one writer thread that group-commits, and a reader pool.

Every write runs on the writer thread. It takes all the writes that are
waiting, runs them in one transaction, commits once, and only then answers
each caller: under load many requests share one fsync, and a caller never
hears of a write that is not on disk. Readers run on their own connections in
a thread pool; WAL lets them read while the writer writes.

The writes of a group are not wrapped in savepoints: a savepoint copies every
page it changes to a journal first, which more than doubled the cost of an
ingest. Instead a group is optimistic: if one of its writes fails, the whole
transaction is rolled back, that write runs again alone (its failure reaches
its caller only), and the others run again together. A write is a
function of the connection, so running it again does the same. A failing
write costs its group one more run (failures, such as a 409 on a conflicting
event, are the rare case), never a transaction and an fsync for each write.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
WriteFn = Callable[[sqlite3.Connection], Any]
_MAX_GROUP = 512
_CHECKPOINT_EVERY_S = 0.25
_BACKSTOP_CHECKPOINT_PAGES = 16384  # 64 MiB of 4 KiB pages


def connect(path: str, synchronous: str = "FULL", readonly: bool = False) -> sqlite3.Connection:
    """An SQLite connection in WAL mode, in autocommit (explicit transactions only)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 10000")
    if not readonly:
        conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA foreign_keys = ON")
    # Ingest touches a page of each of a dozen indexes per event, and lists and stats read
    # large index ranges: a page cache of 64 MiB keeps them off the disk.
    conn.execute("PRAGMA cache_size = -65536")
    if readonly:
        conn.execute("PRAGMA query_only = ON")
        # Memory-mapped reads keep long scans out of copying.
        conn.execute("PRAGMA mmap_size = 1073741824")
    return conn


class _Job:
    __slots__ = ("fn", "future", "loop")

    def __init__(self, fn: WriteFn, future: asyncio.Future[Any], loop: asyncio.AbstractEventLoop):
        self.fn, self.future, self.loop = fn, future, loop


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.cancelled():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def _settle_all(settled: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in settled:
        _settle(future, ok, value)


class SQLiteEngine:
    """Runs writes on one group-committing thread and reads on a pool."""

    def __init__(self, path: str, synchronous: str = "FULL", readers: int = 4):
        self.path = path
        self.synchronous = synchronous
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._local = threading.local()
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="tidings-sqlite-read")
        self._reader_conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._written = threading.Event()  # set by the writer after a commit
        self._stopping = threading.Event()
        self._checkpointer: threading.Thread | None = None

    def start(self) -> None:
        """Start the writer thread (which opens the database and sets WAL mode) and the
        checkpointer."""
        started = threading.Event()
        self._writer = threading.Thread(
            target=self._write_loop, args=(started,), name="tidings-sqlite-write", daemon=True
        )
        self._writer.start()
        started.wait()
        self._stopping.clear()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="tidings-sqlite-checkpoint", daemon=True
        )
        self._checkpointer.start()

    def stop(self) -> None:
        """Finish pending writes, then close every connection."""
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
            self._writer = None
        if self._checkpointer is not None:
            self._stopping.set()
            self._written.set()
            self._checkpointer.join()
            self._checkpointer = None
        self._readers.shutdown(wait=True)
        with self._lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` in a write transaction; return its result once committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Job(fn, future, loop))
        return await future

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` on a reader connection in the pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._run_read, fn)

    def read_at_once(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a short read (a primary-key lookup) right here, on the caller's thread.

        Sending a lookup of a few microseconds to the pool costs more than the lookup; this
        is for those only, never for scans.
        """
        return self._run_read(fn)

    def _run_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, self.synchronous, readonly=True)
            self._local.conn = conn
            with self._lock:
                self._reader_conns.append(conn)
        return fn(conn)

    def _checkpoint_loop(self) -> None:
        """Checkpoint the WAL after writes, at most every _CHECKPOINT_EVERY_S, until stopped."""
        conn = connect(self.path, self.synchronous)
        try:
            while not self._stopping.is_set():
                self._written.wait()
                self._written.clear()
                if self._stopping.wait(_CHECKPOINT_EVERY_S):
                    break
                # PASSIVE: never waits for the writer or a reader; what it cannot copy now,
                # the next round copies.
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            conn.close()

    def _write_loop(self, started: threading.Event) -> None:
        conn = connect(self.path, self.synchronous)
        conn.execute(f"PRAGMA wal_autocheckpoint = {_BACKSTOP_CHECKPOINT_PAGES}")
        started.set()
        running = True
        while running:
            first = self._queue.get()
            if first is None:
                break
            jobs = [first]
            while len(jobs) < _MAX_GROUP:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    running = False
                    break
                jobs.append(job)
            self._commit_group(conn, jobs)
            self._written.set()
        conn.close()

    @classmethod
    def _commit_group(cls, conn: sqlite3.Connection, jobs: list[_Job]) -> None:
        outcomes: dict[int, tuple[bool, Any]] = {}
        pending = list(range(len(jobs)))
        while pending:
            try:
                outcomes.update(cls._run_together(conn, [(i, jobs[i]) for i in pending]))
                break
            except _JobFailed as failed:  # rolled back: that job alone, then the others again
                outcomes[failed.index] = cls._run_alone(conn, jobs[failed.index])
                pending.remove(failed.index)
        # One wake-up of each waiting event loop per group, not one per write.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for i, job in enumerate(jobs):
            ok, value = outcomes[i]
            by_loop.setdefault(job.loop, []).append((job.future, ok, value))
        for loop, settled in by_loop.items():
            loop.call_soon_threadsafe(_settle_all, settled)

    @staticmethod
    def _run_together(
        conn: sqlite3.Connection, jobs: list[tuple[int, _Job]]
    ) -> dict[int, tuple[bool, Any]]:
        """Run the jobs in one transaction; if one fails, roll back and raise _JobFailed."""
        results: dict[int, tuple[bool, Any]] = {}
        try:
            conn.execute("BEGIN IMMEDIATE")
            for index, job in jobs:
                try:
                    results[index] = (True, job.fn(conn))
                except Exception as exc:
                    raise _JobFailed(index) from exc
            conn.execute("COMMIT")
        except _JobFailed:
            _rollback(conn)
            raise
        except Exception as exc:  # the commit itself failed: nobody's write is durable
            _rollback(conn)
            return {index: (False, exc) for index, _ in jobs}
        return results

    @staticmethod
    def _run_alone(conn: sqlite3.Connection, job: _Job) -> tuple[bool, Any]:
        """Run one job in a transaction of its own."""
        try:
            conn.execute("BEGIN IMMEDIATE")
            result = job.fn(conn)
            conn.execute("COMMIT")
        except Exception as exc:
            _rollback(conn)
            return False, exc
        return True, result


class _JobFailed(Exception):
    """A job of a group failed: the group's transaction was rolled back."""

    def __init__(self, index: int):
        super().__init__(index)
        self.index = index


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")
