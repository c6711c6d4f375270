"""The operator's catalog (list, show, reset, delete), run against every backend."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from gateway.store import EventStore, HeadMismatch, StoreError, Writer
from gateway.store.sqlite import DATABASE_NAME, SqliteStore
from gateway.store.sqlite_schema import SCHEMA_VERSION
from tests.helpers.postgres import POSTGRES_DSN, drop_schema, fresh_schema, require_postgres
from tests.store.conftest import StoreFactory, events

FIXTURES = Path(__file__).parent / "fixtures"


async def fill(store: EventStore, store_id: str, n: int, created_ms: int = 1) -> int:
    """Create ``store_id`` with ``n`` events; returns their size in bytes."""
    meta = await store.ensure_store(store_id)
    batch = events(meta.head + 1, n)
    await store.append(store_id, meta.head, batch, created_ms)
    return sum(len(e.data) for e in batch)


class TestCatalogContract:
    async def test_empty_catalog(self, store: EventStore) -> None:
        assert await store.list_stores() == []
        assert await store.store_info("nope") is None
        assert await store.list_stores() == [], "store_info never creates a store"

    async def test_info_counts_head_bytes_and_times(self, store: EventStore) -> None:
        before = int(time.time() * 1000)
        size = await fill(store, "s", 3, created_ms=1_700_000_000_000)
        size += await fill(store, "s", 2, created_ms=1_700_000_000_500)
        info = await store.store_info("s")
        assert info is not None
        meta = await store.ensure_store("s")
        assert (info.store_id, info.backend_id, info.head) == ("s", meta.backend_id, 5)
        assert info.bytes == size
        assert info.last_write_ms == 1_700_000_000_500
        assert before <= info.created_ms <= int(time.time() * 1000)
        await store.ensure_store("empty")
        empty = await store.store_info("empty")
        assert empty is not None
        assert (empty.head, empty.bytes, empty.last_write_ms) == (0, 0, None)

    async def test_list_filters_by_prefix_and_pages_in_order(self, store: EventStore) -> None:
        names = ["b", "a", "app-2", "app-1", "ap", "c", "app-3"]
        for name in names:
            await store.ensure_store(name)
        listed = [info.store_id for info in await store.list_stores()]
        assert listed == sorted(names)
        assert [i.store_id for i in await store.list_stores(prefix="app-")] == [
            "app-1",
            "app-2",
            "app-3",
        ]
        first = await store.list_stores(prefix="a", limit=2)
        assert [i.store_id for i in first] == ["a", "ap"]
        rest = await store.list_stores(prefix="a", after=first[-1].store_id, limit=10)
        assert [i.store_id for i in rest] == ["app-1", "app-2", "app-3"]
        assert await store.list_stores(prefix="zz") == []
        # A prefix is matched literally, not as a pattern.
        assert await store.list_stores(prefix="a%") == []
        assert await store.list_stores(prefix="a_p") == []

    async def test_reset_empties_the_log_with_a_new_backend_id(self, store: EventStore) -> None:
        await fill(store, "s", 4)
        await fill(store, "other", 2)
        old = await store.ensure_store("s")
        meta = await store.reset_store("s")
        assert meta is not None
        assert meta.head == 0
        assert meta.backend_id != old.backend_id
        assert await store.ensure_store("s") == meta
        assert await store.read("s", 0, 100, 100) == []
        info = await store.store_info("s")
        assert info is not None
        assert (info.head, info.bytes, info.last_write_ms) == (0, 0, None)
        # The log starts again at seqNum 1; the other store is untouched.
        await store.append("s", 0, events(1, 2), 5)
        assert [r.seq for r in await store.read("s", 0, 100, 100)] == [1, 2]
        assert [r.seq for r in await store.read("other", 0, 100, 100)] == [1, 2]
        assert await store.reset_store("unknown") is None
        assert await store.store_info("unknown") is None

    async def test_an_append_expecting_the_old_head_fails_after_reset(
        self, store: EventStore
    ) -> None:
        await fill(store, "s", 3)
        await store.reset_store("s")
        with pytest.raises((HeadMismatch, StoreError)):
            await store.append("s", 3, events(4, 1), 1)
        assert await store.read("s", 0, 100, 100) == []

    async def test_reset_and_append_racing_leave_a_whole_log(self, store: EventStore) -> None:
        """A reset never leaves half a batch: the append lands whole before it, or fails."""
        await fill(store, "s", 3)
        append = store.append("s", 3, events(4, 50), 1)
        results = await asyncio.gather(append, store.reset_store("s"), return_exceptions=True)
        assert results[0] is None or isinstance(results[0], HeadMismatch | StoreError)
        assert await store.read("s", 0, 1000, 1000) == []
        assert (await store.ensure_store("s")).head == 0

    async def test_delete_removes_the_store_and_its_log(self, store: EventStore) -> None:
        await fill(store, "s", 3)
        await fill(store, "keep", 1)
        old = await store.ensure_store("s")
        assert await store.delete_store("s") is True
        assert await store.store_info("s") is None
        assert [i.store_id for i in await store.list_stores()] == ["keep"]
        assert await store.delete_store("s") is False
        # The next use creates a new, empty store.
        fresh = await store.ensure_store("s")
        assert fresh.head == 0
        assert fresh.backend_id != old.backend_id
        assert await store.read("s", 0, 100, 100) == []
        await store.append("s", 0, events(1, 1), 1)
        assert [r.seq for r in await store.read("s", 0, 100, 100)] == [1]

    async def test_create_with_a_backend_id_and_rename(self, store: EventStore) -> None:
        assert await store.create_store("staging", "given-backend-id") is True
        assert await store.create_store("staging", "other") is False
        assert (await store.ensure_store("staging")).backend_id == "given-backend-id"
        await store.append("staging", 0, events(1, 3), 7)
        await fill(store, "taken", 1)
        assert await store.rename_store("staging", "taken") is False
        assert [r.seq for r in await store.read("staging", 0, 10, 10)] == [1, 2, 3]
        assert await store.rename_store("staging", "final") is True
        assert await store.store_info("staging") is None
        info = await store.store_info("final")
        assert info is not None
        assert (info.backend_id, info.head, info.last_write_ms) == ("given-backend-id", 3, 7)
        assert [r.seq for r in await store.read("final", 0, 10, 10)] == [1, 2, 3]
        assert await store.read("staging", 0, 10, 10) == []
        await store.append("final", 3, events(4, 1), 8)
        assert await store.rename_store("missing", "elsewhere") is False

    async def test_appends_record_their_writer(self, store: EventStore) -> None:
        alice = Writer("alice", "phone-1", "jwt")
        service = Writer("svc", "", "bypass")
        await store.ensure_store("s")
        await store.append("s", 0, events(1, 2), 10, alice)
        await store.append("s", 2, events(3, 1), 11, service)
        await store.append("s", 3, events(4, 1), 12)
        await store.append("s", 4, events(5, 1), 13, alice)
        rows = await store.read("s", 0, 10, 10, writers=True)
        assert [r.writer for r in rows] == [alice, alice, service, None, alice]
        assert [r.created_ms for r in rows] == [10, 10, 11, 12, 13]
        plain = await store.read("s", 0, 10, 10)
        assert [r.writer for r in plain] == [None] * 5, "the sync path reads no attribution"
        assert [r.data for r in plain] == [r.data for r in rows]

    async def test_reset_and_delete_survive_reopen(self, open_store: StoreFactory) -> None:
        first = await open_store()
        await fill(first, "r", 3)
        await fill(first, "d", 3)
        meta = await first.reset_store("r")
        await first.delete_store("d")
        await first.close()
        second = await open_store()
        assert await second.ensure_store("r") == meta
        assert await second.read("r", 0, 100, 100) == []
        assert [i.store_id for i in await second.list_stores()] == ["r"]


# -- SQLite specifics ------------------------------------------------------------------------


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


async def test_sqlite_purges_in_the_background_and_never_reuses_a_purging_log_id(
    tmp_path: Path,
) -> None:
    """Left-over events of a deleted store (a purge interrupted by a stop) never show up in a
    new store, and the purge resumes on open."""
    store = SqliteStore(tmp_path)
    await store.open()
    await fill(store, "a", 2)
    await store.close()
    with raw(tmp_path / DATABASE_NAME) as conn:
        # What an interrupted purge of a deleted store (log id 7, the highest) leaves behind.
        conn.execute("INSERT INTO purge (sid) VALUES (7)")
        conn.executemany(
            "INSERT INTO events (sid, seq, parent, created_ms, data) VALUES (7, ?, ?, 1, x'00')",
            [(seq, seq - 1) for seq in range(1, 12_001)],
        )
    store = SqliteStore(tmp_path)
    await store.open()
    try:
        await store.ensure_store("new")
        assert await store.read("new", 0, 100_000, 100_000) == []
        await store.append("new", 0, events(1, 1), 1)
        await store.purged()
    finally:
        await store.close()
    with raw(tmp_path / DATABASE_NAME) as conn:
        assert conn.execute("SELECT count(*) FROM events WHERE sid = 7").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM purge").fetchone() == (0,)
        sids = dict(conn.execute("SELECT store_id, id FROM stores").fetchall())
    assert sids["new"] > 7


async def test_sqlite_schema_1_database_is_migrated_with_its_sizes(tmp_path: Path) -> None:
    """A database written by the version-1 code (the committed fixture) opens, gains the
    catalog's columns filled from its events, and keeps every event."""
    shutil.copy(FIXTURES / "v1.sqlite3", tmp_path / DATABASE_NAME)
    with raw(tmp_path / DATABASE_NAME) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (1,)
        sizes = dict(
            conn.execute(
                "SELECT s.store_id, sum(length(e.data)) FROM stores s "
                "JOIN events e ON e.sid = s.id GROUP BY s.store_id"
            ).fetchall()
        )
        backends = dict(conn.execute("SELECT store_id, backend_id FROM stores").fetchall())
    store = SqliteStore(tmp_path)
    await store.open()
    try:
        infos = {info.store_id: info for info in await store.list_stores()}
        assert set(infos) == {"alpha", "beta", "empty"}
        assert (infos["alpha"].head, infos["alpha"].bytes) == (3, sizes["alpha"])
        assert infos["alpha"].last_write_ms == 1_700_000_000_000
        assert (infos["beta"].head, infos["beta"].bytes) == (1, sizes["beta"])
        assert (infos["empty"].bytes, infos["empty"].last_write_ms) == (0, None)
        assert {k: v.backend_id for k, v in infos.items()} == backends
        assert [r.seq for r in await store.read("alpha", 0, 10, 10)] == [1, 2, 3]
        # Events from before attribution existed have no writer; new ones do.
        assert [r.writer for r in await store.read("alpha", 0, 10, 10, writers=True)] == [None] * 3
        await store.append("alpha", 3, events(4, 1), 1_700_000_002_000, Writer("a", "i", "jwt"))
        (row,) = await store.read("alpha", 3, 10, 10, writers=True)
        assert row.writer == Writer("a", "i", "jwt")
        info = await store.store_info("alpha")
        assert info is not None
        assert info.last_write_ms == 1_700_000_002_000
    finally:
        await store.close()
    with raw(tmp_path / DATABASE_NAME) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


