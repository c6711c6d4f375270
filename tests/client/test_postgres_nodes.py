"""gateway.client across two gateway nodes sharing one PostgreSQL log (issue 12).

The nodes are the multi-node interop tests' (``pg_cluster``: two ``gateway serve`` processes on
one fresh schema, the periodic reconcile at 60 s), so whatever a client on node 2 gets from a
writer on node 1 crossed the database and node 1's NOTIFY within seconds. Without PostgreSQL
the tests are skipped, except under CI=true, where they fail.
"""

from __future__ import annotations

import time
from contextlib import aclosing

import pytest

from gateway.client import Cursor, StoreClient, connect
from tests.helpers.follower import following, read_log
from tests.helpers.timeouts import TIMEOUT_UNIT
from tests.helpers.wire import new_store_id
from tests.interop.test_interop import GatewayProcess
from tests.interop.test_interop_multinode import (
    Cluster,
    _pg_cluster,  # noqa: F401 - the fixture used here
)

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60)]

WITHIN = 10 * TIMEOUT_UNIT
# Live delivery through the other node: NOTIFY, read back from the table, fan-out.
LIVE_WITHIN_S = 5 * TIMEOUT_UNIT


def on(node: GatewayProcess, store_id: str, name: str) -> StoreClient:
    """A client of ``store_id`` connected to ``node`` only; ``name`` is its instanceId and
    clientId (so the nodes' logs say which node served it)."""
    return connect(
        node.ws_url(),
        store_id,
        instance_id=name,
        client_id=name,
        backoff_base=0.05,
        backoff_cap=0.5,
    )


def opened(node: GatewayProcess, store_id: str, name: str) -> list[str]:
    """The node's log lines for the sessions ``name`` opened on it."""
    return node.log_lines(rf"open transport=ws store={store_id} .*instance={name} ")


def item(n: int) -> tuple[str, dict[str, int]]:
    return "v1.ItemAdded", {"n": n}


async def test_follower_on_node2_sees_a_writer_on_node1_live(pg_cluster: Cluster) -> None:
    """Each commit through node 1 reaches a follower on node 2 within seconds, in order, with
    its args and clientId; 150 events in one commit_many (two pushes) too."""
    node1, node2 = pg_cluster.nodes
    store_id = new_store_id()
    async with (
        on(node1, store_id, "py-writer") as writer,
        on(node2, store_id, "py-follower") as reader,
        following(reader) as follower,
    ):
        assert await writer.commit_many([item(n) for n in (1, 2, 3)]) == [1, 2, 3]
        await follower.wait(3, WITHIN)
        # The follower is at the head: from here on, everything it gets is live.
        for n in range(4, 9):
            seq = await writer.commit(*item(n))
            acked = time.monotonic()
            assert seq == n
            await follower.wait(seq, WITHIN)
            delay = follower.arrived[seq - 1] - acked
            assert delay < LIVE_WITHIN_S, f"event {seq} took {delay:.2f}s to reach node 2"
        assert await writer.commit_many([item(n) for n in range(9, 159)]) == list(range(9, 159))
        events = await follower.wait(158, WITHIN)
        log = await read_log(writer)

    assert [e.seq_num for e in events] == list(range(1, 159))
    assert [e.parent_seq_num for e in events] == list(range(158))
    assert [e.args for e in events] == [{"n": n} for n in range(1, 159)]
    assert {(e.name, e.client_id) for e in events} == {("v1.ItemAdded", "py-writer")}
    assert events == log, "node 2 streamed another log than node 1 serves"
    # Each client talked to its own node only (open lines are written at most 50 ms late).
    await node1.wait_log(rf"open transport=ws store={store_id} .*instance=py-writer ")
    await node2.wait_log(rf"open transport=ws store={store_id} .*instance=py-follower ")
    assert len(opened(node1, store_id, "py-writer")) == 1, node1.log_tail()
    assert opened(node2, store_id, "py-writer") == [], node2.log_tail()
    assert len(opened(node2, store_id, "py-follower")) == 1, node2.log_tail()
    assert opened(node1, store_id, "py-follower") == [], node1.log_tail()
    pg_cluster.assert_no_errors()


async def test_cursor_taken_on_node1_resumes_on_node2(pg_cluster: Cluster) -> None:
    """A service reads the log on node 1 and saves its cursor string; restarted against node 2
    (a load balancer's choice), it continues from there: the events written while it was away,
    then live ones, with no gap, no duplicate and no backendId mismatch."""
    node1, node2 = pg_cluster.nodes
    store_id = new_store_id()
    async with on(node1, store_id, "py-writer") as writer:
        await writer.commit_many([item(n) for n in range(1, 7)])
        async with (
            on(node1, store_id, "py-service") as first,
            aclosing(first.events(live=False)) as stream,
        ):
            seen = [batch async for batch in stream]
        saved = str(seen[-1].cursor)
        cursor = Cursor.parse(saved)
        assert cursor.seq == 6

        # Written while the service is away, then after it resumed on node 2.
        await writer.commit_many([item(n) for n in range(7, 11)])
        async with (
            on(node2, store_id, "py-service") as second,
            following(second, cursor) as resumed,
        ):
            await resumed.wait(4, WITHIN)
            await writer.commit_many([item(n) for n in range(11, 14)])
            await resumed.wait(7, WITHIN)
            log = await read_log(writer)

    before = [event for batch in seen for event in batch.events]
    assert [*before, *resumed.events] == log
    assert [e.seq_num for e in log] == list(range(1, 14))
    assert resumed.events[0].parent_seq_num == 6
    assert {batch.cursor.backend_id for batch in resumed.batches} == {cursor.backend_id}
    for node in (node1, node2):
        await node.wait_log(rf"open transport=ws store={store_id} .*instance=py-service ")
    assert len(opened(node1, store_id, "py-service")) == 1, node1.log_tail()
    assert len(opened(node2, store_id, "py-service")) == 1, node2.log_tail()
    pg_cluster.assert_no_errors()
