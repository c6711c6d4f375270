"""The store tests' fixtures: one factory per backend, so every contract runs on each."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import orjson
import pytest

from gateway.protocol import NewEvent
from gateway.store import EventStore
from gateway.store.sqlite import SqliteStore
from tests.helpers.postgres import POSTGRES_DSN, drop_schema, fresh_schema, require_postgres

StoreFactory = Callable[[], Awaitable[EventStore]]


def events(start: int, n: int, parent: int | None = None) -> list[NewEvent]:
    out = []
    prev = start - 1 if parent is None else parent
    for seq in range(start, start + n):
        data = orjson.dumps(
            {"name": "e", "args": {"seq": seq}, "seqNum": seq, "parentSeqNum": prev}
        )
        out.append(NewEvent(seq, prev, data))
        prev = seq
    return out


@pytest.fixture(
    name="open_store", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
async def _open_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StoreFactory]:
    """Opens stores of one backend on one location; all are closed afterwards.

    PostgreSQL gets a fresh schema per test, dropped afterwards.
    """
    opened: list[EventStore] = []
    schema = fresh_schema()
    if request.param == "postgres":
        await require_postgres()

    async def factory() -> EventStore:
        store: EventStore
        if request.param == "sqlite":
            store = SqliteStore(tmp_path)
        elif request.param == "postgres":
            from gateway.store.postgres import PostgresStore

            store = PostgresStore(POSTGRES_DSN, schema=schema)
        else:  # pragma: no cover
            raise AssertionError(request.param)
        await store.open()
        opened.append(store)
        return store

    yield factory
    for store in opened:
        await store.close()
    if request.param == "postgres":
        await drop_schema(schema)


@pytest.fixture(name="store")
async def _store(open_store: StoreFactory) -> EventStore:
    return await open_store()
