"""An operator resets or deletes a store in use; lists and disconnects sessions.

Through :class:`gateway.admin.service.AdminService` on a real in-process gateway, with real
WebSocket clients: their sessions are closed with 4004, a reconnecting client's old cursor
gets ``BackendIdMismatchError``, and the store syncs again from seqNum 1.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

import pytest

from gateway.engine import SyncEngine
from gateway.errors import BackendIdMismatch
from gateway.hub import Hub
from gateway.protocol import NewEvent, PushRequest
from gateway.store import StoreMeta, Writer
from gateway.store.sqlite import SqliteStore
from tests.helpers.clients import RpcClient
from tests.helpers.harness import GatewayHarness, MakeGateway, postgres_nodes
from tests.helpers.timeouts import TIMEOUT_UNIT
from tests.helpers.wire import cursor, events_of, make_events

STORE = "ops-store"


async def closed_with(client: RpcClient) -> tuple[int | None, str | None]:
    async with asyncio.timeout(5 * TIMEOUT_UNIT):
        await client.ws.wait_closed()
    return client.ws.close_code, client.ws.close_reason


async def pushed(client: RpcClient, start: int, n: int, backend_id: str | None = None) -> None:
    rid = await client.send_push(make_events(start, n), backend_id)
    frame = await client.wait_exit(rid)
    assert frame["exit"]["_tag"] == "Success", frame


def failure_of(frame: dict[str, object]) -> dict[str, object]:
    exit_ = frame["exit"]
    assert isinstance(exit_, dict)
    assert exit_["_tag"] == "Failure", frame
    cause = exit_["cause"]
    assert isinstance(cause, dict)
    error = cause["error"]
    assert isinstance(error, dict)
    return error


async def test_reset_closes_the_sessions_and_the_store_starts_again(
    gateway: GatewayHarness, caplog: pytest.LogCaptureFixture
) -> None:
    writer = await RpcClient.open(gateway.ws_url(STORE), STORE)
    await pushed(writer, 1, 3)
    old_backend = await writer.backend_id()
    follower = await RpcClient.open(gateway.ws_url(STORE), STORE)
    await follower.live_pull()
    other = await RpcClient.open(gateway.ws_url("other"), "other")
    await pushed(other, 1, 1)

    caplog.set_level(logging.INFO, logger="gateway.audit")
    meta = await gateway.gw.admin.reset(STORE, actor="test")
    assert meta is not None
    assert meta.backend_id != old_backend
    assert await closed_with(writer) == (4004, "store reset")
    assert await closed_with(follower) == (4004, "store reset")
    assert "action=store.reset store=ops-store actor=test outcome=done" in caplog.text
    # Another store's session is untouched.
    assert other.ws.close_code is None
    await pushed(other, 2, 1)

    # The client reconnects with its old cursor: BackendIdMismatchError names the new id.
    again = await RpcClient.open(gateway.ws_url(STORE), STORE)
    rid = await again.send_pull(cursor(old_backend, 3), live=False)
    error = failure_of(await again.wait_exit(rid))
    assert error["_tag"] == "BackendIdMismatchError"
    assert error["expected"] == meta.backend_id
    # A push naming the old backendId is refused the same way; from scratch it is taken.
    rid = await again.send_push(make_events(4, 1), old_backend)
    assert failure_of(await again.wait_exit(rid))["_tag"] == "BackendIdMismatchError"
    await pushed(again, 1, 2, meta.backend_id)
    assert [e["seqNum"] for e in events_of(await again.pull())] == [1, 2]
    info = await gateway.gw.admin.store(STORE)
    assert info is not None
    assert (info["backendId"], info["head"]) == (meta.backend_id, 2)
    for client in (again, other):
        await client.close()


async def test_delete_closes_the_sessions_and_the_next_request_creates_the_store(
    gateway: GatewayHarness,
) -> None:
    writer = await RpcClient.open(gateway.ws_url(STORE), STORE)
    await pushed(writer, 1, 2)
    old_backend = await writer.backend_id()
    assert await gateway.gw.admin.delete(STORE, actor="test") is True
    assert await closed_with(writer) == (4004, "store deleted")
    assert await gateway.gw.admin.store(STORE) is None
    assert await gateway.gw.admin.delete(STORE, actor="test") is False
    assert await gateway.gw.admin.reset(STORE, actor="test") is None

    again = await RpcClient.open(gateway.ws_url(STORE), STORE)
    items = await again.pull()
    assert items[0]["backendId"] != old_backend
    assert events_of(items) == []
    await again.close()


async def test_stores_lists_with_live_subscribers(gateway: GatewayHarness) -> None:
    clients = []
    for store_id in ("t-a", "t-b", "u-c"):
        client = await RpcClient.open(gateway.ws_url(store_id), store_id)
        await pushed(client, 1, 2)
        clients.append(client)
    await clients[0].live_pull()
    listed, following = await gateway.gw.admin.stores(prefix="t-")
    assert following is None
    assert [(s["storeId"], s["head"], s["liveSubscribers"]) for s in listed] == [
        ("t-a", 2, 1),
        ("t-b", 2, 0),
    ]
    assert listed[0]["bytes"] > 0
    assert listed[0]["lastWriteAt"] >= listed[0]["createdAt"]
    page, following = await gateway.gw.admin.stores(after="t-a", limit=1)
    assert [s["storeId"] for s in page] == ["t-b"]
    assert following == "t-b"
    for client in clients:
        await client.close()


async def test_sessions_are_listed_and_disconnected_by_filter(
    make_gateway: MakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = await make_gateway()
    a1 = await RpcClient.open(gateway.ws_url("a", payload={"instanceId": "i-1"}), "a")
    a2 = await RpcClient.open(gateway.ws_url("a", payload={"instanceId": "i-2"}), "a")
    b1 = await RpcClient.open(gateway.ws_url("b", payload={"instanceId": "i-1"}), "b")
    sessions = gateway.gw.admin.sessions()
    assert sorted((s["storeId"], s["instanceId"]) for s in sessions) == [
        ("a", "i-1"),
        ("a", "i-2"),
        ("b", "i-1"),
    ]
    assert {s["transport"] for s in sessions} == {"ws"}
    assert all(s["remoteAddr"].startswith("127.0.0.1") for s in sessions)
    assert [s["storeId"] for s in gateway.gw.admin.sessions(instance_id="i-2")] == ["a"]

    caplog.set_level(logging.INFO, logger="gateway.audit")
    closed = await gateway.gw.admin.disconnect(store_id="a", instance_id="i-1", actor="test")
    assert closed == 1
    assert await closed_with(a1) == (4004, "disconnected by operator")
    assert "action=sessions.disconnect store=a subject=None instance=i-1" in caplog.text
    assert a2.ws.close_code is None
    assert b1.ws.close_code is None
    assert await gateway.gw.admin.disconnect(instance_id="i-1", actor="test") == 1
    assert await closed_with(b1) == (4004, "disconnected by operator")
    with pytest.raises(ValueError, match="needs a store"):
        await gateway.gw.admin.disconnect(actor="test")
    await a2.close()


# -- the engine: a push waiting for the store's lock when it is reset ----------------------


class GatedStore(SqliteStore):
    """The real SQLite store whose appends wait for ``gate`` (to hold a push in flight)."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.gate = asyncio.Event()
        self.appending = asyncio.Event()

    async def append(
        self,
        store_id: str,
        expected_head: int,
        events: Sequence[NewEvent],
        created_ms: int,
        writer: Writer | None = None,
    ) -> None:
        self.appending.set()
        await self.gate.wait()
        await super().append(store_id, expected_head, events, created_ms, writer)


