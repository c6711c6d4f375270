"""The operator's catalog on the SQLite backend: list, show, reset and delete stores.

A reset or a delete is one short write job: the store's row gets a new log id (reset) or
goes (delete), and its old log id is queued in ``purge``. Its events are then removed in the
background, a chunk per write job, so a store of millions of events never holds the writer
(and every other store's pushes) for long; a purge interrupted by a restart resumes on open.
Log ids are never reused while events of theirs remain (``NEXT_SID``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any, Final, TypeVar

from gateway.errors import StoreError
from gateway.revocation import Revocation
from gateway.store import StoreInfo, StoreMeta, new_backend_id

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Events removed per write job while purging a reset or deleted store's log.
PURGE_CHUNK: Final = 5000

NEXT_SID: Final = (
    "SELECT 1 + max(coalesce((SELECT max(id) FROM stores), 0), "
    "coalesce((SELECT max(sid) FROM purge), 0))"
)
"""The log id (``stores.id``, ``events.sid``) of a new or reset store: above every id in use,
including those whose events are still being purged, so no store sees another's events."""

_COLUMNS: Final = "store_id, backend_id, head, bytes, created_ms, last_ms"


def _info(row: Any) -> StoreInfo:
    return StoreInfo(
        store_id=row[0],
        backend_id=row[1],
        head=int(row[2]),
        bytes=int(row[3]),
        created_ms=int(row[4]),
        last_write_ms=None if row[5] is None else int(row[5]),
    )


class SqliteCatalog:
    """Mixed into :class:`gateway.store.sqlite.SqliteStore` (which provides the job runners)."""

    _sids: dict[str, int]
    _purger: asyncio.Task[None] | None

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        raise NotImplementedError

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        raise NotImplementedError

    async def list_stores(
        self, *, prefix: str = "", after: str = "", limit: int = 100
    ) -> list[StoreInfo]:
        def select(conn: sqlite3.Connection) -> list[StoreInfo]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM stores "  # noqa: S608 - a constant column list
                "WHERE store_id > ? AND substr(store_id, 1, ?) = ? ORDER BY store_id LIMIT ?",
                (after, len(prefix), prefix, limit),
            ).fetchall()
            return [_info(row) for row in rows]

        return await self._read(select)

    async def store_info(self, store_id: str) -> StoreInfo | None:
        def select(conn: sqlite3.Connection) -> StoreInfo | None:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM stores WHERE store_id = ?",  # noqa: S608 - constant
                (store_id,),
            ).fetchone()
            return None if row is None else _info(row)

        return await self._read(select)

    async def reset_store(self, store_id: str) -> StoreMeta | None:
        def reset(conn: sqlite3.Connection) -> tuple[int, str] | None:
            row = conn.execute("SELECT id FROM stores WHERE store_id = ?", (store_id,)).fetchone()
            if row is None:
                return None
            (sid,) = conn.execute(NEXT_SID).fetchone()
            backend_id = new_backend_id()
            conn.execute("INSERT INTO purge (sid) VALUES (?)", (row[0],))
            conn.execute(
                "UPDATE stores SET id = ?, backend_id = ?, head = 0, bytes = 0, last_ms = NULL, "
                "created_ms = ? WHERE id = ?",
                (sid, backend_id, int(time.time() * 1000), row[0]),
            )
            return int(sid), backend_id

        done = await self._write(reset)
        self._sids.pop(store_id, None)
        if done is None:
            return None
        self._start_purge()
        return StoreMeta(backend_id=done[1], head=0)

    async def delete_store(self, store_id: str) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT id FROM stores WHERE store_id = ?", (store_id,)).fetchone()
            if row is None:
                return False
            conn.execute("INSERT INTO purge (sid) VALUES (?)", (row[0],))
            conn.execute("DELETE FROM stores WHERE id = ?", (row[0],))
            return True

        deleted = await self._write(delete)
        self._sids.pop(store_id, None)
        if deleted:
            self._start_purge()
        return deleted

    async def create_store(self, store_id: str, backend_id: str) -> bool:
        def create(conn: sqlite3.Connection) -> bool:
            if conn.execute("SELECT 1 FROM stores WHERE store_id = ?", (store_id,)).fetchone():
                return False
            (sid,) = conn.execute(NEXT_SID).fetchone()
            conn.execute(
                "INSERT INTO stores (id, store_id, backend_id, head, created_ms) "
                "VALUES (?, ?, ?, 0, ?)",
                (sid, store_id, backend_id, int(time.time() * 1000)),
            )
            return True

        return await self._write(create)

    async def rename_store(self, store_id: str, new_id: str) -> bool:
        def rename(conn: sqlite3.Connection) -> bool:
            if conn.execute("SELECT 1 FROM stores WHERE store_id = ?", (new_id,)).fetchone():
                return False
            moved = conn.execute(
                "UPDATE stores SET store_id = ? WHERE store_id = ?", (new_id, store_id)
            ).rowcount
            return bool(moved)

        renamed = await self._write(rename)
        self._sids.pop(store_id, None)
        self._sids.pop(new_id, None)
        return renamed

    # -- revoked tokens -----------------------------------------------------------------------

    async def add_revocation(self, entry: Revocation) -> None:
        def add(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM revocations WHERE expires_s <= ?", (entry.created_at,))
            conn.execute(
                "INSERT INTO revocations (subject, before_s, jti, expires_s, created_s, actor) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    entry.subject,
                    entry.before,
                    entry.token_id,
                    entry.expires_at,
                    entry.created_at,
                    entry.actor,
                ),
            )

        await self._write(add)

    async def list_revocations(self, now: float) -> list[Revocation]:
        def select(conn: sqlite3.Connection) -> list[Revocation]:
            rows = conn.execute(
                "SELECT subject, before_s, jti, expires_s, created_s, actor FROM revocations "
                "WHERE expires_s > ? ORDER BY id",
                (now,),
            ).fetchall()
            return [Revocation.from_row(*row) for row in rows]

        return await self._read(select)

    # -- purging ------------------------------------------------------------------------------

    def _start_purge(self) -> None:
        if self._purger is None or self._purger.done():
            self._purger = asyncio.get_running_loop().create_task(self._purge())

    async def _stop_purge(self) -> None:
        if self._purger is not None:
            self._purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purger

    async def purged(self) -> None:
        """Wait until the events of every reset or deleted store are gone from the file."""
        while self._purger is not None and not self._purger.done():
            await asyncio.shield(self._purger)

    async def _purge(self) -> None:
        def chunk(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT sid FROM purge ORDER BY sid LIMIT 1").fetchone()
            if row is None:
                return False
            removed = conn.execute(
                "DELETE FROM events WHERE sid = ? AND seq IN "
                "(SELECT seq FROM events WHERE sid = ? ORDER BY seq LIMIT ?)",
                (row[0], row[0], PURGE_CHUNK),
            ).rowcount
            if removed < PURGE_CHUNK:
                conn.execute("DELETE FROM purge WHERE sid = ?", (row[0],))
            return True

        try:
            while await self._write(chunk):
                pass
        except StoreError as exc:  # closing, or the disk failed: the next open resumes
            logger.info("purge of reset or deleted stores paused: %s", exc)
