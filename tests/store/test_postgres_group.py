"""Group commit of the PostgreSQL store: concurrent appends share one transaction, each in
its own SAVEPOINT; one append's failure is its own; a group whose connection dies answers
every append in it from the log; one notification announces the whole group.

With ``pool_max=2`` the store writes one group at a time: of appends started together, the
first is written alone and the others wait for it, then go together (which the tests check
through the rows' ``xmin``, the id of the transaction that wrote them).
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from gateway.errors import CommitUnknown, HeadMismatch, StoreError
from gateway.store.pg_group import MAX_NOTICE, Append, notices
from gateway.store.pg_notice import Carried, Commits, decode
from gateway.store.postgres import PostgresStore
from tests.helpers.postgres import POSTGRES_DSN
from tests.helpers.timeouts import TIMEOUT_UNIT
from tests.store.test_postgres_faults import (  # the fixtures admin and schema, and helpers
    _admin,
    _events,
    _lock_store_row,
    _open,
    _schema,
    _wait_blocked,
)

pytestmark = pytest.mark.postgres
__all__ = ["_admin", "_schema"]


async def test_concurrent_appends_share_one_transaction_and_one_notification(
    schema: str, admin: asyncpg.Connection
) -> None:
    store = await _open(schema, pool_min=1, pool_max=2)
    payloads: asyncio.Queue[str] = asyncio.Queue()
    await admin.add_listener(store.channel, lambda *args: payloads.put_nowait(args[3]))
    try:
        ids = [f"s{k:02d}" for k in range(20)]
        for store_id in ["lead", *ids]:
            await store.ensure_store(store_id)
        await asyncio.gather(
            store.append("lead", 0, _events(1, 1), 1),
            *(store.append(s, 0, _events(1, 2, s), 1) for s in ids),
        )
        assert await store.heads(ids) == dict.fromkeys(ids, 2)
        for s in ids:
            assert [e.seq for e in await store.read(s, 0, 10, 10)] == [1, 2]
        # One notification for the lead, one for the group of twenty (sent at its COMMIT:
        # they shared one transaction), each carrying the events written.
        first = _commits(await asyncio.wait_for(payloads.get(), 5 * TIMEOUT_UNIT))
        second = _commits(await asyncio.wait_for(payloads.get(), 5 * TIMEOUT_UNIT))
        assert first.node == store.node
        assert first.heads == [("lead", 1)]
        assert second.heads == [(s, 2) for s in ids]
        backend_ids = {s: (await store.store_info(s)).backend_id for s in ids}  # type: ignore[union-attr]
        assert second.carried == {
            s: Carried(backend_ids[s], await store.read(s, 0, 10, 10)) for s in ids
        }
        assert payloads.empty()
    finally:
        await store.close()


async def test_one_failing_append_does_not_fail_its_group(
    schema: str, admin: asyncpg.Connection
) -> None:
    """In one group: a stale head (HeadMismatch), a constraint violation (an event row the
    head does not know of) and a missing store fail alone; the others commit."""
    store = await _open(schema, pool_min=1, pool_max=2)
    payloads: asyncio.Queue[str] = asyncio.Queue()
    try:
        for store_id in ("lead", "a", "bad", "stale", "z"):
            await store.ensure_store(store_id)
        await store.append("stale", 0, _events(1, 1), 1)
        # An event at seq 1 the head (0) does not know: appending seq 1 violates the key.
        await admin.execute(
            f'INSERT INTO "{schema}".events (store_id, seq, parent, created_ms, data, writer) '  # noqa: S608 - our schema name
            "VALUES ('bad', 1, 0, 1, '\\x00', 0)"
        )
        await admin.add_listener(store.channel, lambda *args: payloads.put_nowait(args[3]))
        results = await asyncio.gather(
            store.append("lead", 0, _events(1, 1), 5),
            store.append("a", 0, _events(1, 2), 5),
            store.append("bad", 0, _events(1, 1), 5),
            store.append("stale", 0, _events(1, 1, "other"), 5),
            store.append("missing", 0, _events(1, 1), 5),
            store.append("z", 0, _events(1, 3), 5),
            return_exceptions=True,
        )
        assert [results[0], results[1], results[5]] == [None, None, None]
        assert isinstance(results[2], StoreError)
        assert not isinstance(results[2], CommitUnknown)
        assert isinstance(results[3], HeadMismatch)
        assert results[3].head == 1
        assert isinstance(results[4], StoreError)
        assert "does not exist" in str(results[4])
        assert await store.heads(["a", "bad", "stale", "z"]) == {
            "a": 2,
            "bad": 0,
            "stale": 1,
            "z": 3,
        }
        # The group announced what it wrote, nothing else: no refused append's events.
        first = _commits(await asyncio.wait_for(payloads.get(), 5 * TIMEOUT_UNIT))
        assert first.heads == [("lead", 1)]
        second = _commits(await asyncio.wait_for(payloads.get(), 5 * TIMEOUT_UNIT))
        assert second.heads == [("a", 2), ("z", 3)]
        assert {s: [e.seq for e in c.events] for s, c in second.carried.items()} == {
            "a": [1, 2],
            "z": [1, 2, 3],
        }
        assert second.carried["a"].events == await store.read("a", 0, 5, 5)
        assert [e.data for e in await store.read("stale", 0, 5, 5)] == [_events(1, 1)[0].data]
    finally:
        await store.close()


async def test_same_store_twice_in_a_group_one_wins(schema: str) -> None:
    store = await _open(schema, pool_min=1, pool_max=2)
    try:
        await store.ensure_store("s")
        results = await asyncio.gather(
            store.append("lead", 0, _events(1, 1), 1),
            store.append("s", 0, _events(1, 1, "x"), 1),
            store.append("s", 0, _events(1, 1, "y"), 1),
            return_exceptions=True,
        )
        assert sum(r is None for r in results[1:]) == 1
        (lost,) = [r for r in results[1:] if r is not None]
        assert isinstance(lost, HeadMismatch)
        assert lost.head == 1
        assert await store.count("s", 0, 10) == 1
    finally:
        await store.close()


async def test_group_killed_mid_transaction_fails_every_append_and_writes_none(
    schema: str, admin: asyncpg.Connection
) -> None:
    """The group's connection dies while it waits for a row lock, after writing one of its
    appends: every append in it fails (StoreError, not unknown: the log says none is there),
    nothing was written, and the same appends succeed afterwards."""
    store = await _open(schema, pool_min=1, pool_max=2)
    try:
        for store_id in ("lead", "a", "m", "z"):
            await store.ensure_store(store_id)
        async with admin.transaction():
            await _lock_store_row(admin, schema, "m")
            lead = asyncio.create_task(store.append("lead", 0, _events(1, 1), 1))
            group = [
                asyncio.create_task(store.append(s, 0, _events(1, 2), 1)) for s in ("a", "m", "z")
            ]
            await lead
            pid = await _wait_blocked(admin, schema)
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
            results = await asyncio.wait_for(
                asyncio.gather(*group, return_exceptions=True), 10 * TIMEOUT_UNIT
            )
        for result in results:
            assert isinstance(result, StoreError), result
            assert not isinstance(result, CommitUnknown)
        assert await store.heads(["a", "m", "z"]) == {"a": 0, "m": 0, "z": 0}
        for s in ("a", "m", "z"):
            assert await store.count(s, 0, 10) == 0
        await asyncio.gather(*(store.append(s, 0, _events(1, 2), 2) for s in ("a", "m", "z")))
        assert await store.heads(["a", "m", "z"]) == {"a": 2, "m": 2, "z": 2}
    finally:
        await store.close()


async def test_cancelled_caller_of_a_shared_group_leaves_the_others_acked(
    schema: str, admin: asyncpg.Connection
) -> None:
    """Cancelling one caller does not interrupt the group it shares: the others are acked
    and its append's outcome is the log's (here: written)."""
    store = await _open(schema, pool_min=1, pool_max=2)
    try:
        for store_id in ("lead", "a", "m"):
            await store.ensure_store(store_id)
        async with admin.transaction():
            await _lock_store_row(admin, schema, "m")
            lead = asyncio.create_task(store.append("lead", 0, _events(1, 1), 1))
            a = asyncio.create_task(store.append("a", 0, _events(1, 1), 1))
            m = asyncio.create_task(store.append("m", 0, _events(1, 1), 1))
            await lead
            await _wait_blocked(admin, schema)
            a.cancel()
            with pytest.raises(asyncio.CancelledError):
                await a
        await asyncio.wait_for(m, 10 * TIMEOUT_UNIT)
        assert await store.heads(["a", "m"]) == {"a": 1, "m": 1}
    finally:
        await store.close()


def _commits(payload: str) -> Commits:
    message = decode(payload)
    assert isinstance(message, Commits), message
    return message


def _job(store_id: str, head: int, backend_id: str | None) -> Append:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    job = Append(store_id, head - 1, _events(head, 1), 1, None, future)
    job.backend_id = backend_id
    return job


async def test_notifications_are_split_under_the_payload_limit() -> None:
    """Head only (no backendId read back) or with events, a group's notifications each stay
    under the limit and list every store once, in order, with its last head."""
    for backend_id in (None, "b"):
        jobs = [_job(f"store-{'x' * 180}-{k}", k + 1, backend_id) for k in range(200)]
        jobs.append(_job(jobs[0].store_id, 2, backend_id))  # its second append in the group
        jobs[-1].expected_head = 1
        payloads = notices("node", jobs)
        assert len(payloads) > 1
        assert all(len(p.encode()) <= MAX_NOTICE for p in payloads)
        listed = [h for p in payloads for h in _commits(p).heads]
        assert listed == [(jobs[0].store_id, 2)] + [
            (job.store_id, job.events[-1].seq) for job in jobs[1:-1]
        ]
        carried = {s: c for p in payloads for s, c in _commits(p).carried.items()}
        assert len(carried) == (0 if backend_id is None else 200)
        if backend_id is not None:
            assert [e.seq for e in carried[jobs[0].store_id].events] == [1, 2]


async def test_store_accepts_the_old_notification_format(schema: str) -> None:
    """A node of the previous version announces ``{"s", "h"}``: still heard."""
    store = PostgresStore(POSTGRES_DSN, schema=schema)
    await store.open()
    heard: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
    store.set_commit_listener(lambda s, h: heard.put_nowait((s, h)), lambda: None)
    try:
        conn = await asyncpg.connect(POSTGRES_DSN, timeout=5)
        try:
            await conn.execute("SELECT pg_notify($1, $2)", store.channel, '{"s": "old", "h": 7}')
        finally:
            await conn.close()
        assert await asyncio.wait_for(heard.get(), 5 * TIMEOUT_UNIT) == ("old", 7)
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("pool_max", "commit_groups", "in_flight"),
    [(10, None, 5), (10, 2, 2), (10, 9, 5), (2, 2, 1), (1, None, 1)],
)
def test_group_commits_in_flight_are_capped_at_half_the_pool(
    pool_max: int, commit_groups: int | None, in_flight: int
) -> None:
    """``store.commit_groups`` groups at once, never more than half the pool (the rest serves
    reads), at least one; the configuration reaches the store."""
    store = PostgresStore(POSTGRES_DSN, pool_max=pool_max, commit_groups=commit_groups)
    assert store._group.max_groups == in_flight


def test_the_configured_commit_groups_reach_the_store() -> None:
    from gateway.app import BACKENDS
    from gateway.config import StoreConfig

    store = BACKENDS["postgres"](StoreConfig(backend="postgres", dsn=POSTGRES_DSN, commit_groups=3))
    assert isinstance(store, PostgresStore)
    assert store._group.max_groups == 3
