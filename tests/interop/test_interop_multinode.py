"""Interop across gateway nodes: real LiveStore 0.4.0 clients on two nodes sharing one PG log.

Two ``python -m gateway serve`` processes run with ``GATEWAY_STORE_BACKEND=postgres`` on one fresh
schema (dropped afterwards). Client A is connected to node 1 only, client B to node 2 only, so
every event one of them sees from the other crossed the database: written by one node, announced by
its NOTIFY, read back and fanned out by the other node.

The periodic reconcile (the safety net for lost notifications) is set to 60 s, far beyond any wait
here: live delivery within seconds must come from the NOTIFY path, not from polling.

Needs PostgreSQL at ``GATEWAY_TEST_POSTGRES_DSN`` (see tests/conftest.py) as well as node and the
npm packages; without either the tests are skipped, except under CI=true, where they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.postgres import POSTGRES_DSN, drop_schema, fresh_schema, require_postgres
from tests.interop.test_interop import (
    AUTH_SETTINGS,
    UNIT,
    ClientError,
    ClientFactory,
    GatewayProcess,
    NodeClient,
    _client_pool,
    # Fixtures used here: the autouse skip/fail on missing node or npm packages, and store_id.
    _interop_prerequisites,  # noqa: F401
    _store_id,  # noqa: F401
    assert_one_won_one_rebased,
    assert_same,
    assert_subsequence_in_order,
    event_ids,
    ids,
    push_three_each_from_empty,
)

pytestmark = [pytest.mark.interop, pytest.mark.postgres, pytest.mark.timeout(120)]

# Far beyond any wait in these tests: catching up by polling would show up as a timeout.
RECONCILE_INTERVAL = "60"

# Live delivery through another node: NOTIFY, read back from the table, fan-out.
LIVE_WITHIN_MS = 5000 * UNIT

# journald priorities 0-3 (emergency .. error) in the gateway's plain log format.
SEVERE_RE = r"^<[0-3]>|Traceback"


def node_env(schema: str) -> dict[str, str]:
    return {
        "GATEWAY_STORE_BACKEND": "postgres",
        "GATEWAY_STORE_DSN": POSTGRES_DSN,
        "GATEWAY_STORE_POSTGRES_SCHEMA": schema,
        "GATEWAY_STORE_RECONCILE_INTERVAL": RECONCILE_INTERVAL,
        "GATEWAY_LOG_LEVEL": "info",
    }


@dataclass
class Cluster:
    """``nodes[i]`` is a gateway process; ``clients[i]`` starts Node clients connected to it."""

    schema: str
    nodes: list[GatewayProcess]
    clients: list[ClientFactory]

    def assert_no_errors(self) -> None:
        for i, node in enumerate(self.nodes, start=1):
            severe = node.log_lines(SEVERE_RE)
            assert severe == [], f"node {i} logged errors:\n{node.log_tail(120)}"


@pytest.fixture(name="pg_cluster")
async def _pg_cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """Two gateway nodes on one fresh PostgreSQL schema, with a client factory for each."""
    await require_postgres()
    schema = fresh_schema()
    env = node_env(schema)
    nodes: list[GatewayProcess] = []
    try:
        async with contextlib.AsyncExitStack() as stack:
            for i in (1, 2):
                # Store settings from the runner's own shell must not change the backend.
                node = GatewayProcess(
                    tmp_path / f"node{i}", env, drop_prefixes=(*AUTH_SETTINGS, "GATEWAY_STORE_")
                )
                nodes.append(node)
                # One after the other: the first node migrates the schema.
                await node.start()
                stack.push_async_callback(node.stop)
            factories = [await stack.enter_async_context(_client_pool(node)) for node in nodes]
            yield Cluster(schema, nodes, factories)
    finally:
        for i, node in enumerate(nodes, start=1):
            # pytest shows captured stdout only for failing tests: the servers' side of the story.
            print(f"node {i} (port {node.port}) log tail:\n{node.log_tail(200)}")
        await drop_schema(schema)


async def wait_all(rows: int, *clients: NodeClient, within: float) -> None:
    """Wait until every client has ``rows`` confirmed rows; on failure, report every client."""
    results = await asyncio.gather(
        *(c.wait_rows(rows, within=within) for c in clients), return_exceptions=True
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    if not failures:
        return
    report = []
    for client in clients:
        try:
            status = json.dumps(await client.cmd("status", reply_within=10))
        except ClientError as exc:
            status = f"status failed: {str(exc).splitlines()[0]}"
        report.append(f"{client.name}: {status}\n{client.describe(150)}")
    raise AssertionError(
        f"not every client reached {rows} rows: {[str(f).splitlines()[0] for f in failures]}\n"
        + "\n\n".join(report)
    )


class TcpProxy:
    """A TCP forwarder standing in for a load balancer: new connections go to ``target``.

    :meth:`retarget` sends later connections to another node; open ones are left alone (they end
    when their node goes away).
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.host = "127.0.0.1"
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    def ws_url(self, path: str = "/") -> str:
        return f"ws://{self.host}:{self.port}{path}"

    def http_url(self, path: str = "/") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def retarget(self, port: int) -> None:
        self.target = port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.target)
        except OSError:
            writer.close()
            return
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in tuple(self._pipes):
            task.cancel()
        if self._pipes:
            await asyncio.wait(tuple(self._pipes))


