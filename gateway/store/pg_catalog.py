"""The operator's catalog on the PostgreSQL backend: list, show, reset and delete stores.

A reset or a delete is one transaction that row-locks the store first, so it waits for an
append in flight on any node and every later append sees the new head (or no store). It
announces itself on the commit channel (``{"s": storeId, "x": "reset" | "delete", "n": node}``)
so that every other node drops what it holds of the store.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

import orjson

from gateway.revocation import Revocation
from gateway.store import StoreInfo, StoreMeta, new_backend_id

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from asyncpg.pool import PoolConnectionProxy

    Conn = PoolConnectionProxy[Any]

T = TypeVar("T")

_COLUMNS: Final = "store_id, backend_id, head, bytes, created_ms, last_ms"


def _info(row: Any) -> StoreInfo:
    return StoreInfo(
        store_id=row["store_id"],
        backend_id=row["backend_id"],
        head=int(row["head"]),
        bytes=int(row["bytes"]),
        created_ms=int(row["created_ms"]),
        last_write_ms=None if row["last_ms"] is None else int(row["last_ms"]),
    )


class PostgresCatalog:
    """Mixed into :class:`gateway.store.postgres.PostgresStore` (which provides connections)."""

    channel: str
    node: str

    def _connection(self) -> AbstractAsyncContextManager[Conn]:
        raise NotImplementedError

    async def _read(self, operation: Callable[[Conn], Awaitable[T]]) -> T:
        raise NotImplementedError

    async def list_stores(
        self, *, prefix: str = "", after: str = "", limit: int = 100
    ) -> list[StoreInfo]:
        rows = await self._read(
            lambda conn: conn.fetch(
                f"SELECT {_COLUMNS} FROM stores "  # noqa: S608 - a constant column list
                'WHERE store_id COLLATE "C" > $1 AND left(store_id, length($2)) = $2 '
                'ORDER BY store_id COLLATE "C" LIMIT $3',
                after,
                prefix,
                limit,
            )
        )
        return [_info(row) for row in rows]

    async def store_info(self, store_id: str) -> StoreInfo | None:
        row = await self._read(
            lambda conn: conn.fetchrow(
                f"SELECT {_COLUMNS} FROM stores WHERE store_id = $1",  # noqa: S608 - constant
                store_id,
            )
        )
        return None if row is None else _info(row)

    async def reset_store(self, store_id: str) -> StoreMeta | None:
        backend_id = new_backend_id()
        async with self._connection() as conn, conn.transaction():
            if not await self._lock(conn, store_id):
                return None
            await conn.execute("DELETE FROM events WHERE store_id = $1", store_id)
            await conn.execute(
                "UPDATE stores SET backend_id = $2, head = 0, bytes = 0, last_ms = NULL, "
                "created_ms = $3 WHERE store_id = $1",
                store_id,
                backend_id,
                int(time.time() * 1000),
            )
            await self._announce(conn, store_id, "reset")
        return StoreMeta(backend_id=backend_id, head=0)

    async def delete_store(self, store_id: str) -> bool:
        async with self._connection() as conn, conn.transaction():
            if not await self._lock(conn, store_id):
                return False
            await conn.execute("DELETE FROM events WHERE store_id = $1", store_id)
            await conn.execute("DELETE FROM stores WHERE store_id = $1", store_id)
            await self._announce(conn, store_id, "delete")
        return True

    async def create_store(self, store_id: str, backend_id: str) -> bool:
        status = await self._read(
            lambda conn: conn.execute(
                "INSERT INTO stores (store_id, backend_id, head, created_ms) "
                "VALUES ($1, $2, 0, $3) ON CONFLICT (store_id) DO NOTHING",
                store_id,
                backend_id,
                int(time.time() * 1000),
            )
        )
        return bool(status.endswith(" 1"))

    async def rename_store(self, store_id: str, new_id: str) -> bool:
        async with self._connection() as conn, conn.transaction():
            if await conn.fetchval("SELECT 1 FROM stores WHERE store_id = $1", new_id):
                return False
            if not await self._lock(conn, store_id):
                return False
            await conn.execute(
                "INSERT INTO stores (store_id, backend_id, head, created_ms, bytes, last_ms) "
                "SELECT $2, backend_id, head, created_ms, bytes, last_ms FROM stores "
                "WHERE store_id = $1",
                store_id,
                new_id,
            )
            await conn.execute(
                "UPDATE events SET store_id = $2 WHERE store_id = $1", store_id, new_id
            )
            await conn.execute("DELETE FROM stores WHERE store_id = $1", store_id)
        return True

    async def add_revocation(self, entry: Revocation) -> None:
        async with self._connection() as conn, conn.transaction():
            await conn.execute("DELETE FROM revocations WHERE expires_s <= $1", entry.created_at)
            await conn.execute(
                "INSERT INTO revocations (subject, before_s, jti, expires_s, created_s, actor) "
                "VALUES ($1, $2, $3, $4, $5, $6)",
                entry.subject,
                entry.before,
                entry.token_id,
                entry.expires_at,
                entry.created_at,
                entry.actor,
            )
            await self._announce(conn, "", "revoke")

    async def list_revocations(self, now: float) -> list[Revocation]:
        rows = await self._read(
            lambda conn: conn.fetch(
                "SELECT subject, before_s, jti, expires_s, created_s, actor FROM revocations "
                "WHERE expires_s > $1 ORDER BY id",
                now,
            )
        )
        return [Revocation.from_row(*row) for row in rows]

    async def _lock(self, conn: Conn, store_id: str) -> bool:
        """Row-lock the store (waiting for appends in flight); False if it does not exist."""
        found = await conn.fetchval("SELECT 1 FROM stores WHERE store_id = $1 FOR UPDATE", store_id)
        return found is not None

    async def announce_disconnect(self, filters: dict[str, str]) -> None:
        """Ask every other node to close its sessions matching ``filters`` (an operator's
        disconnect; ``store``, ``subject``, ``instance``)."""
        notice = orjson.dumps({"s": "", "x": "disconnect", "f": filters, "n": self.node})
        await self._read(
            lambda conn: conn.execute("SELECT pg_notify($1, $2)", self.channel, notice.decode())
        )

    async def _announce(self, conn: Conn, store_id: str, what: str) -> None:
        notice = orjson.dumps({"s": store_id, "x": what, "n": self.node}).decode()
        await conn.execute("SELECT pg_notify($1, $2)", self.channel, notice)
