"""SQLite backend: one file, WAL, a single writer thread with group commit, reader threads.

Blocking SQLite calls never run on the event loop. Writes go through one dedicated thread
that drains its queue into a single transaction (group commit): concurrent pushes to
different stores share one fsync, and each push sits in its own SAVEPOINT so one failure
cannot affect another. ``append`` returns only after COMMIT, with ``synchronous=FULL`` by
default, so an acked push survives a crash or power loss. Reads run on a small pool of
threads with their own read-only connections; WAL lets them proceed during writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from gateway.protocol import NewEvent
from gateway.store import (
    HeadMismatch,
    StoredEvent,
    StoreError,
    StoreMeta,
    Writer,
    new_backend_id,
)
from gateway.store.sqlite_catalog import NEXT_SID, SqliteCatalog
from gateway.store.sqlite_checkpoint import Checkpointer
from gateway.store.sqlite_schema import migrate

logger = logging.getLogger(__name__)

T = TypeVar("T")

# The database file inside the data directory.
DATABASE_NAME = "gateway.sqlite3"
# Most appends a writer transaction groups together.
MAX_GROUP = 256
# Seconds between WAL checkpoints.
CHECKPOINT_INTERVAL = 1.0


class _Job:
    __slots__ = ("fn", "future")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], future: asyncio.Future[Any]):
        self.fn = fn
        self.future = future


_Results = list[tuple[asyncio.Future[Any], Any, BaseException | None]]


def _resolve(results: _Results) -> None:
    for future, value, error in results:
        if future.done():  # the waiter was cancelled; the write happened regardless
            continue
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)


class SqliteStore(SqliteCatalog):
    """The default backend (``[store] backend = "sqlite"``)."""

    def __init__(self, data_dir: str | Path, *, synchronous: str = "full", readers: int = 2):
        self.path = Path(data_dir) / DATABASE_NAME
        self._synchronous = synchronous.upper()
        self._readers = readers
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._read_pool: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._read_conns: list[sqlite3.Connection] = []
        self._read_conns_lock = threading.Lock()
        self._sids: dict[str, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._purger: asyncio.Task[None] | None = None
        self._checkpointer = Checkpointer(self.path, CHECKPOINT_INTERVAL)
        # Set after each completed checkpoint (operators' tests wait on it).
        self.checkpointed = self._checkpointer.done

    # -- lifecycle ------------------------------------------------------------------------

    def _connect(self, *, readonly: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        conn.execute("PRAGMA busy_timeout = 30000")
        if readonly:
            conn.execute("PRAGMA query_only = ON")
        else:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            # Checkpoints run in their own thread (Checkpointer): an automatic one would
            # run inside some push's COMMIT and stall every push queued behind it.
            conn.execute("PRAGMA wal_autocheckpoint = 0")
        return conn

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ready: asyncio.Future[None] = self._loop.create_future()
        self._writer = threading.Thread(
            target=self._writer_main, args=(ready,), name="sqlite-writer", daemon=True
        )
        self._writer.start()
        await ready
        self._read_pool = ThreadPoolExecutor(self._readers, thread_name_prefix="sqlite-read")
        self._checkpointer.start()
        self._start_purge()  # what a reset or delete left when the server stopped

    async def close(self) -> None:
        if self._closed:
            return
        await self._stop_purge()
        self._closed = True
        await asyncio.to_thread(self._checkpointer.stop)
        if self._writer is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._writer.join)
        if self._read_pool is not None:
            self._read_pool.shutdown(wait=True)
        with self._read_conns_lock:
            for conn in self._read_conns:
                conn.close()
            self._read_conns.clear()

    # -- writer thread --------------------------------------------------------------------

    def _writer_main(self, ready: asyncio.Future[None]) -> None:
        loop = self._loop
        assert loop is not None
        try:
            conn = self._connect(readonly=False)
            migrate(conn, self.path)
        except BaseException as exc:
            failed: _Results = [(ready, None, _as_store_error(exc))]
            loop.call_soon_threadsafe(_resolve, failed)
            return
        opened: _Results = [(ready, None, None)]
        loop.call_soon_threadsafe(_resolve, opened)
        try:
            self._writer_loop(conn, loop)
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.close()

    def _writer_loop(self, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            jobs = [first]
            while len(jobs) < MAX_GROUP:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                jobs.append(job)
            results = self._run_group(conn, jobs)
            loop.call_soon_threadsafe(_resolve, results)

    def _run_group(self, conn: sqlite3.Connection, jobs: list[_Job]) -> _Results:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            error = _as_store_error(exc)
            return [(job.future, None, error) for job in jobs]
        if len(jobs) == 1:
            # Alone in its transaction: no savepoint needed, a failure rolls back everything.
            (job,) = jobs
            try:
                value = job.fn(conn)
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                return [(job.future, None, _as_store_error(exc))]
            return self._commit(conn, [(job.future, value, None)])
        outcomes: _Results = []
        for job in jobs:
            conn.execute("SAVEPOINT job")
            try:
                value = job.fn(conn)
            except BaseException as exc:
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
                outcomes.append((job.future, None, _as_store_error(exc)))
            else:
                conn.execute("RELEASE job")
                outcomes.append((job.future, value, None))
        return self._commit(conn, outcomes)

    def _commit(self, conn: sqlite3.Connection, outcomes: _Results) -> _Results:
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            error = _as_store_error(exc)
            return [(future, None, error) for future, _, _ in outcomes]
        return outcomes

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed or self._loop is None:
            raise StoreError("store is closed")
        future: asyncio.Future[T] = self._loop.create_future()
        self._queue.put(_Job(fn, future))
        return await future

    # -- readers --------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect(readonly=True)
            self._local.conn = conn
            with self._read_conns_lock:
                self._read_conns.append(conn)
        return conn

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed or self._read_pool is None or self._loop is None:
            raise StoreError("store is closed")

        def run() -> T:
            try:
                return fn(self._reader())
            except sqlite3.Error as exc:
                raise _as_store_error(exc) from exc

        return await self._loop.run_in_executor(self._read_pool, run)

    # -- the contract ---------------------------------------------------------------------

    async def ensure_store(self, store_id: str) -> StoreMeta:
        def create(conn: sqlite3.Connection) -> tuple[int, str, int]:
            row = conn.execute(
                "SELECT id, backend_id, head FROM stores WHERE store_id = ?", (store_id,)
            ).fetchone()
            if row is None:
                (sid,) = conn.execute(NEXT_SID).fetchone()
                conn.execute(
                    "INSERT INTO stores (id, store_id, backend_id, head, created_ms) "
                    "VALUES (?, ?, ?, 0, ?)",
                    (sid, store_id, new_backend_id(), int(time.time() * 1000)),
                )
                row = conn.execute(
                    "SELECT id, backend_id, head FROM stores WHERE id = ?", (sid,)
                ).fetchone()
            return int(row[0]), str(row[1]), int(row[2])

        def lookup(conn: sqlite3.Connection) -> tuple[int, str, int] | None:
            row = conn.execute(
                "SELECT id, backend_id, head FROM stores WHERE store_id = ?", (store_id,)
            ).fetchone()
            return None if row is None else (int(row[0]), str(row[1]), int(row[2]))

        found = await self._read(lookup)
        sid, backend_id, head = found if found is not None else await self._write(create)
        self._sids[store_id] = sid
        return StoreMeta(backend_id=backend_id, head=head)

    def forget(self, store_id: str) -> None:
        self._sids.pop(store_id, None)

    async def _sid(self, store_id: str) -> int:
        sid = self._sids.get(store_id)
        if sid is None:
            await self.ensure_store(store_id)
            sid = self._sids[store_id]
        return sid

    async def append(
        self,
        store_id: str,
        expected_head: int,
        events: Sequence[NewEvent],
        created_ms: int,
        writer: Writer | None = None,
    ) -> None:
        if not events:
            return
        sid = await self._sid(store_id)
        new_head = events[-1].seq
        size = sum(len(e.data) for e in events)

        def append(conn: sqlite3.Connection) -> None:
            # The head check and the head move in one statement; the inserts follow in the
            # same transaction (a duplicate seqNum rolls the whole job back).
            moved = conn.execute(
                "UPDATE stores SET head = ?, bytes = bytes + ?, last_ms = ? "
                "WHERE id = ? AND head = ?",
                (new_head, size, created_ms, sid, expected_head),
            ).rowcount
            if moved != 1:
                row = conn.execute("SELECT head FROM stores WHERE id = ?", (sid,)).fetchone()
                if row is None:  # reset or deleted since the sid was looked up
                    raise StoreError(f"store {store_id!r} was reset or deleted")
                raise HeadMismatch(int(row[0]))
            writer_id = _writer_id(conn, writer)
            conn.executemany(
                "INSERT INTO events (sid, seq, parent, created_ms, data, writer) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(sid, e.seq, e.parent, created_ms, e.data, writer_id) for e in events],
            )

        await self._write(append)

    async def read(
        self, store_id: str, after: int, upto: int, limit: int, *, writers: bool = False
    ) -> list[StoredEvent]:
        sid = await self._sid(store_id)

        def read(conn: sqlite3.Connection) -> list[StoredEvent]:
            rows = conn.execute(
                "SELECT seq, parent, created_ms, data FROM events "
                "WHERE sid = ? AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
                (sid, after, upto, limit),
            ).fetchall()
            return [StoredEvent(r[0], r[1], r[2], r[3]) for r in rows]

        def read_attributed(conn: sqlite3.Connection) -> list[StoredEvent]:
            rows = conn.execute(
                "SELECT e.seq, e.parent, e.created_ms, e.data, w.subject, w.instance_id, w.reason "
                "FROM events e LEFT JOIN writers w ON w.id = e.writer "
                "WHERE e.sid = ? AND e.seq > ? AND e.seq <= ? ORDER BY e.seq LIMIT ?",
                (sid, after, upto, limit),
            ).fetchall()
            return [
                StoredEvent(r[0], r[1], r[2], r[3], None if r[4] is None else Writer(*r[4:7]))
                for r in rows
            ]

        return await self._read(read_attributed if writers else read)

    async def count(self, store_id: str, after: int, upto: int) -> int:
        sid = await self._sid(store_id)

        def count(conn: sqlite3.Connection) -> int:
            (n,) = conn.execute(
                "SELECT count(*) FROM events WHERE sid = ? AND seq > ? AND seq <= ?",
                (sid, after, upto),
            ).fetchone()
            return int(n)

        return await self._read(count)

    async def check(self) -> None:
        def ping(conn: sqlite3.Connection) -> None:
            conn.execute("SELECT 1 FROM stores LIMIT 1").fetchall()

        await self._read(ping)


def _writer_id(conn: sqlite3.Connection, writer: Writer | None) -> int:
    """The id of ``writer`` in ``writers`` (added on first use); 0 for none. Not cached: a
    savepoint rolled back with its push would leave a cached id pointing nowhere."""
    if writer is None:
        return 0
    key = (writer.subject, writer.instance_id, writer.reason)
    query = "SELECT id FROM writers WHERE subject = ? AND instance_id = ? AND reason = ?"
    row = conn.execute(query, key).fetchone()
    if row is None:
        conn.execute("INSERT INTO writers (subject, instance_id, reason) VALUES (?, ?, ?)", key)
        row = conn.execute(query, key).fetchone()
    return int(row[0])


def _as_store_error(exc: BaseException) -> BaseException:
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, sqlite3.IntegrityError):
        return StoreError(f"constraint violated: {exc}")
    if isinstance(exc, sqlite3.Error):
        return StoreError(f"sqlite: {exc}")
    return exc
