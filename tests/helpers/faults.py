"""Fault injection into the real SQLite store, from outside the gateway.

:class:`FailingAppends` puts a trigger into a gateway's own database file: while a store is
armed, inserting its events raises inside SQLite, so the store's ``append`` fails exactly as it
would on a real write error (``StoreError``, the transaction rolled back, nothing written). No
gateway object is replaced or patched.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

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
