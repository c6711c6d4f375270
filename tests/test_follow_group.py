"""A group commit's announcement on the other node: the stores it is behind on are read in
one query and published in order, without a gap or a duplicate (gateway/follow.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.engine import Backlog, SyncEngine
from gateway.follow import StoreState
from gateway.hub import Hub, Subscription
from gateway.protocol import PullRequest, PushRequest
from gateway.store.postgres import PostgresStore
from tests.helpers.fakes import WakingOutbox, new_events
from tests.helpers.postgres import POSTGRES_DSN, drop_schema, fresh_schema, require_postgres
from tests.helpers.timeouts import TIMEOUT_UNIT

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60 * TIMEOUT_UNIT)]

STORES = [f"g{k}" for k in range(10)]
ROUNDS = 3


class CountingEngine(SyncEngine):
    """Counts the group catch-ups (the path under test), otherwise the engine itself."""

    groups = 0

    async def _catch_up_group(self, behind: list[tuple[StoreState, int]]) -> None:
        self.groups += 1
        await super()._catch_up_group(behind)


@pytest.fixture(name="nodes")
async def _nodes() -> AsyncIterator[tuple[SyncEngine, CountingEngine]]:
    await require_postgres()
    schema = fresh_schema()
    stores = [PostgresStore(POSTGRES_DSN, schema=schema) for _ in range(2)]
    for store in stores:
        await store.open()
    try:
        yield SyncEngine(stores[0], Hub()), CountingEngine(stores[1], Hub())
    finally:
        for store in stores:
            await store.close()
        await drop_schema(schema)


async def test_group_announcement_is_read_at_once_and_published_in_order(
    nodes: tuple[SyncEngine, CountingEngine],
) -> None:
    writer, follower = nodes
    sinks: dict[str, WakingOutbox] = {}
    for store_id in STORES:
        sink = sinks[store_id] = WakingOutbox()
        subscription = Subscription(sink, store_id, b'"1"')
        opened = await follower.open_pull(
            PullRequest(store_id=store_id, cursor=None, live=True), subscription
        )
        assert isinstance(opened, Backlog), opened
        subscription.go_live()
    for round_ in range(ROUNDS):
        # Concurrent pushes to every store: the writer's store commits them in groups.
        errors = await asyncio.gather(
            *(
                writer.push(
                    PushRequest(store_id=s, batch=new_events(round_ + 1, 1), backend_id=None)
                )
                for s in STORES
            )
        )
        assert errors == [None] * len(STORES)
    expected = list(range(1, ROUNDS + 1))
    async with asyncio.timeout(10 * TIMEOUT_UNIT):
        for store_id, sink in sinks.items():
            while sink.seqs() != expected:
                assert sink.seqs() == expected[: len(sink.seqs())], (store_id, sink.seqs())
                sink.changed.clear()
                await sink.changed.wait()
    assert follower.groups >= 1
    for store_id in STORES:
        assert (await follower.state(store_id)).head == ROUNDS
