"""gateway.client against a real in-process gateway: follow, resume, commit, rebase, refusal."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import pytest

from gateway.client import BackendIdMismatch, Batch, Cursor, Refused, StoreClient, connect
from tests.helpers.clients import RpcClient
from tests.helpers.harness import GatewayHarness, MakeGateway
from tests.helpers.keys import BYPASS, SECRET
from tests.helpers.timeouts import TIMEOUT_UNIT
from tests.helpers.wire import events_of, make_events, new_store_id

WITHIN = 10 * TIMEOUT_UNIT


def client(gateway: GatewayHarness, store_id: str, **kwargs: Any) -> StoreClient:
    """A client of ``store_id`` with test-sized reconnect delays."""
    return connect(f"ws://{gateway.base}", store_id, backoff_base=0.05, **kwargs)


async def seed(gateway: GatewayHarness, store_id: str, count: int) -> None:
    """Push ``count`` events (seqNum 1..count) through a raw client, 100 per push."""
    raw = await RpcClient.open(gateway.ws_url(store_id), store_id)
    try:
        for start in range(1, count + 1, 100):
            await raw.push_ok(make_events(start, min(100, count - start + 1)))
    finally:
        await raw.close()


async def take(stream: AsyncIterator[Batch], count: int) -> list[Batch]:
    """Read batches until they hold ``count`` events (bounded by WITHIN)."""

    async def read() -> list[Batch]:
        batches: list[Batch] = []
        seen = 0
        while seen < count:
            batch = await anext(stream)
            batches.append(batch)
            seen += len(batch.events)
        return batches

    return await asyncio.wait_for(read(), WITHIN)


def seqs(batches: list[Batch]) -> list[int]:
    return [event.seq_num for batch in batches for event in batch.events]


def test_import_does_not_load_the_server() -> None:
    code = (
        "import sys, gateway.client\n"
        "heavy = {'gateway.app', 'gateway.engine', 'gateway.transport', 'gateway.store',"
        " 'jwt', 'uvloop', 'prometheus_client'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert result.stdout.strip() == "[]"


def test_cursor_round_trips_through_a_string() -> None:
    cursor = Cursor("bPNe8VII:a7WT8fF0KTftA", 42)
    assert Cursor.parse(str(cursor)) == cursor
    for bad in ("", "42", "x:abc", "42:", "-1:abc"):
        with pytest.raises(ValueError, match="not a cursor"):
            Cursor.parse(bad)


async def test_follows_from_the_start_then_live(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway()
    store_id = new_store_id()
    await seed(gateway, store_id, 250)
    async with (
        client(gateway, store_id) as follower,
        client(gateway, store_id) as writer,
        aclosing(follower.events()) as stream,
    ):
        caught_up = await take(stream, 250)
        assert seqs(caught_up) == list(range(1, 251))
        assert all(len(batch.events) <= 100 for batch in caught_up)
        assert caught_up[-1].cursor.seq == 250
        first = caught_up[0].events[0]
        assert (first.name, first.parent_seq_num, first.client_id) == (
            "v1.TestEvent",
            0,
            "client-test",
        )
        assert first.created_at is not None
        assert first.created_at.endswith("Z")
        assert await writer.commit_many([("v1.Live", {"n": n}) for n in range(3)]) == [
            251,
            252,
            253,
        ]
        live = await take(stream, 3)
        assert seqs(live) == [251, 252, 253]
        assert [event.args for batch in live for event in batch.events] == [
            {"n": 0},
            {"n": 1},
            {"n": 2},
        ]
        assert live[-1].cursor == Cursor(caught_up[-1].cursor.backend_id, 253)


async def test_resumes_from_a_persisted_cursor(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway()
    store_id = new_store_id()
    await seed(gateway, store_id, 230)
    async with client(gateway, store_id) as store:
        async with aclosing(store.events(live=False)) as stream:
            first = await anext(stream)
        saved = str(first.cursor)
        assert first.cursor.seq == first.events[-1].seq_num
        resumed = [batch async for batch in store.events(Cursor.parse(saved), live=False)]
        assert seqs([first, *resumed]) == list(range(1, 231))


async def test_live_false_stops_at_the_head(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway()
    store_id = new_store_id()
    async with client(gateway, store_id) as store:
        assert [batch async for batch in store.events(live=False)] == []
        await seed(gateway, store_id, 5)
        batches = [batch async for batch in store.events(live=False)]
        assert seqs(batches) == [1, 2, 3, 4, 5]
        at_head = [batch async for batch in store.events(batches[-1].cursor, live=False)]
        assert at_head == []


async def test_a_cursor_of_another_backend_raises_backend_id_mismatch(
    make_gateway: MakeGateway,
) -> None:
    gateway = await make_gateway()
    store_id = new_store_id()
    await seed(gateway, store_id, 3)
    async with client(gateway, store_id) as store:
        backend_id = [b async for b in store.events(live=False)][-1].cursor.backend_id
        with pytest.raises(BackendIdMismatch) as caught:
            async for _ in store.events(Cursor("another-backend", 3)):
                pass
        assert (caught.value.expected, caught.value.received) == (backend_id, "another-backend")


async def test_commits_return_seq_nums_that_other_clients_see(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway()
    store_id = new_store_id()
    await seed(gateway, store_id, 2)
    async with client(gateway, store_id, client_id="svc", session_id="s1") as store:
        assert await store.commit("todoCreated-v1", {"id": "t1"}) == 3
        assert await store.commit_many([("todoCreated-v1", {"id": f"t{i}"}) for i in (2, 3)]) == [
            4,
            5,
        ]
        many = await store.commit_many([("bulk-v1", {"i": i}) for i in range(150)])
        assert many == list(range(6, 156))
        assert await store.commit_many([]) == []
    raw = await RpcClient.open(gateway.ws_url(store_id), store_id)
    try:
        events = events_of(await raw.pull())
    finally:
        await raw.close()
    assert [e["seqNum"] for e in events] == list(range(1, 156))
    assert events[2] == {
        "name": "todoCreated-v1",
        "args": {"id": "t1"},
        "seqNum": 3,
        "parentSeqNum": 2,
        "clientId": "svc",
        "sessionId": "s1",
    }
    assert [e["args"] for e in events[3:5]] == [{"id": "t2"}, {"id": "t3"}]


async def test_concurrent_writers_rebase_into_a_gap_free_log(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway()
    store_id = new_store_id()
    per_writer = 30

    async def write(name: str) -> list[int]:
        async with client(gateway, store_id, client_id=name) as store:
            got: list[int] = []
            for n in range(per_writer):
                if n % 3 == 0:
                    got += await store.commit_many([(name, {"n": n}), (name, {"n": n, "b": 1})])
                else:
                    got.append(await store.commit(name, {"n": n}))
            return got

    a, b = await asyncio.wait_for(asyncio.gather(write("a"), write("b")), WITHIN)
    async with client(gateway, store_id) as reader:
        log = [e for batch in [x async for x in reader.events(live=False)] for e in batch.events]
    assert [e.seq_num for e in log] == list(range(1, len(a) + len(b) + 1))
    assert [e.parent_seq_num for e in log] == list(range(len(log)))
    assert a == [e.seq_num for e in log if e.client_id == "a"]
    assert b == [e.seq_num for e in log if e.client_id == "b"]


async def test_wrong_token_in_production_is_refused_without_retrying(
    make_gateway: MakeGateway,
) -> None:
    gateway = await make_gateway(require_auth=True, jwt_secret=SECRET, bypass_token=BYPASS)
    store_id = new_store_id()
    refused = client(gateway, store_id, auth_token="not-a-jwt")
    with pytest.raises(Refused) as caught:
        await asyncio.wait_for(refused.__aenter__(), 2 * TIMEOUT_UNIT)
    assert (caught.value.status, caught.value.code) == (401, "INVALID_TOKEN")
    async with client(gateway, store_id, bypass_token=BYPASS) as service:
        assert await service.commit("ok-v1", {}) == 1
