"""The storage contract, run against every backend through one factory fixture."""

from __future__ import annotations

import asyncio

import pytest

from gateway.protocol import NewEvent
from gateway.store import EventStore, HeadMismatch, StoreError
from tests.store.conftest import StoreFactory, events


class TestStoreContract:
    async def test_new_store_has_head_zero_and_a_backend_id(self, store: EventStore) -> None:
        """A store is created on first use with head 0 and a nanoid-like backendId."""
        meta = await store.ensure_store("s")
        assert meta.head == 0
        assert len(meta.backend_id) == 21
        assert (await store.ensure_store("s")) == meta

    async def test_backend_ids_differ_between_stores(self, store: EventStore) -> None:
        """Each store gets its own random identity."""
        a = await store.ensure_store("a")
        b = await store.ensure_store("b")
        assert a.backend_id != b.backend_id

    async def test_append_then_read_round_trips_bytes(self, store: EventStore) -> None:
        """Appended events read back in order with their bytes and creation time intact."""
        await store.ensure_store("s")
        batch = events(1, 3)
        await store.append("s", 0, batch, 1_700_000_000_123)
        rows = await store.read("s", 0, 3, 100)
        assert [r.seq for r in rows] == [1, 2, 3]
        assert [r.data for r in rows] == [e.data for e in batch]
        assert {r.created_ms for r in rows} == {1_700_000_000_123}
        assert (await store.ensure_store("s")).head == 3

    async def test_read_respects_bounds_and_limit(self, store: EventStore) -> None:
        """read() returns after < seq <= upto, at most limit rows; count() agrees."""
        await store.ensure_store("s")
        await store.append("s", 0, events(1, 10), 1)
        assert [r.seq for r in await store.read("s", 3, 7, 100)] == [4, 5, 6, 7]
        assert [r.seq for r in await store.read("s", 3, 7, 2)] == [4, 5]
        assert await store.count("s", 3, 7) == 4
        assert await store.count("s", 10, 10) == 0
        assert await store.read("s", 10, 20, 100) == []

    async def test_stale_head_is_refused_and_nothing_written(self, store: EventStore) -> None:
        """An append naming an old head raises HeadMismatch with the real head."""
        await store.ensure_store("s")
        await store.append("s", 0, events(1, 2), 1)
        with pytest.raises(HeadMismatch) as info:
            await store.append("s", 0, events(1, 1), 2)
        assert info.value.head == 2
        assert [r.seq for r in await store.read("s", 0, 100, 100)] == [1, 2]

    async def test_duplicate_seq_fails_atomically(self, store: EventStore) -> None:
        """A batch that collides with a stored seqNum writes none of its events."""
        await store.ensure_store("s")
        await store.append("s", 0, events(5, 1, parent=0), 1)
        clash = [NewEvent(6, 5, b"{}"), NewEvent(5, 6, b"{}")]
        with pytest.raises(StoreError):
            await store.append("s", 5, clash, 2)
        assert [r.seq for r in await store.read("s", 0, 100, 100)] == [5]
        assert (await store.ensure_store("s")).head == 5

    async def test_gapped_sequence_numbers_are_kept(self, store: EventStore) -> None:
        """seqNum need not be parent + 1 (upstream suite pushes seq 100 on parent 0)."""
        await store.ensure_store("s")
        await store.append("s", 0, events(100, 1, parent=0), 1)
        rows = await store.read("s", 0, 100, 10)
        assert [(r.seq, r.parent) for r in rows] == [(100, 0)]
        assert await store.count("s", 0, 100) == 1

    async def test_concurrent_appends_one_winner(self, store: EventStore) -> None:
        """Ten appends expecting the same head: exactly one succeeds."""
        await store.ensure_store("s")
        results = await asyncio.gather(
            *(store.append("s", 0, events(1, 1), i) for i in range(10)), return_exceptions=True
        )
        assert sum(r is None for r in results) == 1
        assert all(isinstance(r, HeadMismatch) for r in results if r is not None)

    async def test_group_commit_keeps_stores_independent(self, store: EventStore) -> None:
        """Concurrent appends to many stores all land; one failing does not undo others."""
        names = [f"s{i}" for i in range(20)]
        for name in names:
            await store.ensure_store(name)
        good = [store.append(name, 0, events(1, 5), 1) for name in names]
        bad = store.append("s0", 7, events(1, 1), 1)
        results = await asyncio.gather(*good, bad, return_exceptions=True)
        assert results[:-1] == [None] * 20
        assert isinstance(results[-1], HeadMismatch)
        for name in names:
            assert (await store.ensure_store(name)).head == 5

    async def test_stores_are_isolated(self, store: EventStore) -> None:
        """Events of one store never show up in another."""
        await store.ensure_store("a")
        await store.ensure_store("b")
        await store.append("a", 0, events(1, 3), 1)
        assert await store.read("b", 0, 100, 100) == []
        assert await store.count("b", 0, 100) == 0

    async def test_everything_survives_reopen(self, open_store: StoreFactory) -> None:
        """After close and reopen, head, backendId and events are unchanged."""
        first = await open_store()
        meta = await first.ensure_store("s")
        await first.append("s", 0, events(1, 4), 42)
        await first.close()
        second = await open_store()
        assert await second.ensure_store("s") == type(meta)(backend_id=meta.backend_id, head=4)
        assert [r.seq for r in await second.read("s", 0, 10, 10)] == [1, 2, 3, 4]

    async def test_check_passes_when_open(self, store: EventStore) -> None:
        """check() is how /readyz asks the backend whether it can serve."""
        await store.check()

    async def test_closed_store_refuses_work(self, open_store: StoreFactory) -> None:
        """Operations after close() raise StoreError instead of hanging."""
        store = await open_store()
        await store.ensure_store("s")
        await store.close()
        with pytest.raises(StoreError):
            await store.append("s", 0, events(1, 1), 1)
        with pytest.raises(StoreError):
            await store.check()
