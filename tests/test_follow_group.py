"""A group commit's announcement on the other node (gateway/follow.py): the events it carries
are published straight from it; when they do not continue what the node published (a lost
announcement), the stores it is behind on are read in one query; in order, without a gap or
a duplicate either way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest

from gateway.engine import Backlog, SyncEngine
from gateway.follow import StoreState
from gateway.hub import Hub, Subscription
from gateway.protocol import PullRequest, PushRequest
from gateway.store import StoredEvent
from gateway.store.pg_notice import Carried, Commits, decode
from gateway.store.postgres import PostgresStore
from tests.helpers.fakes import WakingOutbox, new_events
from tests.helpers.postgres import POSTGRES_DSN, drop_schema, fresh_schema, require_postgres
from tests.helpers.timeouts import TIMEOUT_UNIT
from tests.test_pipeline import subscribe

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60 * TIMEOUT_UNIT)]

STORES = [f"g{k}" for k in range(10)]
ROUNDS = 3


class CountingEngine(SyncEngine):
    """Counts the group catch-ups (the path under test), otherwise the engine itself."""

    groups = 0

    async def _catch_up_group(self, behind: list[tuple[StoreState, int]]) -> None:
        self.groups += 1
        await super()._catch_up_group(behind)


class CountingStore(PostgresStore):
    """Counts the reads of the log; ``drop`` decides which announcements are lost."""

    reads = 0
    drop: Callable[[str], bool] = staticmethod(lambda _payload: False)

    async def read(
        self, store_id: str, after: int, upto: int, limit: int, *, writers: bool = False
    ) -> list[StoredEvent]:
        self.reads += 1
        return await super().read(store_id, after, upto, limit, writers=writers)

    async def read_ranges(
        self, ranges: Sequence[tuple[str, int, int]]
    ) -> dict[str, list[StoredEvent]]:
        self.reads += 1
        return await super().read_ranges(ranges)

    def _notified(self, conn: Any, pid: int, channel: str, payload: object) -> None:
        if not self.drop(str(payload)):
            super()._notified(conn, pid, channel, payload)


Nodes = tuple[SyncEngine, CountingEngine, CountingStore]


@pytest.fixture(name="nodes")
async def _nodes() -> AsyncIterator[Nodes]:
    await require_postgres()
    schema = fresh_schema()
    writing = PostgresStore(POSTGRES_DSN, schema=schema)
    following = CountingStore(POSTGRES_DSN, schema=schema)
    for store in (writing, following):
        await store.open()
    try:
        yield SyncEngine(writing, Hub()), CountingEngine(following, Hub()), following
    finally:
        for store in (writing, following):
            await store.close()
        await drop_schema(schema)


async def _subscribe(follower: SyncEngine) -> dict[str, WakingOutbox]:
    sinks: dict[str, WakingOutbox] = {}
    for store_id in STORES:
        sink = sinks[store_id] = WakingOutbox()
        subscription = Subscription(sink, store_id, b'"1"')
        opened = await follower.open_pull(
            PullRequest(store_id=store_id, cursor=None, live=True), subscription
        )
        assert isinstance(opened, Backlog), opened
        subscription.go_live()
    return sinks


async def _push_rounds(writer: SyncEngine, rounds: int) -> None:
    for round_ in range(rounds):
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


async def test_announced_events_are_published_without_reading_the_log(nodes: Nodes) -> None:
    """The group notifications carry the events: the other node publishes every one of
    them in order, without a gap or a duplicate, and never reads the log."""
    writer, follower, following = nodes
    sinks = await _subscribe(follower)
    following.reads = 0
    await _push_rounds(writer, ROUNDS)
    for sink in sinks.values():
        await sink.until(ROUNDS)
    assert following.reads == 0
    assert follower.groups == 0
    for store_id in STORES:
        assert (await follower.state(store_id)).head == ROUNDS


async def test_a_gap_is_read_from_the_log_at_once_and_published_in_order(nodes: Nodes) -> None:
    """The first round's announcements are lost: the next ones' events do not continue what
    the node published, so it reads the stores it is behind on (together) instead."""
    writer, follower, following = nodes

    def first_round(payload: str) -> bool:
        message = decode(payload)
        return isinstance(message, Commits) and all(h == 1 for _, h in message.heads)

    following.drop = first_round
    sinks = await _subscribe(follower)
    following.reads = 0
    await _push_rounds(writer, ROUNDS)
    for sink in sinks.values():
        await sink.until(ROUNDS)
    assert following.reads >= 1
    assert follower.groups >= 1
    for store_id in STORES:
        assert (await follower.state(store_id)).head == ROUNDS


async def test_announced_events_of_another_log_are_not_published(nodes: Nodes) -> None:
    """An announcement that comes late, after the store was reset (another backendId), or
    whose events do not start right after the node's head: the log is read instead, and
    what it does not hold is never published."""
    _writer, follower, following = nodes
    sinks = await _subscribe(follower)
    reset, gap = await follower.state("g0"), await follower.state("g1")
    following.reads = 0
    follower.on_commits(
        [("g0", 1), ("g1", 2)],
        {
            "g0": Carried("another-log", [StoredEvent(1, 0, 1, b'{"seqNum":1}')]),
            "g1": Carried(gap.backend_id, [StoredEvent(2, 1, 1, b'{"seqNum":2}')]),
        },
    )
    await asyncio.wait(tuple(follower._background), timeout=10 * TIMEOUT_UNIT)
    assert not follower._background
    assert following.reads >= 1
    assert follower.groups == 1  # both read, together
    assert sinks["g0"].seqs() == sinks["g1"].seqs() == []
    assert reset.head == gap.head == 0


class FenceEngine(CountingEngine):
    """Tells when its own reset or delete came back announced."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.own_heard = asyncio.Event()

    def on_own_change(self, store_id: str) -> None:
        super().on_own_change(store_id)
        self.own_heard.set()


