"""The PostgreSQL store under driver failures: every one becomes a StoreError, the broken
connection is discarded, reads are retried, and an append whose outcome is uncertain is
looked up in the log instead of being guessed (issue: a push that hung when connections died).

The failures are real: backends killed with ``pg_terminate_backend``, a row lock held by
another session, a pool with its only connection taken, a store whose database is gone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import orjson
import pytest

from gateway.errors import CommitUnknown, StoreError
from gateway.protocol import NewEvent
from gateway.store.postgres import PostgresStore
from tests.helpers.postgres import POSTGRES_DSN, drop_schema, fresh_schema, require_postgres
from tests.helpers.timeouts import TIMEOUT_UNIT

pytestmark = pytest.mark.postgres


def _events(start: int, n: int, tag: str = "a") -> list[NewEvent]:
    return [
        NewEvent(
            seq,
            seq - 1,
            orjson.dumps(
                {"name": "e", "args": {"tag": tag}, "seqNum": seq, "parentSeqNum": seq - 1}
            ),
        )
        for seq in range(start, start + n)
    ]


@pytest.fixture(name="schema")
async def _schema() -> AsyncIterator[str]:
    await require_postgres()
    schema = fresh_schema()
    yield schema
    await drop_schema(schema)


@pytest.fixture(name="admin")
async def _admin() -> AsyncIterator[asyncpg.Connection]:
    await require_postgres()
    conn = await asyncpg.connect(POSTGRES_DSN, timeout=5)
    yield conn
    await conn.close()


async def _open(schema: str, **kwargs: float) -> PostgresStore:
    store = PostgresStore(POSTGRES_DSN, schema=schema, **kwargs)  # type: ignore[arg-type]
    await store.open()
    return store


async def _kill_pool(admin: asyncpg.Connection, schema: str) -> int:
    """Terminate the server side of every pool connection of ``schema``; how many."""
    killed = await admin.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
        f"gateway:{schema}:pool",
    )
    return int(killed)


async def _lock_store_row(admin: asyncpg.Connection, schema: str, store_id: str) -> None:
    """Hold the row lock of ``store_id`` in ``admin``'s transaction: appends wait for it."""
    query = f'SELECT 1 FROM "{schema}".stores WHERE store_id = $1 FOR UPDATE'  # noqa: S608 - our schema name
    await admin.execute(query, store_id)


async def _wait_blocked(admin: asyncpg.Connection, schema: str) -> int:
    """The pid of the pool backend of ``schema`` that waits for a lock (bounded poll)."""
    deadline = time.monotonic() + 5 * TIMEOUT_UNIT
    while time.monotonic() < deadline:
        pid = await admin.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 "
            "AND wait_event_type = 'Lock'",
            f"gateway:{schema}:pool",
        )
        if pid is not None:
            return int(pid)
        await asyncio.sleep(0.01)  # polling the server's view: there is no event to await
    raise AssertionError("the append never waited for the row lock")


async def test_reads_survive_killed_connections(schema: str, admin: asyncpg.Connection) -> None:
    """After every pool connection is killed, reads succeed (retried on a fresh connection)."""
    store = await _open(schema, pool_min=2, pool_max=2)
    try:
        await store.ensure_store("s")
        await store.append("s", 0, _events(1, 3), 1)
        assert await _kill_pool(admin, schema) >= 1
        assert [e.seq for e in await store.read("s", 0, 3, 10)] == [1, 2, 3]
        await _kill_pool(admin, schema)
        assert await store.count("s", 0, 3) == 3
        await _kill_pool(admin, schema)
        assert await store.heads(["s"]) == {"s": 3}
        await _kill_pool(admin, schema)
        await store.check()
    finally:
        await store.close()


async def test_append_killed_before_commit_fails_and_the_store_goes_on(
    schema: str, admin: asyncpg.Connection
) -> None:
    """An append whose connection dies while it waits (before COMMIT) raises StoreError,
    writes nothing, and the next append on the same head succeeds."""
    store = await _open(schema, pool_min=1, pool_max=2)
    try:
        await store.ensure_store("s")
        async with admin.transaction():
            await _lock_store_row(admin, schema, "s")
            append = asyncio.create_task(store.append("s", 0, _events(1, 2), 1))
            pid = await _wait_blocked(admin, schema)
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
            with pytest.raises(StoreError) as failed:
                await asyncio.wait_for(append, 10 * TIMEOUT_UNIT)
        assert not isinstance(failed.value, CommitUnknown)
        assert await store.count("s", 0, 10) == 0
        await store.append("s", 0, _events(1, 2), 2)
        assert [e.seq for e in await store.read("s", 0, 10, 10)] == [1, 2]
    finally:
        await store.close()


async def test_cancelled_append_leaves_no_broken_connection(
    schema: str, admin: asyncpg.Connection
) -> None:
    """An append cancelled mid-query (its connection busy) does not poison the pool: with a
    single pooled connection, the next operations still succeed."""
    store = await _open(schema, pool_min=1, pool_max=1)
    try:
        await store.ensure_store("s")
        async with admin.transaction():
            await _lock_store_row(admin, schema, "s")
            append = asyncio.create_task(store.append("s", 0, _events(1, 1), 1))
            await _wait_blocked(admin, schema)
            append.cancel()
            with pytest.raises(asyncio.CancelledError):
                await append
        await store.append("s", 0, _events(1, 1), 2)
        assert await store.count("s", 0, 10) == 1
    finally:
        await store.close()


async def test_exhausted_pool_is_a_store_error_not_a_hang(schema: str) -> None:
    """With the only pooled connection taken, a read fails with StoreError within the
    connect timeout instead of waiting forever."""
    store = await _open(schema, pool_min=1, pool_max=1, connect_timeout=0.2)
    try:
        async with store._connection():
            with pytest.raises(StoreError):
                await asyncio.wait_for(store.count("s", 0, 1), 5 * TIMEOUT_UNIT)
    finally:
        await store.close()


async def test_commit_outcome_is_read_from_the_log(schema: str) -> None:
    """Whether a batch committed is decided by its last event, bytes and write time: ours,
    another writer's, or absent; and "unknown" when the log cannot be read."""
    store = await _open(schema, connect_timeout=0.1)
    try:
        await store.ensure_store("s")
        batch = _events(1, 2)
        await store.append("s", 0, batch, 1234)
        assert await store._committed("s", batch[-1], 1234) is True
        assert await store._committed("s", batch[-1], 999) is False
        assert await store._committed("s", _events(2, 1, tag="other")[0], 1234) is False
        assert await store._committed("s", _events(3, 1)[0], 1234) is False
    finally:
        await store.close()
    assert await store._committed("s", batch[-1], 1234) is None