def push_request(start: int, n: int, backend_id: str) -> PushRequest:
    batch = [NewEvent(seq, seq - 1, b'{"name":"e"}') for seq in range(start, start + n)]
    return PushRequest(store_id=STORE, batch=batch, backend_id=backend_id)


async def lock_waiters(engine: SyncEngine, n: int) -> None:
    """Yield until ``n`` tasks wait for the store's lock (bounded, no sleep)."""
    state = await engine.state(STORE)
    for _ in range(1000):
        if len(getattr(state.lock, "_waiters", None) or ()) >= n:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never {n} waiters on the store's lock")


async def test_a_push_in_flight_finishes_and_one_waiting_is_told_of_the_new_backend(
    tmp_path: Path,
) -> None:
    store = GatedStore(tmp_path)
    await store.open()
    engine = SyncEngine(store, Hub())
    retired: list[tuple[str, str]] = []
    engine.on_retired = lambda store_id, what: retired.append((store_id, what))
    try:
        old = (await engine.state(STORE)).backend_id
        first = asyncio.create_task(engine.push(push_request(1, 2, old)))
        await store.appending.wait()  # the first push holds the lock, inside its append
        reset = asyncio.create_task(engine.retire(STORE, "reset", lambda: store.reset_store(STORE)))
        await lock_waiters(engine, 1)
        second = asyncio.create_task(engine.push(push_request(3, 1, old)))
        await lock_waiters(engine, 2)
        store.gate.set()
        assert await first is None, "the push in flight is written and acked"
        meta = await reset
        assert isinstance(meta, StoreMeta)
        answer = await second
        assert isinstance(answer, BackendIdMismatch)
        assert (answer.expected, answer.received) == (meta.backend_id, old)
        assert retired == [(STORE, "reset")]
        assert (await engine.state(STORE)).head == 0
        assert await store.read(STORE, 0, 100, 100) == []
    finally:
        await engine.close()
        await store.close()