async def test_sqlite_database_from_a_newer_gateway_is_refused(tmp_path: Path) -> None:
    with raw(tmp_path / DATABASE_NAME) as conn:
        conn.execute("PRAGMA user_version = 99")
    store = SqliteStore(tmp_path)
    with pytest.raises(StoreError, match="newer than this gateway"):
        await store.open()


@pytest.mark.postgres
async def test_postgres_schema_1_is_migrated_with_its_sizes() -> None:
    """A schema at version 1 (its DDL as version 1 created it, with rows) gains the catalog's
    columns filled from its events."""
    import asyncpg

    from gateway.store.pg_schema import MIGRATIONS
    from gateway.store.postgres import PostgresStore

    await require_postgres()
    schema = fresh_schema()
    conn = await asyncpg.connect(POSTGRES_DSN)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(f'SET search_path TO "{schema}"')
        await conn.execute(MIGRATIONS[1])
        await conn.execute("CREATE TABLE schema_version (version int NOT NULL)")
        await conn.execute("INSERT INTO schema_version VALUES (1)")
        await conn.execute(
            "INSERT INTO stores VALUES ('alpha', 'b-alpha', 2, 5), ('empty', 'b-empty', 0, 6)"
        )
        await conn.execute(
            "INSERT INTO events VALUES ('alpha', 1, 0, 100, '\\x0102'), "
            "('alpha', 2, 1, 200, '\\x030405')"
        )
    finally:
        await conn.close()
    store = PostgresStore(POSTGRES_DSN, schema=schema)
    await store.open()
    try:
        infos = {info.store_id: info for info in await store.list_stores()}
        assert (infos["alpha"].head, infos["alpha"].bytes, infos["alpha"].last_write_ms) == (
            2,
            5,
            200,
        )
        assert infos["alpha"].backend_id == "b-alpha"
        assert (infos["empty"].bytes, infos["empty"].last_write_ms) == (0, None)
        assert [r.data for r in await store.read("alpha", 0, 10, 10)] == [
            b"\x01\x02",
            b"\x03\x04\x05",
        ]
    finally:
        await store.close()
        await drop_schema(schema)