async def _delete_and_recreate(
    engine: SyncEngine, store: PostgresStore, store_id: str
) -> tuple[str, WakingOutbox]:
    """This node deletes ``store_id`` and it comes back under its old backendId (an import
    of a backup); returns that backendId and a live subscriber of the new log."""
    backend_id = (await engine.state(store_id)).backend_id
    assert await engine.retire(store_id, "delete", lambda: store.delete_store(store_id))
    assert await store.create_store(store_id, backend_id)
    return backend_id, await subscribe(engine, store_id)


async def _announce_stale(engine: SyncEngine, store_id: str, backend_id: str) -> None:
    """An announcement of the deleted log's first event, arriving late."""
    engine.on_commits(
        [(store_id, 1)],
        {store_id: Carried(backend_id, [StoredEvent(1, 0, 1, b'{"seqNum":1,"old":true}')])},
    )
    if engine._background:
        await asyncio.wait(tuple(engine._background), timeout=10 * TIMEOUT_UNIT)
    assert not engine._background


async def test_a_store_deleted_here_trusts_no_announced_events_until_its_delete_is_heard(
    nodes: Nodes,
) -> None:
    """Announcements committed before this node's own delete may still be on their way;
    until the delete's own announcement comes back, a store's announced events are read
    from the log, never published as they come (they could belong to the deleted log)."""
    _writer, _follower, following = nodes
    engine = FenceEngine(following, Hub())
    following.drop = lambda payload: '"x":"delete"' in payload  # its own delete: never heard
    backend_id, sink = await _delete_and_recreate(engine, following, "g0")
    following.reads = 0
    await _announce_stale(engine, "g0", backend_id)
    assert following.reads >= 1  # read from the log instead, which holds nothing
    assert sink.seqs() == []
    assert (await engine.state("g0")).head == 0


async def test_the_fence_lifts_when_the_delete_is_heard(nodes: Nodes) -> None:
    """Once this node heard its own delete, every earlier announcement was heard too:
    announced events that continue the store's head are published from the announcement."""
    _writer, _follower, following = nodes
    engine = FenceEngine(following, Hub())
    backend_id, sink = await _delete_and_recreate(engine, following, "g0")
    async with asyncio.timeout(10 * TIMEOUT_UNIT):
        await engine.own_heard.wait()
    following.reads = 0
    await _announce_stale(engine, "g0", backend_id)
    assert following.reads == 0
    assert sink.seqs() == [1]
