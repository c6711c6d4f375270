"""Idle stores leave memory (``store.unload_idle_after``) and come back from the log intact.

The engine-level tests drive ``SyncEngine.unload_idle`` with an explicit clock on a real SQLite
(and PostgreSQL) store; the server-level test waits for the periodic unload through ``/stats``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from gateway.engine import Backlog, SyncEngine
from gateway.errors import ServerAhead
from gateway.hub import Hub, Subscription
from gateway.protocol import Cursor, PullRequest, PushRequest
from tests.helpers.clients import RpcClient
from tests.helpers.fakes import RecordingOutbox, new_events
from tests.helpers.harness import GatewayHarness, MakeGateway
from tests.helpers.http_client import http_request
from tests.helpers.postgres import POSTGRES_DSN, drop_schema, fresh_schema, require_postgres
from tests.helpers.timeouts import TIMEOUT_UNIT
from tests.helpers.wire import cursor, make_events, new_store_id, seqs_of

pytestmark = pytest.mark.timeout(60 * TIMEOUT_UNIT)


async def _push(engine: SyncEngine, store_id: str, first: int, n: int) -> None:
    error = await engine.push(
        PushRequest(store_id=store_id, batch=new_events(first, n), backend_id=None)
    )
    assert error is None, error


async def test_idle_store_unloads_and_reloads_with_its_head_and_backend(
    engine: SyncEngine,
) -> None:
    await _push(engine, "a", 1, 3)
    backend = (await engine.state("a")).backend_id
    assert engine.stores_loaded == 1
    # Not idle long enough: stays.
    assert engine.unload_idle(60.0) == 0
    assert engine.unload_idle(60.0, now=time.monotonic() + 61.0) == 1
    assert engine.stores_loaded == 0
    assert engine.counters.stores_unloaded == 1
    # The next push continues from the durable head; a stale one is still refused.
    await _push(engine, "a", 4, 2)
    state = await engine.state("a")
    assert (state.head, state.backend_id) == (5, backend)
    stale = await engine.push(PushRequest(store_id="a", batch=new_events(3, 1), backend_id=None))
    assert stale is not None
    assert isinstance(stale, ServerAhead), stale


async def test_store_with_a_live_pull_or_a_push_in_flight_stays(engine: SyncEngine) -> None:
    await _push(engine, "live", 1, 1)
    await _push(engine, "busy", 1, 1)
    await _push(engine, "idle", 1, 1)
    sink = RecordingOutbox()
    subscription = Subscription(sink, "live", b'"7"')
    opened = await engine.open_pull(
        PullRequest(store_id="live", cursor=None, live=True), subscription
    )
    assert isinstance(opened, Backlog), opened
    busy = await engine.state("busy")
    later = time.monotonic() + 3600.0
    async with busy.lock:  # what an admission holds while it writes
        assert engine.unload_idle(1.0, now=later) == 1
    assert engine.stores_loaded == 2
    # The live pull still receives what is pushed after the sweep.
    subscription.go_live()
    await _push(engine, "live", 2, 1)
    assert len(sink.frames) == 1
    assert b'"seqNum":2' in sink.frames[0]
    # Once the pull ends and the lock is free, both go.
    engine.hub.unsubscribe(subscription)
    assert engine.unload_idle(1.0, now=later + 3600.0) == 2
    assert engine.stores_loaded == 0


async def test_pull_after_unload_sees_the_whole_log(engine: SyncEngine) -> None:
    await _push(engine, "s", 1, 5)
    backend = (await engine.state("s")).backend_id
    assert engine.unload_idle(1.0, now=time.monotonic() + 10.0) == 1
    request = PullRequest(store_id="s", cursor=Cursor(backend_id=backend, seq=2), live=False)
    # Unloaded: the synchronous path declines, the loading path answers.
    assert engine.open_pull_now(request) is None
    opened = await engine.open_pull(request)
    assert isinstance(opened, Backlog), opened
    assert (opened.after, opened.upto) == (2, 5)
    items = [item async for item in engine.backlog_items(opened)]
    assert sum(item.count(b'"eventEncoded"') for item in items) == 3


async def test_postgres_node_reloads_what_other_nodes_wrote() -> None:
    await require_postgres()
    from gateway.store.postgres import PostgresStore

    schema = fresh_schema()
    stores = [PostgresStore(POSTGRES_DSN, schema=schema) for _ in range(2)]
    for store in stores:
        await store.open()
    engines = [SyncEngine(store, Hub()) for store in stores]
    try:
        await _push(engines[0], "shared", 1, 2)
        assert engines[0].unload_idle(1.0, now=time.monotonic() + 10.0) == 1
        await _push(engines[1], "shared", 3, 2)  # node 2 writes while node 1 has it unloaded
        await _push(engines[0], "shared", 5, 1)  # node 1 reloads the head written by node 2
        state = await engines[0].state("shared")
        assert state.head == 5
        opened = await engines[0].open_pull(PullRequest(store_id="shared", cursor=None, live=False))
        assert isinstance(opened, Backlog), opened
        items = [item async for item in engines[0].backlog_items(opened)]
        assert sum(item.count(b'"eventEncoded"') for item in items) == 5
    finally:
        for engine in engines:
            await engine.close()
        for store in stores:
            await store.close()
        await drop_schema(schema)


async def _stats(gw: GatewayHarness) -> dict[str, Any]:
    result = await http_request("GET", f"http://{gw.base}/stats")
    assert result.status == 200, result.raw[:300]
    assert isinstance(result.body, dict)
    return result.body


async def test_server_unloads_idle_stores_and_serves_them_again(make_gateway: MakeGateway) -> None:
    gw = await make_gateway(unload_idle_after=0.2)
    store = new_store_id()
    client = await RpcClient.open(gw.ws_url(store), store)
    try:
        await client.push_ok(make_events(1, 4))
        backend = await client.backend_id()
    finally:
        await client.close()
    async with asyncio.timeout(10 * TIMEOUT_UNIT):
        while (await _stats(gw))["stores_loaded"]:  # noqa: ASYNC110 - polls an HTTP endpoint
            await asyncio.sleep(0.05)
    client = await RpcClient.open(gw.ws_url(store), store)
    try:
        items = await client.pull(cursor(backend, 1))
        assert seqs_of(items) == [2, 3, 4]
        await client.push_ok(make_events(5, 1), backend)
        assert seqs_of(await client.pull()) == [1, 2, 3, 4, 5]
    finally:
        await client.close()


async def test_reload_applies_unloading_and_refuses_other_store_settings(
    make_gateway: MakeGateway,
) -> None:
    """store.unload_idle_after changes on reload; the other store settings are read once at
    start, so a reload that changes one is refused (naming it) instead of being ignored."""
    import dataclasses

    from gateway.errors import ConfigError

    gw = await make_gateway()
    config = gw.config
    faster = dataclasses.replace(config.store, unload_idle_after=1.0)
    await gw.gw.reload(dataclasses.replace(config, store=faster))
    assert gw.gw.config.store.unload_idle_after == 1.0
    restart_only: list[tuple[str, Any]] = [
        ("pool_max", 50),
        ("synchronous", "normal"),
        ("reconcile_interval", 1.0),
    ]
    for key, value in restart_only:
        changed = dataclasses.replace(faster, **{key: value})
        with pytest.raises(ConfigError, match=f"store.{key}"):
            await gw.gw.reload(dataclasses.replace(config, store=changed))
    assert gw.gw.config.store == faster