# -- several nodes on one PostgreSQL log ------------------------------------------------------


@pytest.mark.postgres
async def test_a_reset_on_one_node_closes_the_store_sessions_on_the_other(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    """Node 2 drops its copy of the store when node 1 resets it: its sessions close (4004) and
    it serves the new backendId; a delete does the same."""
    async with postgres_nodes(make_gateway, tmp_path) as nodes:
        writer = await RpcClient.open(nodes[0].ws_url(STORE), STORE)
        await pushed(writer, 1, 2)
        old_backend = await writer.backend_id()
        follower = await RpcClient.open(nodes[1].ws_url(STORE), STORE)
        await follower.live_pull()
        bystander = await RpcClient.open(nodes[1].ws_url("other"), "other")

        meta = await nodes[0].gw.admin.reset(STORE, actor="test")
        assert meta is not None
        assert await closed_with(writer) == (4004, "store reset")
        assert await closed_with(follower) == (4004, "store reset")
        assert bystander.ws.close_code is None
        again = await RpcClient.open(nodes[1].ws_url(STORE), STORE)
        assert await again.backend_id() == meta.backend_id
        await pushed(again, 1, 1, meta.backend_id)

        # An operator's disconnect on node 1 closes the matching sessions on node 2 too.
        far = await RpcClient.open(
            nodes[1].ws_url(STORE, payload={"instanceId": "far-away"}), STORE
        )
        assert await nodes[0].gw.admin.disconnect(instance_id="far-away", actor="test") == 0
        assert await closed_with(far) == (4004, "disconnected by operator")
        assert again.ws.close_code is None

        # A live session on node 1 too: its close says node 1 heard of the delete, so that
        # the fresh session below is not one node 1 closes when the news arrives.
        watcher = await RpcClient.open(nodes[0].ws_url(STORE), STORE)
        await watcher.live_pull()
        assert await nodes[1].gw.admin.delete(STORE, actor="test") is True
        assert await closed_with(again) == (4004, "store deleted")
        assert await closed_with(watcher) == (4004, "store deleted")
        fresh = await RpcClient.open(nodes[0].ws_url(STORE), STORE)
        items = await fresh.pull()
        assert items[0]["backendId"] not in (old_backend, meta.backend_id)
        assert events_of(items) == []
        for client in (fresh, bystander):
            await client.close()
