"""SQLite specifics beyond the shared contract."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.protocol import NewEvent
from gateway.store.sqlite import SqliteStore
from tests.helpers.timeouts import TIMEOUT_UNIT


async def test_checkpoints_run_beside_the_writer(tmp_path: Path) -> None:
    """Commits never checkpoint themselves; the checkpoint thread copies the WAL back.

    About 1 MB is written: far below SQLite's automatic checkpoint (1,000 pages), so the
    database file only grows because the background checkpointer ran.
    """
    store = SqliteStore(tmp_path)
    await store.open()
    try:
        await store.ensure_store("s")
        before = store.path.stat().st_size
        payload = b'{"pad":"' + b"x" * 1000 + b'"}'
        head = 0
        for _ in range(10):
            batch = [NewEvent(head + i + 1, head + i, payload) for i in range(100)]
            await store.append("s", head, batch, 1)
            head += 100
        store.checkpointed.clear()
        assert await asyncio.to_thread(store.checkpointed.wait, 10 * TIMEOUT_UNIT)
        assert store.path.stat().st_size > before + 900_000
        assert len(await store.read("s", 0, head, 2000)) == head
    finally:
        await store.close()
