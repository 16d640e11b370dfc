"""SQLite connections for asyncio: group-committed writes, a reader pool, a checkpointer.

Writes. Every write is a function of the one writer connection. The writes
waiting when the engine gets to them form a group: they run one after the
other in one transaction, on the event loop's own thread, and the group's
COMMIT (its fsync) runs on a thread of its own, during which the loop goes on
serving requests and the next group gathers. Only then is each caller
answered: under load many requests share one fsync, and a caller never hears
of a write that is not on disk. The statements run on the loop's thread on
purpose: run on a writer thread, every statement let go of Python's global
lock and waited to take it back from the busy event loop, which cost a
single-event ingest about a fifth of its rate. A write that may run long (a
replay, a retention batch) is marked `long` and runs on the commit thread
instead, alone in its transaction, so that it never holds up the loop.

A group is not wrapped in savepoints: a savepoint copies every page it
changes to a journal first, which more than doubled the cost of an ingest.
Instead a group is optimistic: if one of its writes fails, the transaction is
rolled back, that write runs again alone (its failure reaches its caller
only), and the others run again together. A write is a function of the
connection, so running it again does the same; a failing write (a 409 on a
conflicting event, say: the rare case) costs its group one more run.

The group's BEGIN IMMEDIATE takes the write lock at once when no other process holds it (the
usual case), without waiting: the writer's busy timeout is zero. When another process does (a
`tidings worker` of its own, a retention run from cron, a backup), the BEGIN waits for it on
the commit thread, up to the busy timeout, while the loop goes on; past it, every write of the
group fails with SQLite's "database is locked", which the API answers 503 (`is_busy`).

Reads run on their own connections in a thread pool; WAL lets them read while
a write is under way. Checkpoints (copying the WAL back into the database file,
and its fsync) run on a thread of their own too: the writer's automatic
checkpoint is only a backstop for a WAL that grows past 64 MiB.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
WriteFn = Callable[[sqlite3.Connection], Any]
GROUP_SIZE = 500
_CHECKPOINT_EVERY_S = 0.25
_STOP_WAIT_S = 30.0  # writes of another event loop, finishing
_BACKSTOP_CHECKPOINT_PAGES = 16384  # 64 MiB of 4 KiB pages
_BUSY_TIMEOUT_S = 10.0  # how long a statement waits for another connection's lock
_WAL_RETRY_S = 0.01


def is_busy(exc: sqlite3.Error) -> bool:
    """Whether `exc` says that another connection holds a lock this one waited for in vain
    (SQLITE_BUSY, SQLITE_LOCKED and their extended codes): an error of the moment."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def connect(path: str, synchronous: str = "FULL", readonly: bool = False) -> sqlite3.Connection:
    """An SQLite connection in WAL mode, in autocommit (explicit transactions only)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
    if not readonly:
        _enter_wal(conn)
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


def _enter_wal(conn: sqlite3.Connection) -> None:
    """Put the database in WAL mode (a no-op once it is). While other connections are opening a
    new file at the same moment, the switch can report the database locked without waiting for
    the busy timeout (the lock it needs is not taken through the busy handler): it is tried
    again until the timeout has passed."""
    deadline = time.monotonic() + _BUSY_TIMEOUT_S
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(_WAL_RETRY_S)


class _Job:
    __slots__ = ("fn", "future", "long", "loop", "size")

    def __init__(
        self,
        fn: WriteFn,
        future: asyncio.Future[Any],
        loop: asyncio.AbstractEventLoop,
        long: bool,
        size: int,
    ):
        self.fn, self.future, self.loop, self.long, self.size = fn, future, loop, long, size

    def settle(self, ok: bool, value: Any) -> None:
        """Answer the caller, on its own loop."""
        if self.loop is _running_loop():
            _settle(self.future, ok, value)
        else:
            self.loop.call_soon_threadsafe(_settle, self.future, ok, value)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.cancelled():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class _JobFailed(Exception):
    """A job of a group failed: the group's transaction was rolled back."""

    def __init__(self, index: int):
        super().__init__(index)
        self.index = index


