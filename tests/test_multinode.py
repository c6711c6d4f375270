"""Several gateway processes on one PostgreSQL log: one total order, live fan-out across nodes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.clients import RpcClient
from tests.helpers.daemon import Daemon, ws_url
from tests.helpers.postgres import POSTGRES_DSN, drop_schema, fresh_schema, require_postgres
from tests.helpers.timeouts import TIMEOUT_UNIT
from tests.helpers.wire import cursor, make_events, new_store_id, seqs_of

pytestmark = pytest.mark.postgres

NODES = 3
PUSHES_PER_NODE = 25


async def start_node(schema: str, data_dir: Path) -> Daemon:
    env = {
        "GATEWAY_STORE_BACKEND": "postgres",
        "GATEWAY_STORE_DSN": POSTGRES_DSN,
        "GATEWAY_STORE_POSTGRES_SCHEMA": schema,
        "GATEWAY_STORE_RECONCILE_INTERVAL": "1",
    }
    return await Daemon.start("--port", "0", "--data-dir", str(data_dir), env=env)


@pytest.fixture(name="cluster")
async def _cluster(tmp_path: Path) -> AsyncIterator[list[Daemon]]:
    await require_postgres()
    schema = fresh_schema()
    nodes: list[Daemon] = []
    try:
        # The first node migrates the schema; the others find it ready.
        nodes.append(await start_node(schema, tmp_path / "n0"))
        nodes.extend(
            await asyncio.gather(*(start_node(schema, tmp_path / f"n{i}") for i in range(1, NODES)))
        )
        yield nodes
    finally:
        await asyncio.gather(*(node.stop() for node in nodes))
        await drop_schema(schema)


class Subscriber:
    """A live pull that records every event it receives, in order."""

    def __init__(self, client: RpcClient, rid: str, initial: list[Any]) -> None:
        self.client = client
        self.rid = rid
        self.events: list[dict[str, Any]] = [
            entry["eventEncoded"] for item in initial for entry in item["batch"]
        ]

    async def until(self, count: int) -> list[dict[str, Any]]:
        async with asyncio.timeout(30 * TIMEOUT_UNIT):
            while len(self.events) < count:
                self.events.extend(await self.client.live_events(self.rid, 1))
        return self.events


async def subscribe(node: Daemon, store: str) -> Subscriber:
    client = await RpcClient.open(ws_url(node.port, store), store)
    rid, items = await client.live_pull()
    return Subscriber(client, rid, items)


async def pusher(node: Daemon, store: str, tag: str, count: int, acked: list[int]) -> None:
    """Push ``count`` single events, re-parenting on ServerAheadError, recording acked seqs."""
    client = await RpcClient.open(ws_url(node.port, store), store)
    parent = 0
    try:
        for n in range(count):
            while True:
                event = make_events(parent + 1, 1, client_id=tag)[0]
                event["args"] = {"tag": tag, "n": n}
                frame = await client.push([event])
                outcome = frame["exit"]
                if outcome["_tag"] == "Success":
                    acked.append(event["seqNum"])
                    parent = event["seqNum"]
                    break
                error = outcome["cause"]["error"]
                assert error["_tag"] == "ServerAheadError", frame
                parent = error["minimumExpectedNum"]
    finally:
        await client.ws.close()


async def test_three_nodes_one_order_live_everywhere(cluster: list[Daemon]) -> None:
    """Concurrent pushes through 3 nodes: every node's subscriber sees the same gapless log."""
    store = new_store_id("multi")
    subscribers = [await subscribe(node, store) for node in cluster]
    acked: list[list[int]] = [[] for _ in cluster]
    await asyncio.gather(
        *(
            pusher(node, store, f"node{i}", PUSHES_PER_NODE, acked[i])
            for i, node in enumerate(cluster)
        )
    )
    total = NODES * PUSHES_PER_NODE
    logs = [await sub.until(total) for sub in subscribers]
    for log in logs:
        assert [e["seqNum"] for e in log] == list(range(1, total + 1))
        assert log == logs[0]
    tags = {(e["args"]["tag"], e["args"]["n"]) for e in logs[0]}
    assert tags == {(f"node{i}", n) for i in range(NODES) for n in range(PUSHES_PER_NODE)}
    assert sorted(seq for seqs in acked for seq in seqs) == list(range(1, total + 1))
    # A fresh pull through any node returns the same log.
    late = await RpcClient.open(ws_url(cluster[2].port, store), store)
    pulled = [entry["eventEncoded"] for item in await late.pull() for entry in item["batch"]]
    assert pulled == logs[0]
    for sub in subscribers:
        await sub.client.close()
    await late.close()