async def test_pg_two_nodes_clients_converge(pg_cluster: Cluster, store_id: str) -> None:
    """A on node 1 and B on node 2 exchange events live; same rows, same order everywhere."""
    node1, node2 = pg_cluster.nodes
    on_node1, on_node2 = pg_cluster.clients
    a, b = await asyncio.gather(
        on_node1("client-A", store_id=store_id), on_node2("client-B", store_id=store_id)
    )
    await asyncio.gather(a.wait_connected(15), b.wait_connected(15))

    # A -> B. B's pull may or may not be live yet; either way the events came through node 2.
    await a.commit("A", 2)
    await a.wait_rows(2, within=15)
    first = await b.wait_rows(2, within=10)
    assert first["waitedMs"] < LIVE_WITHIN_MS, f"B waited {first['waitedMs']} ms for A's events"

    # B -> A: A has confirmed its own events through its pull, so that pull is live on node 1.
    await b.commit("B", 2)
    await b.wait_rows(4, within=15)
    live_a = await a.wait_rows(4, within=10)
    assert live_a["waitedMs"] < LIVE_WITHIN_MS, f"A waited {live_a['waitedMs']} ms for B's events"

    # A -> B again, now certainly onto B's live pull on node 2.
    await a.commit("A", 1, start=3)
    await a.wait_rows(5, within=15)
    live_b = await b.wait_rows(5, within=10)
    assert live_b["waitedMs"] < LIVE_WITHIN_MS, f"B waited {live_b['waitedMs']} ms for A-3"

    dump_a, dump_b = await a.dump(), await b.dump()
    assert_same(dump_a, dump_b)
    expected = ["A-1", "A-2", "B-1", "B-2", "A-3"]
    assert event_ids(dump_a) == expected
    assert [ev["clientId"] for ev in dump_a["events"]] == [
        "client-A",
        "client-A",
        "client-B",
        "client-B",
        "client-A",
    ]
    for dump in (dump_a, dump_b):
        counters = dump["counters"]
        assert counters["serverAheadErrors"] == 0, counters
        assert counters["backendIdMismatchErrors"] == 0, counters
        assert counters["wsOpened"] == 1, f"a socket dropped: {counters}"

    # A late joiner on node 2 pulls the whole log (written through both nodes) from the table.
    late = await on_node2("client-late", store_id=store_id, blocking_initial_sync=True)
    assert late.ready_info["rowCount"] == len(expected), late.ready_info
    dump_late = await late.dump()
    assert_same(dump_a, dump_late)

    # Each node served its own client (and node 2 the late one), nothing else.
    opened = rf"open transport=ws store={store_id} "
    # (Open lines are written in batches, at most 50 ms late.)
    await node1.wait_log(opened)
    await node2.wait_log(opened, count=2)
    assert len(node1.log_lines(opened)) == 1, node1.log_tail()
    assert len(node2.log_lines(opened)) == 2, node2.log_tail()
    pg_cluster.assert_no_errors()


async def test_pg_concurrent_commits_on_two_nodes_rebase(
    pg_cluster: Cluster, store_id: str
) -> None:
    """A (node 1) and B (node 2) both push from the empty state at once: the database's head check
    admits one, the other client gets ServerAheadError, rebases, and both end identical."""
    on_node1, on_node2 = pg_cluster.clients
    a, b = await asyncio.gather(
        on_node1("client-A", store_id=store_id), on_node2("client-B", store_id=store_id)
    )
    await asyncio.gather(a.wait_connected(15), b.wait_connected(15))

    await push_three_each_from_empty(a, b)

    await wait_all(6, a, b, within=30)
    dump_a, dump_b = await a.dump(), await b.dump()
    assert_same(dump_a, dump_b)

    assert_one_won_one_rebased(dump_a, dump_b)
    for dump in (dump_a, dump_b):
        assert dump["counters"]["backendIdMismatchErrors"] == 0, dump["counters"]
        assert dump["counters"]["wsOpened"] == 1, f"a socket dropped: {dump['counters']}"
    pg_cluster.assert_no_errors()


