"""PostgreSQL backend: one event log shared by several gateway nodes (asyncpg).

- ``events`` is keyed by (store_id, seq), so the database itself refuses a second event with
  the same seqNum; ``stores`` holds each store's backendId and head. An append is a
  conditional ``UPDATE stores SET head = new WHERE head = expected`` (which row-locks the
  store, so concurrent appends from different nodes serialise and exactly one wins) and the
  inserts; concurrent appends share one transaction, each in its own SAVEPOINT, and one
  ``pg_notify`` announces every new head of the group (:mod:`gateway.store.pg_group`). The
  ack follows COMMIT.
- Every node LISTENs on the channel. A notification names stores, new heads and, when they
  fit, the events (:mod:`gateway.store.pg_notice`); the engine reads what they do not continue
  from the table, so late, reordered, duplicated or lost notifications cannot cause a gap or
  a duplicate (lost ones are found by :meth:`heads` polling and after every reconnect; a pull
  whose cursor is ahead of the node makes it catch up to the table first).
- The listening connection is watched: when it drops, the node keeps its clients, retries
  with backoff, reports not-ready, and reconciles every loaded store once it is back.
- Every driver failure (a connection lost mid-operation, one left in a bad state, an
  exhausted pool, a statement timeout, an asyncpg error of a kind nobody expected) becomes a
  :class:`StoreError`, and the connection it happened on is discarded, never reused. Reads
  are retried once on a fresh connection. An append is never retried: when it fails in a way
  that leaves its COMMIT's outcome unknown, the log is asked whether the batch is there
  (:meth:`PostgresStore._committed`), so a committed batch is acked and a lost one reported
  failed; when even that cannot be told, :class:`CommitUnknown` says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

from gateway.errors import GatewayError, StoreError
from gateway.protocol import NewEvent
from gateway.store import StoredEvent, StoreMeta, Writer, new_backend_id
from gateway.store.pg_catalog import PostgresCatalog
from gateway.store.pg_group import Append, GroupCommitter
from gateway.store.pg_listen import PostgresListener
from gateway.store.pg_schema import migrate

logger = logging.getLogger(__name__)

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,47}")

CommitListener = Callable[[str, int], None]
T = TypeVar("T")

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Conn = PoolConnectionProxy[Any]

# Writer ids kept in memory (one per subject, instance and reason seen).
MAX_CACHED_WRITERS = 10_000

# Attempts of a read (the first and one retry on a fresh connection).
READ_ATTEMPTS = 2


def _store_error(exc: BaseException) -> StoreError:
    if isinstance(exc, StoreError):
        return exc
    return StoreError(f"postgres: {type(exc).__name__}: {exc}")


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """A pooled connection's session needs no reset (no LISTEN, SET, cursor or lock)."""


def _driver_failure(exc: BaseException) -> bool:
    """Anything but our own verdicts: every exception the driver or the network raise."""
    return isinstance(exc, Exception) and not isinstance(exc, GatewayError)


