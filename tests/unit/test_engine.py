"""The sync engine on its own (gateway/engine.py) over a real SQLite store in tmp_path: push
admission and its typed refusals, publication order, the catch-up → live hand-off, storage
failures. Unloading idle stores is tested at this level in tests/test_unload.py.

The connection edge is a :class:`~tests.helpers.fakes.RecordingOutbox`; engine, hub and
store are real.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from gateway.engine import Backlog, SyncEngine
from gateway.errors import BackendIdMismatch, ServerAhead, StoreError, UnknownFailure
from gateway.hub import Subscription
from gateway.protocol import Cursor, NewEvent, PullRequest, PushRequest
from gateway.store.sqlite import SqliteStore
from tests.helpers.fakes import RecordingOutbox, new_events
from tests.helpers.faults import FailingAppends


async def _push(engine: SyncEngine, batch: list[NewEvent], backend_id: str | None = None) -> None:
    error = await engine.push(PushRequest(store_id="s", batch=batch, backend_id=backend_id))
    assert error is None, error


async def _backlog_seqs(engine: SyncEngine, backlog: Backlog) -> list[int]:
    seqs = []
    async for item in engine.backlog_items(backlog):
        seqs += [entry["eventEncoded"]["seqNum"] for entry in orjson.loads(item)["batch"]]
    return seqs


async def _live_pull(
    engine: SyncEngine, outbox: RecordingOutbox, cursor: Cursor | None = None
) -> tuple[Subscription, Backlog]:
    sub = Subscription(outbox, "s", b'"1"')
    opened = await engine.open_pull(PullRequest(store_id="s", live=True, cursor=cursor), sub)
    assert isinstance(opened, Backlog), opened
    return sub, opened


def _stored(engine: SyncEngine) -> SqliteStore:
    assert isinstance(engine.store, SqliteStore)
    return engine.store


async def test_accepted_pushes_are_published_in_order_and_counted(engine: SyncEngine) -> None:
    outbox = RecordingOutbox()
    sub, backlog = await _live_pull(engine, outbox)
    assert await _backlog_seqs(engine, backlog) == []
    sub.go_live()
    for first in (1, 3, 4):
        await _push(engine, new_events(first, 2 if first == 1 else 1))
    assert outbox.seqs() == [1, 2, 3, 4]
    counters = engine.counters
    assert (counters.pushes_accepted, counters.events_accepted) == (3, 4)
    assert counters.frames_delivered == 3
    assert (await engine.state("s")).head == 4


async def test_concurrent_pushes_are_serialised_one_winner_per_parent(
    engine: SyncEngine,
) -> None:
    """Pushes racing for the same parent: exactly one is admitted; the log and the live
    stream agree on it."""
    outbox = RecordingOutbox()
    sub, _ = await _live_pull(engine, outbox)
    sub.go_live()
    rivals = [
        [NewEvent(seq=1, parent=0, data=b'{"seqNum":1,"parentSeqNum":0,"who":%d}' % i)]
        for i in range(5)
    ]
    results = await asyncio.gather(
        *(engine.push(PushRequest(store_id="s", batch=b, backend_id=None)) for b in rivals)
    )
    winners = [i for i, error in enumerate(results) if error is None]
    assert len(winners) == 1, results
    assert all(e is None or isinstance(e, ServerAhead) for e in results), results
    (frame,) = outbox.parsed()
    (entry,) = frame["values"][0]["batch"]
    assert entry["eventEncoded"]["who"] == winners[0]
    rows = await _stored(engine).read("s", 0, 10, 10)
    assert [orjson.loads(row.data)["who"] for row in rows] == winners


async def test_catch_up_to_live_handoff_has_no_gap_and_no_duplicate(engine: SyncEngine) -> None:
    """Backlog ``(cursor, head at open]`` plus everything published after the open, each
    event once: pushes admitted while the backlog is still being read wait in the FIFO."""
    await _push(engine, new_events(1, 5))
    backend = (await engine.state("s")).backend_id
    outbox = RecordingOutbox()
    sub, backlog = await _live_pull(engine, outbox, Cursor(backend_id=backend, seq=2))
    assert (backlog.after, backlog.upto) == (2, 5)
    await _push(engine, new_events(6, 2))  # after the open, before the backlog is read
    caught_up = await _backlog_seqs(engine, backlog)
    await _push(engine, new_events(8, 1))  # after the backlog, before go_live
    assert outbox.frames == []
    sub.go_live()
    await _push(engine, new_events(9, 1))  # live
    assert caught_up + outbox.seqs() == list(range(3, 10))


async def test_stale_or_ahead_parent_gets_server_ahead_and_changes_nothing(
    engine: SyncEngine,
) -> None:
    await _push(engine, new_events(1, 3))
    outbox = RecordingOutbox()
    sub, _ = await _live_pull(engine, outbox)
    sub.go_live()
    stale = await engine.push(PushRequest(store_id="s", batch=new_events(3, 1), backend_id=None))
    ahead = await engine.push(PushRequest(store_id="s", batch=new_events(6, 1), backend_id=None))
    assert stale == ServerAhead(minimum_expected=3, provided=2)
    assert ahead == ServerAhead(minimum_expected=3, provided=5)
    assert engine.counters.pushes_rejected["server_ahead"] == 2
    assert outbox.frames == []
    assert (await engine.state("s")).head == 3
    assert [row.seq for row in await _stored(engine).read("s", 0, 10, 10)] == [1, 2, 3]


async def test_wrong_backend_id_is_refused_for_push_and_pull(engine: SyncEngine) -> None:
    await _push(engine, new_events(1, 1))
    backend = (await engine.state("s")).backend_id
    pushed = await engine.push(
        PushRequest(store_id="s", batch=new_events(2, 1), backend_id="other")
    )
    assert pushed == BackendIdMismatch(expected=backend, received="other")
    assert engine.counters.pushes_rejected["backend_mismatch"] == 1
    sub = Subscription(RecordingOutbox(), "s", b'"1"')
    pulled = await engine.open_pull(
        PullRequest(store_id="s", live=True, cursor=Cursor(backend_id="other", seq=1)), sub
    )
    assert pulled == BackendIdMismatch(expected=backend, received="other")
    assert engine.hub.subscriber_count("s") == 0, "a refused pull was subscribed"
    await _push(engine, new_events(2, 1), backend)  # the right one is admitted
    assert (await engine.state("s")).head == 2


async def test_batch_that_does_not_chain_is_refused_before_the_store(engine: SyncEngine) -> None:
    broken = [*new_events(1, 1), *new_events(3, 1)]
    error = await engine.push(PushRequest(store_id="s", batch=broken, backend_id=None))
    assert error is not None
    assert isinstance(error, UnknownFailure), error
    assert engine.counters.pushes_rejected["invalid_batch"] == 1
    assert engine.stores_loaded == 0, "an invalid batch reached the store"
    assert await engine.push(PushRequest(store_id="s", batch=[], backend_id=None)) is None
    assert engine.counters.pushes_accepted == 0


async def test_failed_append_publishes_nothing_and_keeps_the_head(
    engine: SyncEngine, tmp_path: Path
) -> None:
    await _push(engine, new_events(1, 1))
    outbox = RecordingOutbox()
    sub, _ = await _live_pull(engine, outbox)
    sub.go_live()
    faults = FailingAppends(tmp_path)
    await faults.arm("s")
    with pytest.raises(StoreError):  # transient: raised, never an RPC failure
        await engine.push(PushRequest(store_id="s", batch=new_events(2, 2), backend_id=None))
    assert engine.counters.pushes_rejected["storage"] == 1
    assert outbox.frames == []
    assert (await engine.state("s")).head == 1
    await faults.disarm("s")
    await _push(engine, new_events(2, 2))
    assert outbox.seqs() == [2, 3]
