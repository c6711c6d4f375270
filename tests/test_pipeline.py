"""Pipelined pushes on PostgreSQL (gateway/pipeline.py, gateway/store/pg_group.py): a store's
next push is admitted while the previous one commits; every node publishes one gapless
order, nothing is acked that is not in the log, and a failed push fails every later push
of its store that continues it."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence

import asyncpg
import pytest

from gateway.engine import Backlog, SyncEngine
from gateway.errors import ServerAhead, StoreError
from gateway.hub import Hub, Subscription
from gateway.protocol import NewEvent, PullRequest, PushRequest
from gateway.store import Writer
from gateway.store.pg_group import Append
from gateway.store.postgres import PostgresStore
from tests.helpers.fakes import WakingOutbox
from tests.helpers.postgres import POSTGRES_DSN, drop_schema, fresh_schema, require_postgres
from tests.helpers.timeouts import TIMEOUT_UNIT

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60 * TIMEOUT_UNIT)]

TAG = re.compile(rb'"tag":"([^"]*)"')
HOT = "hot"


def event(seq: int, tag: str) -> NewEvent:
    data = b'{"seqNum":%d,"parentSeqNum":%d,"tag":"%s"}' % (seq, seq - 1, tag.encode())
    return NewEvent(seq=seq, parent=seq - 1, data=data)


@pytest.fixture(name="schema")
async def _schema() -> AsyncIterator[str]:
    await require_postgres()
    schema = fresh_schema()
    try:
        yield schema
    finally:
        await drop_schema(schema)


@pytest.fixture(name="nodes")
async def _nodes(schema: str) -> AsyncIterator[list[SyncEngine]]:
    stores = [PostgresStore(POSTGRES_DSN, schema=schema) for _ in range(2)]
    for store in stores:
        await store.open()
    engines = [SyncEngine(store, Hub()) for store in stores]
    try:
        yield engines
    finally:
        for engine in engines:
            await engine.drain()
            await engine.close()
        for store in stores:
            await store.close()


class Queued:
    """Watches a node's store: the appends queued (pipelined) and not yet decided."""

    def __init__(self, engine: SyncEngine) -> None:
        store = engine.store
        assert isinstance(store, PostgresStore)
        self.store = store
        self.jobs: set[Append] = set()
        self.deepest = 0
        self.changed = asyncio.Event()
        store.enqueue = self.enqueue  # type: ignore[method-assign]

    def enqueue(
        self,
        store_id: str,
        expected_head: int,
        events: Sequence[NewEvent],
        created_ms: int,
        writer: Writer | None = None,
    ) -> Append:
        job = PostgresStore.enqueue(self.store, store_id, expected_head, events, created_ms, writer)
        self.jobs.add(job)
        job.future.add_done_callback(lambda _f: self.jobs.discard(job))
        self.deepest = max(self.deepest, len(self.jobs))
        self.changed.set()
        return job

    async def until(self, count: int) -> None:
        async with asyncio.timeout(5 * TIMEOUT_UNIT):
            while len(self.jobs) < count:
                self.changed.clear()
                await self.changed.wait()


async def subscribe(engine: SyncEngine, store_id: str) -> WakingOutbox:
    sink = WakingOutbox()
    subscription = Subscription(sink, store_id, b'"1"')
    opened = await engine.open_pull(
        PullRequest(store_id=store_id, cursor=None, live=True), subscription
    )
    assert isinstance(opened, Backlog), opened
    subscription.go_live()
    return sink


async def log_of(schema: str, store_id: str) -> list[tuple[int, str]]:
    conn = await asyncpg.connect(POSTGRES_DSN, server_settings={"search_path": schema})
    try:
        rows = await conn.fetch(
            "SELECT seq, data FROM events WHERE store_id = $1 ORDER BY seq",
            store_id,
        )
    finally:
        await conn.close()
    return [(r["seq"], TAG.findall(bytes(r["data"]))[0].decode()) for r in rows]


async def test_racing_clients_on_both_nodes_one_gapless_order(
    nodes: list[SyncEngine], schema: str
) -> None:
    """Eight clients on each of two nodes race for one store's next seqNum (refused with
    ServerAhead, each retries from the head it names): every acked push is in the log once,
    at the seqNum it was acked for, and both nodes' subscribers see the log, gapless."""
    sinks = [await subscribe(engine, HOT) for engine in nodes]
    acked: dict[str, int] = {}
    queues = [Queued(engine) for engine in nodes]

    async def client(engine: SyncEngine, name: str) -> None:
        head = 0
        for n in range(15):
            tag = f"{name}-{n}"
            for _attempt in range(500):
                outcome = await engine.push(
                    PushRequest(store_id=HOT, batch=[event(head + 1, tag)], backend_id=None)
                )
                if outcome is None:
                    acked[tag] = head + 1
                    head += 1
                    break
                assert isinstance(outcome, ServerAhead), outcome
                head = outcome.minimum_expected
            else:
                raise AssertionError(f"{tag} never got in")

    await asyncio.gather(
        *(client(engine, f"n{i}c{k}") for i, engine in enumerate(nodes) for k in range(8))
    )
    assert max(q.deepest for q in queues) > 1  # pushes of the store were pipelined
    log = await log_of(schema, HOT)
    assert [seq for seq, _ in log] == list(range(1, len(log) + 1))
    assert {tag: seq for seq, tag in log} == acked  # acked ⇔ in the log, where acked
    for sink in sinks:
        await sink.until(len(log))
        assert sink.tags() == [tag for _, tag in log]