class SQLiteEngine:
    """Group-commits writes (see the module's docstring) and runs reads on a pool."""

    def __init__(self, path: str, synchronous: str = "FULL", readers: int = 4):
        self.path = path
        self.synchronous = synchronous
        self._reader_count = readers
        self._conn: sqlite3.Connection | None = None
        self._pending: list[_Job] = []
        self._draining = False
        self._drainer: asyncio.Task[None] | None = None
        self._drained = threading.Event()
        self._drained.set()
        self._lock = threading.Lock()
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="tidings-sqlite-commit")
        self._local = threading.local()
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="tidings-sqlite-read")
        self._reader_conns: list[sqlite3.Connection] = []
        self._written = threading.Event()  # set after a commit, for the checkpointer
        self._stopping = threading.Event()
        self._checkpointer: threading.Thread | None = None
        self._letting_go: concurrent.futures.Future[None] | None = None

    def start(self) -> None:
        """Open the writer connection (setting WAL mode) and start the checkpointer."""
        conn = connect(self.path, self.synchronous)
        conn.execute(f"PRAGMA wal_autocheckpoint = {_BACKSTOP_CHECKPOINT_PAGES}")
        conn.execute("PRAGMA busy_timeout = 0")  # waits happen in _begin_waiting only
        self._conn = conn
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="tidings-sqlite-commit")
        self._readers = ThreadPoolExecutor(
            self._reader_count, thread_name_prefix="tidings-sqlite-read"
        )
        self._stopping.clear()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="tidings-sqlite-checkpoint", daemon=True
        )
        self._checkpointer.start()

    async def stop(self) -> None:
        """Finish the writes under way, then close every connection."""
        drainer = self._drainer
        if drainer is not None and not drainer.done():
            if drainer.get_loop() is asyncio.get_running_loop():
                await asyncio.shield(drainer)
            else:
                await asyncio.to_thread(self._drained.wait, _STOP_WAIT_S)
        if self._checkpointer is not None:
            self._stopping.set()
            self._written.set()
            self._checkpointer.join()
            self._checkpointer = None
        self._committer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        with self._lock:
            for reader in self._reader_conns:
                reader.close()
            self._reader_conns.clear()
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    async def write(
        self, fn: Callable[[sqlite3.Connection], T], long: bool = False, size: int = 1
    ) -> T:
        """Run `fn` in a write transaction; return its result once committed.

        `long`: the write may take a while (more than a few milliseconds); it runs off the
        event loop, alone in its transaction. `size`: how many rows it writes, about; a
        group holds writes of at most GROUP_SIZE rows (and any one write), so that a group
        holds up the loop for a few milliseconds at most.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if self._conn is None:
                raise RuntimeError("the SQLite engine is not started")
            self._pending.append(_Job(fn, future, loop, long, size))
            start = not self._draining
            if start:
                self._draining = True
                self._drained.clear()
        if start:
            self._drainer = loop.create_task(self._drain())
            self._drainer.add_done_callback(self._drain_ended)
        return await future

    async def _drain(self) -> None:
        """Commit groups of the pending writes until none is left."""
        loop = asyncio.get_running_loop()
        while True:
            # One turn of the loop first lets the requests it has already read reach the
            # queue: without it the first write after a commit made a group of its own, and
            # paid a commit's every page alone (a quarter of the groups held one write).
            await asyncio.sleep(0)
            jobs = self._take_group()
            if not jobs:
                break
            if jobs[0].long:
                ok, value = await loop.run_in_executor(self._committer, self._run_alone, jobs[0])
                jobs[0].settle(ok, value)
            else:
                try:
                    outcomes = await self._commit_group(jobs)
                except Exception as exc:  # a defect: answer the callers rather than lose them
                    outcomes = [(False, exc)] * len(jobs)
                for job, (ok, value) in zip(jobs, outcomes, strict=True):
                    job.settle(ok, value)
            self._written.set()

    def _drain_ended(self, drainer: asyncio.Task[None]) -> None:
        """A drain that did not finish (cancelled with its loop, say) lets the next write
        start another, which takes the writes still pending."""
        if drainer.cancelled() or drainer.exception() is not None:
            with self._lock:
                self._stop_draining()

    def _take_group(self) -> list[_Job]:
        """The next group of pending writes (a long one alone); none when no write is left."""
        with self._lock:
            if not self._pending:
                self._stop_draining()
                return []
            if self._pending[0].long:
                return [self._pending.pop(0)]
            count, rows = 0, 0
            for job in self._pending:
                if job.long or (count and rows + job.size > GROUP_SIZE):
                    break
                count, rows = count + 1, rows + job.size
            jobs = self._pending[:count]
            del self._pending[:count]
            return jobs

    def _stop_draining(self) -> None:
        self._draining = False
        self._drained.set()

    async def _commit_group(self, jobs: list[_Job]) -> list[tuple[bool, Any]]:
        """Run the jobs in one transaction on this thread and commit it on the commit thread;
        a job that fails runs again alone and the others again together (see the docstring)."""
        loop = asyncio.get_running_loop()
        outcomes: dict[int, tuple[bool, Any]] = {}
        pending = list(range(len(jobs)))
        while pending:
            try:
                await self._begin(loop)
            except sqlite3.Error as exc:  # locked out past the busy timeout, or the file failed
                outcomes.update(dict.fromkeys(pending, (False, exc)))
                break
            try:
                results = self._run_together([(i, jobs[i]) for i in pending])
            except _JobFailed as failed:
                job = jobs[failed.index]
                outcomes[failed.index] = await loop.run_in_executor(
                    self._committer, self._run_alone, job
                )
                pending.remove(failed.index)
                continue
            try:
                await loop.run_in_executor(self._committer, self._commit)
            except Exception as exc:  # the commit itself failed: nobody's write is durable
                self._rollback()
                results = dict.fromkeys(pending, (False, exc))
            outcomes.update(results)
            break
        return [outcomes[i] for i in range(len(jobs))]

    def _writer(self) -> sqlite3.Connection:
        assert self._conn is not None, "the SQLite engine is not started"
        return self._conn

    async def _begin(self, loop: asyncio.AbstractEventLoop) -> None:
        """BEGIN IMMEDIATE for a group: here, at once, when the write lock is free; else on the
        commit thread, waiting for another process to let it go (see the module's docstring)."""
        if self._letting_go is not None:  # a wait cut short: its transaction is being let go
            await asyncio.wrap_future(self._letting_go)
            self._letting_go = None
        try:
            self._writer().execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if not is_busy(exc):
                raise
            try:
                await loop.run_in_executor(self._committer, self._begin_waiting)
            except asyncio.CancelledError:  # the thread may still take the lock: let it go
                self._letting_go = self._committer.submit(self._rollback)  # next on that thread
                raise

    def _begin_waiting(self) -> None:
        """BEGIN IMMEDIATE, waiting up to the busy timeout for the write lock."""
        conn = self._writer()
        conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
        try:
            conn.execute("BEGIN IMMEDIATE")
        finally:
            conn.execute("PRAGMA busy_timeout = 0")

    def _run_together(self, jobs: list[tuple[int, _Job]]) -> dict[int, tuple[bool, Any]]:
        """Run the jobs in the transaction begun (uncommitted); if one fails, roll back and
        raise _JobFailed."""
        conn = self._writer()
        results: dict[int, tuple[bool, Any]] = {}
        for index, job in jobs:
            try:
                results[index] = (True, job.fn(conn))
            except Exception as exc:
                self._rollback()
                raise _JobFailed(index) from exc
        return results

    def _commit(self) -> None:
        self._writer().execute("COMMIT")

    def _run_alone(self, job: _Job) -> tuple[bool, Any]:
        """Run one job in a transaction of its own, committed."""
        conn = self._writer()
        try:
            self._begin_waiting()
            result = job.fn(conn)
            conn.execute("COMMIT")
        except Exception as exc:
            self._rollback()
            return False, exc
        return True, result

    def _rollback(self) -> None:
        conn = self._writer()
        if conn.in_transaction:
            conn.execute("ROLLBACK")

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