async def test_pg_node_restart_while_other_node_keeps_writing(
    pg_cluster: Cluster, store_id: str
) -> None:
    """Node 1 (client A's) gets SIGTERM and comes back on the same port while B keeps committing
    through node 2; A reconnects, rebases the event it committed offline, and both converge."""
    node1, _ = pg_cluster.nodes
    on_node1, on_node2 = pg_cluster.clients
    a, b = await asyncio.gather(
        on_node1("client-A", store_id=store_id), on_node2("client-B", store_id=store_id)
    )
    await a.commit("A", 2)
    await asyncio.gather(a.wait_rows(2, within=15), b.wait_rows(2, within=15))

    port = node1.port
    code = await node1.stop()
    assert code == 0, f"node 1 exited with {code} on SIGTERM:\n{node1.log_tail()}"

    # Node 2 keeps serving B while node 1 is down; A's event stays pending.
    await b.commit("B", 2)
    await b.wait_rows(4, within=15)
    await a.commit("A", 1, start=3)
    pending = await a.cmd("waitpending", count=1, timeout=10)
    assert pending["sync"]["pending"] == 1, pending
    assert pending["sync"]["upstreamHead"] == 2, pending

    await node1.start(port=port)
    assert node1.port == port
    # B writes again before A is back (most likely while A's reconnect backoff runs).
    await b.commit("B", 2, start=3)
    await b.wait_rows(6, within=15)
    await a.wait_connected(40)
    # A's offline event is rebased onto B's four and confirmed through the restarted node. (Wait for
    # that before A commits again: a commit made while the 0.4.0 client's leader is still rebasing
    # can stay stuck in the client session, never pushed; see README.)
    rebased = await a.wait_rows(7, within=20)
    assert rebased["counters"]["wsOpened"] >= 2, rebased["counters"]
    await b.wait_rows(7, within=10)
    await a.commit("A", 1, start=4)

    total = 2 + 2 + 1 + 2 + 1
    await wait_all(total, a, b, within=40)
    dump_a, dump_b = await a.dump(), await b.dump()
    assert_same(dump_a, dump_b)

    order = event_ids(dump_a)
    assert sorted(order) == sorted(ids("A", 1, 4) + ids("B", 1, 4)), order
    assert order[:2] == ["A-1", "A-2"], "events from before the restart moved"
    # B-1 and B-2 were confirmed while node 1 was down, so A's offline event came after them (B-3
    # and B-4 race with A's reconnection).
    assert order[2:4] == ["B-1", "B-2"], order
    assert_subsequence_in_order(order, ids("A", 1, 4))
    assert_subsequence_in_order(order, ids("B", 1, 4))
    counters_a, counters_b = dump_a["counters"], dump_b["counters"]
    assert counters_a["wsOpened"] >= 2, f"A never reconnected: {counters_a}"
    # B's node never went away: one socket for the whole test.
    assert counters_b["wsOpened"] == 1, counters_b
    assert counters_b["wsClosed"] == 0, counters_b
    for counters in (counters_a, counters_b):
        assert counters["backendIdMismatchErrors"] == 0, counters
    # Node 1 served A in both of its lives.
    opened = rf"open transport=ws store={store_id} "
    await node1.wait_log(opened, count=2)
    pg_cluster.assert_no_errors()


async def test_pg_failover_to_the_other_node(pg_cluster: Cluster, store_id: str) -> None:
    """Client A reaches node 1 through a proxy (a load balancer); node 1 goes away and the proxy
    sends A's reconnection to node 2, which B uses all along. A resumes from its cursor on a node
    that never served it: no event twice, none lost, and A's offline event rebased after B's."""
    node1, node2 = pg_cluster.nodes
    proxy = TcpProxy(node1.port)
    await proxy.start()
    try:
        async with _client_pool(proxy) as via_proxy:  # type: ignore[arg-type]
            a, b = await asyncio.gather(
                via_proxy("client-A", store_id=store_id),
                pg_cluster.clients[1]("client-B", store_id=store_id),
            )
            await a.commit("A", 2)
            await asyncio.gather(a.wait_rows(2, within=15), b.wait_rows(2, within=15))
            await b.commit("B", 1)
            await asyncio.gather(a.wait_rows(3, within=15), b.wait_rows(3, within=15))

            # Node 1 goes away; the balancer sends new connections to node 2.
            proxy.retarget(node2.port)
            code = await node1.stop()
            assert code == 0, f"node 1 exited with {code} on SIGTERM:\n{node1.log_tail()}"
            await b.commit("B", 1, start=2)
            await b.wait_rows(4, within=15)
            await a.commit("A", 1, start=3)

            await a.wait_connected(40)
            await b.commit("B", 1, start=3)
            total = 2 + 1 + 1 + 1 + 1
            await wait_all(total, a, b, within=40)
            dump_a, dump_b = await a.dump(), await b.dump()
            assert_same(dump_a, dump_b)
    finally:
        await proxy.close()

    order = event_ids(dump_a)
    assert sorted(order) == sorted(ids("A", 1, 3) + ids("B", 1, 3)), order
    assert order[:4] == ["A-1", "A-2", "B-1", "B-2"], order
    assert_subsequence_in_order(order, ids("A", 1, 3))
    assert_subsequence_in_order(order, ids("B", 1, 3))
    assert dump_a["counters"]["wsOpened"] >= 2, dump_a["counters"]
    assert proxy.connections >= 2, proxy.connections
    assert dump_b["counters"]["wsOpened"] == 1, dump_b["counters"]
    # Node 2 served B and then A's reconnection.
    await node2.wait_log(rf"open transport=ws store={store_id} ", count=2)
    pg_cluster.assert_no_errors()
