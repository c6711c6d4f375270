"""PostgreSQL backend: one event log shared by several gateway nodes (asyncpg).

- ``events`` is keyed by (store_id, seq), so the database itself refuses a second event with
  the same seqNum; ``stores`` holds each store's backendId and head. An append is one
  transaction: a conditional ``UPDATE stores SET head = new WHERE head = expected`` (which
  row-locks the store, so concurrent appends from different nodes serialise and exactly one
  wins), the inserts, and a ``pg_notify`` announcing the new head. The ack follows COMMIT.
- Every node LISTENs on the channel. A notification names the store and the new head; the
  engine reads the missing range from the table, so late, reordered, duplicated or lost
  notifications cannot cause a gap or a duplicate (lost ones are found by :meth:`heads`
  polling and after every reconnect; a pull whose cursor is ahead of the node makes it
  catch up to the table first).
- The listening connection is watched: when it drops, the node keeps its clients, retries
  with backoff, reports not-ready, and reconciles every loaded store once it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
import orjson

from gateway.protocol import NewEvent
from gateway.store import HeadMismatch, StoredEvent, StoreError, StoreMeta, new_backend_id

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,47}")

CommitListener = Callable[[str, int], None]

_MIGRATIONS: dict[int, str] = {
    1: """
        CREATE TABLE IF NOT EXISTS stores (
            store_id    text   PRIMARY KEY,
            backend_id  text   NOT NULL,
            head        bigint NOT NULL,
            created_ms  bigint NOT NULL
        );
        CREATE TABLE IF NOT EXISTS events (
            store_id    text   NOT NULL,
            seq         bigint NOT NULL,
            parent      bigint NOT NULL,
            created_ms  bigint NOT NULL,
            data        bytea  NOT NULL,
            PRIMARY KEY (store_id, seq)
        );
    """,
}


def _store_error(exc: BaseException) -> StoreError:
    if isinstance(exc, StoreError):
        return exc
    return StoreError(f"postgres: {type(exc).__name__}: {exc}")


class PostgresStore:
    """The multi-node backend (``[store] backend = "postgres"``)."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "gateway",
        pool_min: int = 1,
        pool_max: int = 10,
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
        self._listening = asyncio.Event()
        self._closed = False

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
                await self._migrate(conn)
            finally:
                await conn.close()
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self._pool_min,
                max_size=self._pool_max,
                timeout=self._connect_timeout,
                server_settings=self._settings("pool"),
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

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            # One migrator at a time across nodes.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self.schema)
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            await conn.execute(f'SET LOCAL search_path TO "{self.schema}"')
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version int NOT NULL)")
            current = await conn.fetchval("SELECT max(version) FROM schema_version") or 0
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"schema {self.schema} is at version {current}, newer than this gateway"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                await conn.execute(_MIGRATIONS[version])
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
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

    def set_commit_listener(
        self, on_commit: CommitListener, on_reconnect: Callable[[], None]
    ) -> None:
        """``on_commit(store_id, head)`` for every announced commit (any node, this one too);
        ``on_reconnect()`` after the listening connection came back (notifications may have
        been lost meanwhile)."""
        self._on_commit = on_commit
        self._on_reconnect = on_reconnect

    # -- listening ------------------------------------------------------------------------

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        try:
            message = orjson.loads(payload)  # type: ignore[arg-type]
            store_id, head = message["s"], int(message["h"])
        except (ValueError, KeyError, TypeError):
            logger.warning("ignoring a malformed notification")
            return
        if self._on_commit is not None:
            self._on_commit(store_id, head)

    async def _listen_forever(self) -> None:
        delay = 0.1
        first = True
        while not self._closed:
            lost = asyncio.Event()
            try:
                conn = await self._connect()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(self.channel, self._notified)
            except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
                logger.warning("postgres listener: cannot connect (%s); retrying", exc)
                await asyncio.sleep(delay * (1 + random.random()))  # noqa: S311 - jitter
                delay = min(delay * 2, 10.0)
                continue
            self._listener = conn
            self._listening.set()
            delay = 0.1
            if not first:
                logger.info("postgres listener reconnected; reconciling stores")
            if not first and self._on_reconnect is not None:
                self._on_reconnect()
            first = False
            try:
                await lost.wait()
            finally:
                self._listening.clear()
                self._listener = None
                with contextlib.suppress(Exception):
                    conn.terminate()
            logger.warning("postgres listener connection lost")

    # -- the contract ---------------------------------------------------------------------

    def _require_pool(self) -> asyncpg.Pool:
        if self._closed or self._pool is None:
            raise StoreError("store is closed")
        return self._pool

    async def ensure_store(self, store_id: str) -> StoreMeta:
        pool = self._require_pool()
        try:
            row = await pool.fetchrow(
                "SELECT backend_id, head FROM stores WHERE store_id = $1", store_id
            )
            if row is None:
                await pool.execute(
                    "INSERT INTO stores (store_id, backend_id, head, created_ms) "
                    "VALUES ($1, $2, 0, $3) ON CONFLICT (store_id) DO NOTHING",
                    store_id,
                    new_backend_id(),
                    int(time.time() * 1000),
                )
                row = await pool.fetchrow(
                    "SELECT backend_id, head FROM stores WHERE store_id = $1", store_id
                )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise _store_error(exc) from exc
        assert row is not None
        return StoreMeta(backend_id=row["backend_id"], head=int(row["head"]))

    async def append(
        self, store_id: str, expected_head: int, events: Sequence[NewEvent], created_ms: int
    ) -> None:
        if not events:
            return
        pool = self._require_pool()
        new_head = events[-1].seq
        notice = orjson.dumps({"s": store_id, "h": new_head}).decode()
        try:
            async with pool.acquire() as conn, conn.transaction():
                updated = await conn.fetchval(
                    "UPDATE stores SET head = $3 WHERE store_id = $1 AND head = $2 RETURNING head",
                    store_id,
                    expected_head,
                    new_head,
                )
                if updated is None:
                    head = await conn.fetchval(
                        "SELECT head FROM stores WHERE store_id = $1", store_id
                    )
                    if head is None:
                        raise StoreError(f"store {store_id!r} does not exist")
                    raise HeadMismatch(int(head))
                await conn.execute(
                    "INSERT INTO events (store_id, seq, parent, created_ms, data) "
                    "SELECT $1, s, p, $2, d FROM unnest($3::bigint[], $4::bigint[], $5::bytea[]) "
                    "AS t(s, p, d)",
                    store_id,
                    created_ms,
                    [e.seq for e in events],
                    [e.parent for e in events],
                    [e.data for e in events],
                )
                await conn.execute("SELECT pg_notify($1, $2)", self.channel, notice)
        except StoreError:
            raise
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise _store_error(exc) from exc

    async def read(self, store_id: str, after: int, upto: int, limit: int) -> list[StoredEvent]:
        pool = self._require_pool()
        try:
            rows = await pool.fetch(
                "SELECT seq, parent, created_ms, data FROM events "
                "WHERE store_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4",
                store_id,
                after,
                upto,
                limit,
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise _store_error(exc) from exc
        return [StoredEvent(r["seq"], r["parent"], r["created_ms"], bytes(r["data"])) for r in rows]

    async def count(self, store_id: str, after: int, upto: int) -> int:
        pool = self._require_pool()
        try:
            value = await pool.fetchval(
                "SELECT count(*) FROM events WHERE store_id = $1 AND seq > $2 AND seq <= $3",
                store_id,
                after,
                upto,
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise _store_error(exc) from exc
        return int(value)

    async def heads(self, store_ids: Sequence[str]) -> dict[str, int]:
        """Current heads of ``store_ids`` (to find commits whose notification was lost)."""
        pool = self._require_pool()
        try:
            rows = await pool.fetch(
                "SELECT store_id, head FROM stores WHERE store_id = ANY($1::text[])",
                list(store_ids),
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise _store_error(exc) from exc
        return {r["store_id"]: int(r["head"]) for r in rows}

    def forget(self, store_id: str) -> None:
        """Nothing is cached per store."""

    async def check(self) -> None:
        pool = self._require_pool()
        if not self._listening.is_set():
            raise StoreError("postgres listener is not connected")
        try:
            await pool.fetchval("SELECT 1")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise _store_error(exc) from exc
