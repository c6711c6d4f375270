"""Fault injection into the real SQLite store, from outside the gateway.

:class:`FailingAppends` puts a trigger into a gateway's own database file: while a store is
armed, inserting its events raises inside SQLite, so the store's ``append`` fails exactly as it
would on a real write error (``StoreError``, the transaction rolled back, nothing written). No
gateway object is replaced or patched. :class:`RaisingStore` wraps the real store to raise what
no contract names (a bug, an unexpected driver error).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from gateway.protocol import NewEvent
from gateway.revocation import Revocation
from gateway.store import StoredEvent, StoreInfo, StoreMeta, Writer
from gateway.store.sqlite import SqliteStore

_SETUP = """
CREATE TABLE IF NOT EXISTS test_failing_appends (sid INTEGER PRIMARY KEY);
CREATE TRIGGER IF NOT EXISTS test_failing_appends BEFORE INSERT ON events
WHEN EXISTS (SELECT 1 FROM test_failing_appends WHERE sid = NEW.sid)
BEGIN
    SELECT RAISE(ABORT, 'injected storage failure');
END;
"""


class FailingAppends:
    """Appends to armed stores of the SQLite log in ``data_dir`` fail until disarmed."""

    def __init__(self, data_dir: str | Path) -> None:
        self.path = Path(data_dir) / "gateway.sqlite3"

    def _run(self, sql: str, *args: str) -> int:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
        try:
            conn.executescript(_SETUP)
            return conn.execute(sql, args).rowcount
        finally:
            conn.close()

    async def arm(self, store_id: str) -> None:
        """Fail every later append to ``store_id`` (which must exist: pull or push first)."""
        armed = await asyncio.to_thread(
            self._run,
            "INSERT OR IGNORE INTO test_failing_appends SELECT id FROM stores WHERE store_id = ?",
            store_id,
        )
        assert armed == 1, f"store {store_id!r} is not in {self.path}"

    async def disarm(self, store_id: str) -> None:
        await asyncio.to_thread(
            self._run,
            "DELETE FROM test_failing_appends "
            "WHERE sid = (SELECT id FROM stores WHERE store_id = ?)",
            store_id,
        )


class Unexpected(RuntimeError):
    """An exception no store contract names: what a driver bug would raise."""


class RaisingStore:
    """The real SQLite store, whose chosen methods raise :class:`Unexpected` while armed.

    For the one promise no real failure can reach on demand: whatever exception ends a
    request, the client gets an answer. Everything else goes to the real store.
    """

    def __init__(self, data_dir: str | Path) -> None:
        self.inner = SqliteStore(data_dir)
        self.armed: set[str] = set()

    def _fault(self, method: str) -> None:
        if method in self.armed:
            raise Unexpected(f"injected into {method}")

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def ensure_store(self, store_id: str) -> StoreMeta:
        self._fault("ensure_store")
        return await self.inner.ensure_store(store_id)

    async def append(
        self,
        store_id: str,
        expected_head: int,
        events: Sequence[NewEvent],
        created_ms: int,
        writer: Writer | None = None,
    ) -> None:
        self._fault("append")
        await self.inner.append(store_id, expected_head, events, created_ms, writer)

    async def read(
        self, store_id: str, after: int, upto: int, limit: int, *, writers: bool = False
    ) -> list[StoredEvent]:
        self._fault("read")
        return await self.inner.read(store_id, after, upto, limit, writers=writers)

    async def count(self, store_id: str, after: int, upto: int) -> int:
        self._fault("count")
        return await self.inner.count(store_id, after, upto)

    async def check(self) -> None:
        self._fault("check")
        await self.inner.check()

    def forget(self, store_id: str) -> None:
        self.inner.forget(store_id)

    async def list_stores(
        self, *, prefix: str = "", after: str = "", limit: int = 100
    ) -> list[StoreInfo]:
        self._fault("list_stores")
        return await self.inner.list_stores(prefix=prefix, after=after, limit=limit)

    async def store_info(self, store_id: str) -> StoreInfo | None:
        self._fault("store_info")
        return await self.inner.store_info(store_id)

    async def reset_store(self, store_id: str) -> StoreMeta | None:
        self._fault("reset_store")
        return await self.inner.reset_store(store_id)

    async def delete_store(self, store_id: str) -> bool:
        self._fault("delete_store")
        return await self.inner.delete_store(store_id)

    async def create_store(self, store_id: str, backend_id: str) -> bool:
        self._fault("create_store")
        return await self.inner.create_store(store_id, backend_id)

    async def rename_store(self, store_id: str, new_id: str) -> bool:
        self._fault("rename_store")
        return await self.inner.rename_store(store_id, new_id)

    async def add_revocation(self, entry: Revocation) -> None:
        self._fault("add_revocation")
        await self.inner.add_revocation(entry)

    async def list_revocations(self, now: float) -> list[Revocation]:
        self._fault("list_revocations")
        return await self.inner.list_revocations(now)