class PostgresStore(PostgresCatalog, PostgresListener):
    """The multi-node backend (``[store] backend = "postgres"``)."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "gateway",
        pool_min: int = 1,
        pool_max: int = 10,
        commit_groups: int | None = None,
        statement_timeout: float = 10.0,
        connect_timeout: float = 5.0,
    ) -> None:
        if not _IDENTIFIER.fullmatch(schema):
            raise ValueError(f"invalid schema name {schema!r}")
        self.dsn = dsn
        self.schema = schema
        self.channel = f"{schema}_commits"
        self._pool_min = pool_min
        self._pool_max = pool_max
        self._statement_timeout = statement_timeout
        self._connect_timeout = connect_timeout
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._listen_task: asyncio.Task[None] | None = None
        self._on_commit: CommitListener | None = None
        self._on_reconnect: Callable[[], None] | None = None
        self._on_retired: Callable[[str, str], None] | None = None
        # Names this node in its reset/delete announcements (it acts on its own directly).
        self.node = secrets.token_hex(8)
        self._listening = asyncio.Event()
        self._closed = False
        self._writer_ids: dict[tuple[str, str, str], int] = {}
        # Groups written at once: at most half the pool; the rest serves reads.
        half = pool_max // 2
        groups = half if commit_groups is None else min(commit_groups, half)
        self._group = GroupCommitter(self, max_groups=groups)

    # -- lifecycle ------------------------------------------------------------------------

    def _settings(self, role: str) -> dict[str, str]:
        return {
            "search_path": self.schema,
            "statement_timeout": str(int(self._statement_timeout * 1000)),
            "application_name": f"gateway:{self.schema}:{role}",
        }

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(
            self.dsn, timeout=self._connect_timeout, server_settings=self._settings("listener")
        )

    async def open(self) -> None:
        try:
            conn = await self._connect_admin()
            try:
                await migrate(conn, self.schema)
            finally:
                await conn.close()
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self._pool_min,
                max_size=self._pool_max,
                timeout=self._connect_timeout,
                server_settings=self._settings("pool"),
                # asyncpg still rolls back an open transaction on release; its default reset
                # query (UNLISTEN, RESET ALL, CLOSE ALL, advisory unlock: a round trip per
                # release) undoes nothing pooled connections do here.
                reset=_keep_session,
            )
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            raise _store_error(exc) from exc
        self._listen_task = asyncio.get_running_loop().create_task(self._listen_forever())
        try:
            # Ready means able to hear other nodes' commits too.
            await asyncio.wait_for(self._listening.wait(), 2 * self._connect_timeout)
        except TimeoutError:
            await self.close()
            raise StoreError("postgres: the listening connection did not come up") from None

    async def _connect_admin(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.dsn, timeout=self._connect_timeout)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._group.close()
        if self._listen_task is not None:
            self._listen_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listen_task
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close(timeout=2)
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pool.close(), 5)

    # -- the contract ---------------------------------------------------------------------

    def _require_pool(self) -> asyncpg.Pool:
        if self._closed or self._pool is None:
            raise StoreError("store is closed")
        return self._pool

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Conn]:
        """A pooled connection; one that fails mid-operation is discarded, never reused.

        A failure (or a cancellation) may leave it inside a transaction or with a query in
        flight ("another operation is in progress"): terminating it makes the pool open a
        fresh one instead of handing the broken one to the next request. The pool's other
        idle connections are expired too, so a retry does not meet a dead sibling.
        """
        pool = self._require_pool()
        try:
            conn = await pool.acquire(timeout=self._connect_timeout)
        except Exception as exc:  # pool exhausted, cannot connect, closed pool...
            raise _store_error(exc) from exc
        try:
            yield conn
        except BaseException as exc:
            if _driver_failure(exc) or isinstance(exc, asyncio.CancelledError):
                # (asyncpg may have released a connection that closed under it already.)
                with contextlib.suppress(Exception):
                    conn.terminate()
                # What killed this connection (a server restart, pg_terminate_backend, a cut
                # network path) most likely killed its siblings: replace them all lazily.
                await pool.expire_connections()
            raise
        finally:
            with contextlib.suppress(Exception):
                await pool.release(conn, timeout=self._connect_timeout)

    async def _read(self, operation: Callable[[Conn], Awaitable[T]]) -> T:
        """Run a read; a driver failure is retried once on a fresh connection."""
        for attempt in range(READ_ATTEMPTS):
            try:
                async with self._connection() as conn:
                    return await operation(conn)
            except Exception as exc:
                if not _driver_failure(exc) or attempt + 1 == READ_ATTEMPTS:
                    raise _store_error(exc) from exc
                logger.info("postgres read failed (%s); retrying on a fresh connection", exc)
        raise AssertionError("unreachable")  # pragma: no cover

    async def ensure_store(self, store_id: str) -> StoreMeta:
        async def load(conn: Conn) -> Any:
            row = await conn.fetchrow(
                "SELECT backend_id, head FROM stores WHERE store_id = $1", store_id
            )
            if row is None:
                # Idempotent (ON CONFLICT), so safe to run again after a failure.
                await conn.execute(
                    "INSERT INTO stores (store_id, backend_id, head, created_ms) "
                    "VALUES ($1, $2, 0, $3) ON CONFLICT (store_id) DO NOTHING",
                    store_id,
                    new_backend_id(),
                    int(time.time() * 1000),
                )
                row = await conn.fetchrow(
                    "SELECT backend_id, head FROM stores WHERE store_id = $1", store_id
                )
            return row

        row = await self._read(load)
        if row is None:
            raise StoreError(f"store {store_id!r} could not be created")
        return StoreMeta(backend_id=row["backend_id"], head=int(row["head"]))

    async def append(
        self,
        store_id: str,
        expected_head: int,
        events: Sequence[NewEvent],
        created_ms: int,
        writer: Writer | None = None,
    ) -> None:
        """Written by the next group (:mod:`gateway.store.pg_group`), answered after COMMIT."""
        if not events:
            return
        self._require_pool()
        job = self._group.submit(store_id, expected_head, events, created_ms, writer, chained=False)
        await self.settle(job)

    def enqueue(
        self,
        store_id: str,
        expected_head: int,
        events: Sequence[NewEvent],
        created_ms: int,
        writer: Writer | None = None,
    ) -> Append:
        """Queue an append now, without waiting (pipelining): a store's appends are written
        in the order they were queued, each only once the one before it committed, and each
        fails when the one before it failed. :meth:`settle` waits for its outcome."""
        self._require_pool()
        return self._group.submit(store_id, expected_head, events, created_ms, writer)

    async def settle(self, job: Append) -> None:
        """The outcome of a queued append (after COMMIT), as :meth:`append` reports it."""
        try:
            await asyncio.shield(job.future)
        except asyncio.CancelledError:
            # A group shared with other appends goes on: its outcome is the log's.
            self._group.abandon(job)
            raise

    async def _writer_id(self, conn: Conn, writer: Writer | None) -> int:
        """The id of ``writer`` in ``writers`` (added on first use; 0 for none). Run outside
        any transaction, so a row found or added is there for good (rows are never deleted)
        and its id is cached."""
        if writer is None:
            return 0
        key = (writer.subject, writer.instance_id, writer.reason)
        known = self._writer_ids.get(key)
        if known is not None:
            return known
        query = "SELECT id FROM writers WHERE subject = $1 AND instance_id = $2 AND reason = $3"
        found = await conn.fetchval(query, *key)
        if found is None:
            await conn.execute(
                "INSERT INTO writers (subject, instance_id, reason) VALUES ($1, $2, $3) "
                "ON CONFLICT DO NOTHING",
                *key,
            )
            found = await conn.fetchval(query, *key)
        if len(self._writer_ids) >= MAX_CACHED_WRITERS:
            self._writer_ids.clear()
        self._writer_ids[key] = int(found)
        return int(found)

    async def _committed(self, store_id: str, last: NewEvent, created_ms: int) -> bool | None:
        """Whether a batch whose last event is ``last`` is in the log (None: cannot tell).

        A batch is written whole or not at all, so its last event decides. Another node may
        have written that seqNum since: the bytes and the time of writing must be ours too.
        """
        deadline = asyncio.get_running_loop().time() + 2 * self._connect_timeout
        delay = 0.05
        while True:
            try:
                row = await self._read(
                    lambda conn: conn.fetchrow(
                        "SELECT data, created_ms FROM events WHERE store_id = $1 AND seq = $2",
                        store_id,
                        last.seq,
                    )
                )
            except StoreError as exc:
                if asyncio.get_running_loop().time() + delay > deadline:
                    logger.error("cannot tell whether an append to %r committed: %s", store_id, exc)
                    return None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            if row is None:
                return False
            return bytes(row["data"]) == last.data and int(row["created_ms"]) == created_ms

    async def read(
        self, store_id: str, after: int, upto: int, limit: int, *, writers: bool = False
    ) -> list[StoredEvent]:
        if writers:
            return await self._read_attributed(store_id, after, upto, limit)
        rows = await self._read(
            lambda conn: conn.fetch(
                "SELECT seq, parent, created_ms, data FROM events "
                "WHERE store_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4",
                store_id,
                after,
                upto,
                limit,
            )
        )
        return [StoredEvent(r["seq"], r["parent"], r["created_ms"], bytes(r["data"])) for r in rows]

    async def read_ranges(
        self, ranges: Sequence[tuple[str, int, int]]
    ) -> dict[str, list[StoredEvent]]:
        """Events ``(after, upto]`` of several stores in one query, by store, in order."""
        rows = await self._read(
            lambda conn: conn.fetch(
                "SELECT e.store_id, e.seq, e.parent, e.created_ms, e.data "
                "FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS r(s, a, u) "
                "JOIN events e ON e.store_id = r.s AND e.seq > r.a AND e.seq <= r.u "
                "ORDER BY e.store_id, e.seq",
                [r[0] for r in ranges],
                [r[1] for r in ranges],
                [r[2] for r in ranges],
            )
        )
        out: dict[str, list[StoredEvent]] = {}
        for r in rows:
            out.setdefault(r["store_id"], []).append(
                StoredEvent(r["seq"], r["parent"], r["created_ms"], bytes(r["data"]))
            )
        return out

    async def _read_attributed(
        self, store_id: str, after: int, upto: int, limit: int
    ) -> list[StoredEvent]:
        rows = await self._read(
            lambda conn: conn.fetch(
                "SELECT e.seq, e.parent, e.created_ms, e.data, w.subject, w.instance_id, "
                "w.reason FROM events e LEFT JOIN writers w ON w.id = e.writer "
                "WHERE e.store_id = $1 AND e.seq > $2 AND e.seq <= $3 ORDER BY e.seq LIMIT $4",
                store_id,
                after,
                upto,
                limit,
            )
        )
        return [
            StoredEvent(
                r["seq"],
                r["parent"],
                r["created_ms"],
                bytes(r["data"]),
                None
                if r["subject"] is None
                else Writer(r["subject"], r["instance_id"], r["reason"]),
            )
            for r in rows
        ]

    async def count(self, store_id: str, after: int, upto: int) -> int:
        value = await self._read(
            lambda conn: conn.fetchval(
                "SELECT count(*) FROM events WHERE store_id = $1 AND seq > $2 AND seq <= $3",
                store_id,
                after,
                upto,
            )
        )
        return int(value)

    async def heads(self, store_ids: Sequence[str]) -> dict[str, int]:
        """Current heads of ``store_ids`` (to find commits whose notification was lost)."""
        rows = await self._read(
            lambda conn: conn.fetch(
                "SELECT store_id, head FROM stores WHERE store_id = ANY($1::text[])",
                list(store_ids),
            )
        )
        return {r["store_id"]: int(r["head"]) for r in rows}

    def forget(self, store_id: str) -> None:
        """Nothing is cached per store."""

    async def check(self) -> None:
        self._require_pool()
        if not self._listening.is_set():
            raise StoreError("postgres listener is not connected")
        await self._read(lambda conn: conn.fetchval("SELECT 1"))