async def blocked_backend(admin: asyncpg.Connection, schema: str) -> int:
    """The pid of the pool backend that waits for the hot store's row lock."""
    async with asyncio.timeout(5 * TIMEOUT_UNIT):
        while True:
            pid = await admin.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE application_name = $1 "
                "AND wait_event_type = 'Lock'",
                f"gateway:{schema}:pool",
            )
            if pid is not None:
                return int(pid)
            await asyncio.sleep(0.01)  # the server's view: there is no event to await


def pushes(engine: SyncEngine, first: int, tags: list[str]) -> list[asyncio.Task[object]]:
    """One push per tag, chained from ``first``, admitted in this order (pipelined)."""
    loop = asyncio.get_running_loop()
    return [
        loop.create_task(
            engine.push(PushRequest(store_id=HOT, batch=[event(first + k, tag)], backend_id=None))
        )
        for k, tag in enumerate(tags)
    ]


async def test_a_push_lost_to_another_writer_fails_the_pushes_that_continue_it(
    nodes: list[SyncEngine], schema: str
) -> None:
    """Three pushes pipelined on one node while another writer takes seqNum 1: the first is
    refused, and so are the two that continue it, even the one whose parent (1) is now the
    log's head: nothing is written on top of a push that is not in the log."""
    first = nodes[0]
    sinks = [await subscribe(engine, HOT) for engine in nodes]
    queued = Queued(first)
    admin = await asyncpg.connect(POSTGRES_DSN, server_settings={"search_path": schema})
    try:
        async with admin.transaction():
            # Another writer: it takes the row lock and seqNum 1, and commits later.
            await admin.execute("UPDATE stores SET head = 1 WHERE store_id = $1", HOT)
            await admin.execute(
                "INSERT INTO events (store_id, seq, parent, created_ms, data) "
                "VALUES ($1, 1, 0, 0, $2)",
                HOT,
                event(1, "other").data,
            )
            tasks = pushes(first, 1, ["a", "b", "c"])
            await queued.until(3)
            await blocked_backend(admin, schema)
        outcomes = await asyncio.gather(*tasks)
    finally:
        await admin.close()
    assert outcomes == [ServerAhead(1, 0), ServerAhead(1, 1), ServerAhead(1, 2)]
    assert await log_of(schema, HOT) == [(1, "other")]
    # The next push builds on the log; every node publishes it after the other writer's.
    await goes_on(nodes, sinks, "other")


async def goes_on(nodes: list[SyncEngine], sinks: list[WakingOutbox], logged: str) -> None:
    """The store goes on from the log (whose one event is tagged ``logged``): a push on each
    node, and every node publishes the three events in order."""
    first, second = nodes
    assert (
        await second.push(PushRequest(store_id=HOT, batch=[event(2, "d")], backend_id=None)) is None
    )
    assert (
        await first.push(PushRequest(store_id=HOT, batch=[event(3, "e")], backend_id=None)) is None
    )
    for sink in sinks:
        await sink.until(3)
        assert sink.tags() == [logged, "d", "e"]


async def test_a_killed_group_fails_the_pipelined_pushes_after_it(
    nodes: list[SyncEngine], schema: str
) -> None:
    """The connection of a group is terminated mid-transaction (pg_terminate_backend) with
    two more pushes of the store pipelined behind it: all three fail with a StoreError (the
    client retries), none is written, and the store goes on from where the log is."""
    first = nodes[0]
    sinks = [await subscribe(engine, HOT) for engine in nodes]
    assert (
        await first.push(PushRequest(store_id=HOT, batch=[event(1, "z")], backend_id=None)) is None
    )
    queued = Queued(first)
    admin = await asyncpg.connect(POSTGRES_DSN, server_settings={"search_path": schema})
    try:
        async with admin.transaction():
            await admin.execute(
                "SELECT 1 FROM stores WHERE store_id = $1 FOR UPDATE",
                HOT,
            )
            tasks = pushes(first, 2, ["a", "b", "c"])
            await queued.until(3)
            pid = await blocked_backend(admin, schema)
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await admin.close()
    assert all(isinstance(o, StoreError) for o in outcomes), outcomes
    assert await log_of(schema, HOT) == [(1, "z")]
    await goes_on(nodes, sinks, "z")


async def test_a_push_that_does_not_continue_a_failed_one_is_written_after_it(
    nodes: list[SyncEngine], schema: str
) -> None:
    """A push whose parent is past the pending head (its client saw another writer's events)
    is queued after the pending push but does not continue it: when that one fails, this one
    is still written, on the log's head it names, and published after the other writer's."""
    first, _second = nodes
    sinks = [await subscribe(engine, HOT) for engine in nodes]
    queued = Queued(first)
    admin = await asyncpg.connect(POSTGRES_DSN, server_settings={"search_path": schema})
    loop = asyncio.get_running_loop()
    try:
        async with admin.transaction():
            # Another writer takes seqNums 1-3 and commits once both pushes are queued.
            await admin.execute("UPDATE stores SET head = 3 WHERE store_id = $1", HOT)
            for seq in (1, 2, 3):
                await admin.execute(
                    "INSERT INTO events (store_id, seq, parent, created_ms, data) "
                    "VALUES ($1, $2, $3, 0, $4)",
                    HOT,
                    seq,
                    seq - 1,
                    event(seq, "other").data,
                )
            tasks = [
                loop.create_task(
                    first.push(PushRequest(store_id=HOT, batch=[event(seq, tag)], backend_id=None))
                )
                for seq, tag in ((1, "a"), (4, "b"))
            ]
            await queued.until(2)
            await blocked_backend(admin, schema)
        outcomes = await asyncio.gather(*tasks)
    finally:
        await admin.close()
    assert outcomes == [ServerAhead(3, 0), None]
    assert await log_of(schema, HOT) == [(1, "other"), (2, "other"), (3, "other"), (4, "b")]
    for sink in sinks:
        await sink.until(4)
        assert sink.tags() == ["other", "other", "other", "b"]