async def test_sigkill_one_node_loses_no_acked_event(cluster: list[Daemon]) -> None:
    """Killing a node mid-load loses nothing it acked; the other nodes keep serving."""
    store = new_store_id("kill")
    watchers = [await subscribe(cluster[1], store), await subscribe(cluster[2], store)]
    acked: list[list[int]] = [[] for _ in cluster]
    victim = asyncio.create_task(pusher(cluster[0], store, "victim", 10_000, acked[0]))
    async with asyncio.timeout(30 * TIMEOUT_UNIT):
        await watchers[0].until(20)
    await cluster[0].kill()
    with pytest.raises(Exception):  # noqa: B017, PT011 - the victim's connection just dies
        await victim
    # The survivors keep accepting pushes that chain after everything the victim wrote.
    await asyncio.gather(
        pusher(cluster[1], store, "survivor1", 5, acked[1]),
        pusher(cluster[2], store, "survivor2", 5, acked[2]),
    )
    top = max(seq for seqs in acked for seq in seqs)
    # Each surviving node's live subscriber ends with the same gapless log holding every ack
    # (a node hears the other's last commit a moment later, so wait for the top seqNum).
    logs = [await watcher.until(top) for watcher in watchers]
    seqs = [e["seqNum"] for e in logs[0]]
    assert seqs == list(range(1, top + 1))
    assert logs[1] == logs[0]
    assert set(acked[0]) <= set(seqs), "an acked event of the killed node was lost"
    # A fresh pull through a surviving node returns that log too.
    check = await RpcClient.open(ws_url(cluster[2].port, store), store)
    pulled = [entry["eventEncoded"] for item in await check.pull() for entry in item["batch"]]
    await check.close()
    assert pulled == logs[0]
    for watcher in watchers:
        await watcher.client.close()


async def terminate_backends(application_name: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_DSN, timeout=5)
    try:
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1",
            application_name,
        )
    finally:
        await conn.close()
    return int(killed)


async def test_lost_listener_reconnects_and_fills_the_gap(tmp_path: Path) -> None:
    """With its LISTEN connection killed, a node keeps its clients and catches up afterwards."""
    await require_postgres()
    schema = fresh_schema()
    nodes = [await start_node(schema, tmp_path / "a"), await start_node(schema, tmp_path / "b")]
    try:
        store = new_store_id("gap")
        watcher = await subscribe(nodes[0], store)
        # Kill every node's listener, then write through node b while they reconnect.
        assert await terminate_backends(f"gateway:{schema}:listener") == len(nodes)
        acked: list[int] = []
        await pusher(nodes[1], store, "b", 10, acked)
        log = await watcher.until(10)
        assert [e["seqNum"] for e in log] == list(range(1, 11))
        # The watcher's connection survived the database hiccup.
        await watcher.client.push_ok(make_events(11, 1))
        assert [e["seqNum"] for e in await watcher.until(11)] == list(range(1, 12))
        await watcher.client.close()
    finally:
        for node in nodes:
            await node.stop()
        await drop_schema(schema)


async def test_lagging_node_never_redelivers_what_a_client_has(make_gateway: Any) -> None:
    """A client whose cursor is ahead of a lagging node gets only newer events from it.

    Node b hears nothing from the other node (its notifications are dropped and reconcile
    is hourly), so it lags behind the log when the client, which saw events 1-2 through
    node a, opens its live pull on b with cursor 2.
    """
    await require_postgres()
    schema = fresh_schema()
    try:
        common = {
            "backend": "postgres",
            "dsn": POSTGRES_DSN,
            "postgres_schema": schema,
            "reconcile_interval": 3600.0,
        }
        node_a = await make_gateway(**common)
        node_b = await make_gateway(**common)
        store = new_store_id("lag")
        url_a = node_a.ws_url(store)
        url_b = node_b.ws_url(store)
        # b loads the store (head 0) and then stops hearing about commits.
        first = await RpcClient.open(url_b, store)
        backend_id = await first.backend_id()
        await first.close()
        node_b.gw.engine.on_commit = lambda store_id, head: None
        writer = await RpcClient.open(url_a, store)
        await writer.push_ok(make_events(1, 2))
        client = await RpcClient.open(url_b, store)
        rid, items = await client.live_pull(cursor(backend_id, 2))
        assert seqs_of(items) == []
        await writer.push_ok(make_events(3, 1))
        await node_b.gw.engine.reconcile()
        assert [e["seqNum"] for e in await client.live_events(rid, 1)] == [3]
        assert await client.barrier() == []
        await client.close()
        await writer.close()
    finally:
        await drop_schema(schema)
