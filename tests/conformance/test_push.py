"""§14 conformance, "Push": cases 16 to 28 (and malformed Push payloads)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from tests.helpers.clients import Connect, RpcClient
from tests.helpers.harness import GatewayHarness
from tests.helpers.http_client import http_rpc
from tests.helpers.timeouts import TIMEOUT_UNIT
from tests.helpers.wire import (
    HTTP_PUSH,
    NO_MORE,
    NONE,
    PUSH,
    assert_die,
    assert_fail,
    assert_pull_response,
    assert_push_ok,
    cursor,
    events_of,
    is_chunk,
    is_exit,
    make_events,
    new_store_id,
    seqs_of,
)

pytestmark = pytest.mark.timeout(60 * TIMEOUT_UNIT)

MIB = 1024 * 1024


def _ahead(head: int, provided: int) -> dict[str, Any]:
    return {"_tag": "ServerAheadError", "minimumExpectedNum": head, "providedNum": provided}


async def test_case_16_push_on_empty_store_succeeds(
    gateway: GatewayHarness, connect: Connect
) -> None:
    """Pushing [seq1/p0, seq2/p1] with backendId None on an empty store answers Success {}."""
    client = await connect(gateway, new_store_id())
    rid = await client.send_push(make_events(1, 2), None)
    frame = await client.wait_exit(rid)
    assert frame == {"_tag": "Exit", "requestId": rid, "exit": {"_tag": "Success", "value": {}}}
    assert seqs_of(await client.pull()) == [1, 2]


async def test_case_17_push_reaches_other_live_pull(
    gateway: GatewayHarness, connect: Connect
) -> None:
    """A live pull on a second connection gets one Chunk with exactly the pushed events."""
    store = new_store_id()
    subscriber = await connect(gateway, store)
    live_rid, catch_up = await subscriber.live_pull()
    backend_id = catch_up[0]["backendId"]
    pusher = await connect(gateway, store)
    batch = make_events(1, 2)
    await pusher.push_ok(batch)

    frame = await subscriber.recv_for(live_rid)
    assert is_chunk(frame, live_rid), frame
    assert len(frame["values"]) == 1, frame
    (item,) = frame["values"]
    assert_pull_response(item, backend_id)
    assert item["pageInfo"] == NO_MORE
    assert events_of([item]) == batch
    assert await subscriber.barrier() == []


async def test_case_18_push_is_echoed_to_the_pusher(
    gateway: GatewayHarness, connect: Connect
) -> None:
    """A live pull on the pushing connection also receives the pushed events (the echo)."""
    client = await connect(gateway, new_store_id())
    live_rid, catch_up = await client.live_pull()
    backend_id = catch_up[0]["backendId"]
    batch = make_events(1, 2)
    push_rid = await client.send_push(batch, backend_id)
    # The ack may come before or after the echo; collect both.
    assert_push_ok(await client.wait_exit(push_rid))
    echoed = await client.live_events(live_rid, 2)
    assert echoed == batch
    assert await client.barrier() == []


async def test_case_19_stale_push_gets_server_ahead(
    gateway: GatewayHarness, connect: Connect
) -> None:
    """A push whose parent is not the head gets ServerAheadError{head, parent}; nothing changes."""
    store = new_store_id()
    subscriber = await connect(gateway, store)
    live_rid, _ = await subscriber.live_pull()
    pusher = await connect(gateway, store)
    await pusher.push_ok(make_events(1, 2))
    assert [e["seqNum"] for e in await subscriber.live_events(live_rid, 2)] == [1, 2]

    for seq, parent in ((2, 1), (1, 0), (6, 5), (3, 1)):
        frame = await pusher.push(make_events(seq, 1, parent, client_id="stale"))
        assert assert_fail(frame, "ServerAheadError") == _ahead(2, parent)

    # Nothing stored: the log is unchanged, and the head is still 2.
    assert seqs_of(await pusher.pull()) == [1, 2]
    follow_up = make_events(3, 1, 2)
    await pusher.push_ok(follow_up)
    # Nothing broadcast: the subscriber's next live events are exactly the follow-up push.
    frame = await subscriber.recv_for(live_rid)
    assert is_chunk(frame), frame
    assert events_of(frame["values"]) == follow_up
    assert await subscriber.barrier() == []


async def test_case_20_push_with_wrong_backend_id(
    gateway: GatewayHarness, connect: Connect
) -> None:
    """A push with backendId Some("wrong") gets BackendIdMismatchError and stores nothing."""
    store = new_store_id()
    subscriber = await connect(gateway, store)
    live_rid, catch_up = await subscriber.live_pull()
    backend_id = catch_up[0]["backendId"]
    pusher = await connect(gateway, store)

    frame = await pusher.push(make_events(1, 1), "wrong")
    error = assert_fail(frame, "BackendIdMismatchError")
    assert error == {"_tag": "BackendIdMismatchError", "expected": backend_id, "received": "wrong"}
    assert events_of(await pusher.pull()) == []

    good = make_events(1, 1, client_id="good")
    await pusher.push_ok(good, backend_id)
    frame = await subscriber.recv_for(live_rid)
    assert is_chunk(frame), frame
    assert events_of(frame["values"]) == good


async def test_case_21_empty_batch_succeeds_without_broadcast(
    gateway: GatewayHarness, connect: Connect
) -> None:
    """An empty batch answers Success {} and broadcasts nothing."""
    store = new_store_id()
    subscriber = await connect(gateway, store)
    live_rid, _ = await subscriber.live_pull()
    pusher = await connect(gateway, store)

    rid = await pusher.send_push([], None)
    assert await pusher.wait_exit(rid) == {
        "_tag": "Exit",
        "requestId": rid,
        "exit": {"_tag": "Success", "value": {}},
    }
    first = make_events(1, 1)
    await pusher.push_ok(first)
    await pusher.push_ok([])
    second = make_events(2, 1)
    await pusher.push_ok(second)

    for expected in (first, second):
        frame = await subscriber.recv_for(live_rid)
        assert is_chunk(frame), frame
        assert events_of(frame["values"]) == expected
    assert await subscriber.barrier() == []
    assert seqs_of(await pusher.pull()) == [1, 2]


async def test_case_22_first_event_may_skip_sequence_numbers(
    gateway: GatewayHarness, connect: Connect
) -> None:
    """seqNum 100 / parent 0 on an empty store is accepted, and later pushes chain from 100."""
    client = await connect(gateway, new_store_id())
    jump = make_events(100, 1, 0)
    await client.push_ok(jump)
    assert events_of(await client.pull()) == jump

    frame = await client.push(make_events(2, 1, 1))
    assert assert_fail(frame, "ServerAheadError") == _ahead(100, 1)
    await client.push_ok(make_events(101, 1, 100))
    assert seqs_of(await client.pull()) == [100, 101]


async def test_case_23_large_push_frames_are_accepted(
    gateway: GatewayHarness, connect: Connect
) -> None:
    """100 events of ~9 KB in one frame are accepted, and a 1 MiB inbound frame is not refused."""
    store = new_store_id()
    client = await connect(gateway, store)
    batch = make_events(1, 100, args_size=8_800)
    frame_bytes = orjson.dumps(
        {
            "_tag": "Request",
            "id": "900000",
            "tag": PUSH,
            "headers": [],
            "payload": {"storeId": store, "batch": batch, "backendId": NONE},
        }
    )
    assert 850_000 < len(frame_bytes) < MIB
    await client.send_raw(frame_bytes.decode())
    assert_push_ok(await client.wait_exit("900000"))
    assert events_of(await client.pull()) == batch

    # A frame of exactly 1 MiB: 100 more events, padded to the byte.
    big = make_events(101, 100, args_size=10_000)
    payload = {"storeId": store, "batch": big, "backendId": NONE}
    envelope = {"_tag": "Request", "id": "900001", "tag": PUSH, "headers": [], "payload": payload}
    big[-1]["args"]["pad"] += "y" * (MIB - len(orjson.dumps(envelope)))
    text = orjson.dumps(envelope).decode()
    assert len(text.encode()) == MIB
    await client.send_raw(text)
    assert_push_ok(await client.wait_exit("900001", 10 * TIMEOUT_UNIT))
    assert seqs_of(await client.pull()) == list(range(1, 201))


async def test_case_24_concurrent_pushes_have_one_winner(
    gateway: GatewayHarness, connect: Connect
) -> None:
    """Ten simultaneous pushes from the same head: one succeeds, nine get ServerAheadError."""
    store = new_store_id()
    clients = [await connect(gateway, store) for _ in range(10)]
    head = 0
    for _round in range(3):
        batches = [make_events(head + 1, 2, client_id=f"c{i}-r{_round}") for i in range(10)]
        rids = await asyncio.gather(
            *(c.send_push(b) for c, b in zip(clients, batches, strict=True))
        )
        exits = await asyncio.gather(
            *(c.wait_exit(rid) for c, rid in zip(clients, rids, strict=True))
        )
        winners = [i for i, f in enumerate(exits) if f["exit"].get("_tag") == "Success"]
        assert len(winners) == 1, exits
        (winner,) = winners
        assert_push_ok(exits[winner])
        for i, frame in enumerate(exits):
            if i != winner:
                assert assert_fail(frame, "ServerAheadError") == _ahead(head + 2, head)
        log = events_of(await clients[0].pull(cursor(await clients[0].backend_id(), head)))
        assert log == batches[winner]
        head += 2
    assert seqs_of(await clients[0].pull()) == list(range(1, head + 1))


async def test_case_24_concurrent_pushes_across_transports(
    gateway: GatewayHarness, connect: Connect
) -> None:
    """Simultaneous WS and HTTP pushes from the same head: exactly one wins."""
    store = new_store_id()
    ws_clients = [await connect(gateway, store) for _ in range(5)]
    await ws_clients[0].push_ok(make_events(1, 1))
    batches = [make_events(2, 2, client_id=f"contender-{i}") for i in range(10)]

    async def over_ws(client: RpcClient, batch: list[dict[str, Any]]) -> dict[str, Any]:
        return await client.push(batch)  # type: ignore[no-any-return]

    async def over_http(batch: list[dict[str, Any]]) -> dict[str, Any]:
        payload = {"storeId": store, "batch": batch, "backendId": NONE}
        result = await http_rpc(gateway.http_url(store), HTTP_PUSH, payload, "1")
        assert len(result.body) == 1, result.body
        return result.body[0]  # type: ignore[no-any-return]

    exits = await asyncio.gather(
        *(over_ws(c, b) for c, b in zip(ws_clients, batches[:5], strict=True)),
        *(over_http(b) for b in batches[5:]),
    )
    winners = [i for i, f in enumerate(exits) if f["exit"].get("_tag") == "Success"]
    assert len(winners) == 1, exits
    for i, frame in enumerate(exits):
        if i != winners[0]:
            assert assert_fail(frame, "ServerAheadError") == _ahead(3, 1)
    assert events_of(await ws_clients[1].pull())[1:] == batches[winners[0]]


async def _push_with_retries(client: RpcClient, quota: int, tag: str) -> int:
    """Push ``quota`` single events, each chained on the head last learnt; return attempts."""
    head = 0
    attempts = 0
    while quota:
        attempts += 1
        frame = await client.push(make_events(head + 1, 1, head, client_id=tag))
        if frame["exit"].get("_tag") == "Success":
            assert_push_ok(frame)
            head += 1
            quota -= 1
        else:
            error = assert_fail(frame, "ServerAheadError")
            assert error["providedNum"] == head
            assert error["minimumExpectedNum"] > head
            head = error["minimumExpectedNum"]
    return attempts


async def test_case_25_every_subscriber_sees_every_event_once_in_order(
    gateway: GatewayHarness, connect: Connect
) -> None:
    """With 3 live pullers pushing 200 events in contention, each sees 1..200 exactly once."""
    store = new_store_id()
    clients = [await connect(gateway, store) for _ in range(3)]
    rids = [(await c.live_pull())[0] for c in clients]
    attempts = await asyncio.gather(
        *(
            _push_with_retries(c, q, f"client-{i}")
            for i, (c, q) in enumerate(zip(clients, (67, 67, 66), strict=True))
        )
    )
    assert sum(attempts) >= 200

    log = events_of(await clients[0].pull())
    assert [e["seqNum"] for e in log] == list(range(1, 201))
    for client, rid in zip(clients, rids, strict=True):
        received = await client.live_events(rid, 200, 20 * TIMEOUT_UNIT)
        assert [e["seqNum"] for e in received] == list(range(1, 201))
        assert received == log
        leftovers = [f for f in await client.barrier() if is_chunk(f)]
        assert leftovers == [], leftovers


async def test_case_26_catch_up_to_live_handoff_loses_nothing(
    gateway: GatewayHarness, connect: Connect
) -> None:
    """Live pulls started while pushes are in flight see each later event exactly once."""
    store = new_store_id()
    quotas = (80, 80, 80)
    total = sum(quotas)
    pushers = [await connect(gateway, store) for _ in quotas]
    backend_id = await pushers[0].backend_id()
    pushing_done = asyncio.Event()

    async def push_all() -> None:
        await asyncio.gather(
            *(
                _push_with_retries(client, quota, f"pusher-{i}")
                for i, (client, quota) in enumerate(zip(pushers, quotas, strict=True))
            )
        )
        pushing_done.set()

    async def subscribe(k: int) -> tuple[RpcClient, list[tuple[str, int, list[int]]]]:
        """Open live pulls back to back on one connection until the pushes are over."""
        client = await connect(gateway, store)
        pulls: list[tuple[str, int, list[int]]] = []
        last = 0
        for j in range(15):
            if pushing_done.is_set():
                break
            # Alternate cursor None and a cursor a little behind what this connection has seen.
            after = 0 if (j + k) % 2 == 0 else max(last - 3, 0)
            rid, catch_up = await client.live_pull(
                None if after == 0 else cursor(backend_id, after)
            )
            seen = seqs_of(catch_up)
            last = seen[-1] if seen else last
            pulls.append((rid, after, seen))
        return client, pulls

    subscribing = asyncio.gather(*(subscribe(k) for k in range(4)))
    _, subscribers = await asyncio.gather(push_all(), subscribing)
    opened = 0
    for client, pulls in subscribers:
        for rid, after, seen in pulls:
            opened += 1
            if not seen or seen[-1] < total:
                live = await client.live_events(rid, total, 20 * TIMEOUT_UNIT)
                seen = seen + [e["seqNum"] for e in live]
            assert seen == list(range(after + 1, total + 1)), (rid, after)
        leftovers = [f for f in await client.barrier() if is_chunk(f)]
        assert leftovers == [], leftovers
    assert opened >= 4


async def test_case_27_restart_keeps_head_events_and_backend_id(
    gateway: GatewayHarness, connect: Connect
) -> None:
    """After a restart the log, head and backendId are unchanged and pushes still chain."""
    store = new_store_id()
    client = await connect(gateway, store)
    await client.push_ok(make_events(1, 2))
    await client.push_ok(make_events(3, 1))
    before = await client.pull()
    backend_id = before[0]["backendId"]
    await client.close()

    await gateway.restart()
    client = await connect(gateway, store)
    after = await client.pull()
    assert {item["backendId"] for item in after} == {backend_id}
    assert [entry for item in after for entry in item["batch"]] == [
        entry for item in before for entry in item["batch"]
    ]
    frame = await client.push(make_events(3, 1, 2, client_id="stale"))
    assert assert_fail(frame, "ServerAheadError") == _ahead(3, 2)
    await client.push_ok(make_events(4, 1, 3), backend_id)
    await client.close()

    await gateway.restart()
    client = await connect(gateway, store)
    frame = await client.push(make_events(4, 1, 3, client_id="stale"))
    assert assert_fail(frame, "ServerAheadError") == _ahead(4, 3)
    assert seqs_of(await client.pull(cursor(backend_id, 0))) == [1, 2, 3, 4]


@pytest.mark.parametrize("how", ["close", "drop"])
async def test_case_28_publication_survives_pusher_disconnect(
    gateway: GatewayHarness, connect: Connect, how: str
) -> None:
    """A pusher that disconnects right after sending its push does not lose the publication."""
    store = new_store_id()
    subscriber = await connect(gateway, store)
    live_rid, _ = await subscriber.live_pull()
    pusher = await connect(gateway, store)
    batch = make_events(1, 2, client_id="gone")
    await pusher.send_push(batch)
    if how == "close":
        await pusher.close()
    else:
        pusher.ws.transport.close()  # FIN without a closing handshake

    assert await subscriber.live_events(live_rid, 2) == batch
    other = await connect(gateway, store)
    follow_up = make_events(3, 1, 2, client_id="other")
    await other.push_ok(follow_up)
    assert await subscriber.live_events(live_rid, 3) == follow_up
    assert events_of(await other.pull()) == batch + follow_up


async def test_case_28_interrupted_push_is_all_or_nothing(
    gateway: GatewayHarness, connect: Connect
) -> None:
    """A push interrupted and abandoned at once is either stored and published, or neither."""
    store = new_store_id()
    subscriber = await connect(gateway, store)
    live_rid, _ = await subscriber.live_pull()
    pusher = await connect(gateway, store)
    abandoned = make_events(1, 2, client_id="gone")
    rid = await pusher.send_push(abandoned)
    await pusher.send({"_tag": "Interrupt", "requestId": rid})
    await pusher.close()

    other = await connect(gateway, store)
    contender = make_events(1, 2, client_id="other")
    frame = await other.push(contender)
    if frame["exit"].get("_tag") == "Success":
        winner = contender
    else:
        assert assert_fail(frame, "ServerAheadError") == _ahead(2, 0)
        winner = abandoned
    assert await subscriber.live_events(live_rid, 2) == winner
    assert events_of(await other.pull()) == winner
    assert await subscriber.barrier() == []


MALFORMED_PUSHES: dict[str, Any] = {
    "no-batch": {"storeId": "S", "backendId": NONE},
    "batch-not-list": {"storeId": "S", "batch": {"seqNum": 1}, "backendId": NONE},
    "no-backend-id": {"storeId": "S", "batch": "EVENTS"},
    "backend-id-null": {"storeId": "S", "batch": "EVENTS", "backendId": None},
    "backend-id-plain-string": {"storeId": "S", "batch": "EVENTS", "backendId": "B"},
    "seq-as-string": {"storeId": "S", "batch": "SEQ_STRING", "backendId": NONE},
    "seq-as-float": {"storeId": "S", "batch": "SEQ_FLOAT", "backendId": NONE},
    "event-without-name": {"storeId": "S", "batch": "NO_NAME", "backendId": NONE},
    "event-without-client-id": {"storeId": "S", "batch": "NO_CLIENT", "backendId": NONE},
    "event-not-object": {"storeId": "S", "batch": [1, 2], "backendId": NONE},
    "payload-not-object": ["not", "an", "object"],
}


def _malformed_push(name: str, store: str) -> Any:
    events = make_events(1, 1)
    variants: dict[str, Any] = {
        "EVENTS": events,
        "SEQ_STRING": [{**events[0], "seqNum": "1"}],
        "SEQ_FLOAT": [{**events[0], "seqNum": 1.5}],
        "NO_NAME": [{k: v for k, v in events[0].items() if k != "name"}],
        "NO_CLIENT": [{k: v for k, v in events[0].items() if k != "clientId"}],
    }
    payload = MALFORMED_PUSHES[name]
    if not isinstance(payload, dict):
        return payload
    payload = {**payload, "storeId": store}
    if isinstance(payload.get("batch"), str):
        payload["batch"] = variants[payload["batch"]]
    return payload


@pytest.mark.parametrize("name", sorted(MALFORMED_PUSHES))
async def test_case_15_malformed_push_fails_only_that_request(
    gateway: GatewayHarness, connect: Connect, name: str
) -> None:
    """A malformed Push payload gets an Exit with a Die cause, stores nothing, and harms no one."""
    store = new_store_id()
    client = await connect(gateway, store)
    live_rid, _ = await client.live_pull()
    rid = await client.request(PUSH, _malformed_push(name, store))
    frames = await client.collect(rid)
    assert len(frames) == 1, frames
    assert_die(frames[0])
    assert events_of(await client.pull()) == []
    good = make_events(1, 1)
    await client.push_ok(good)
    assert await client.live_events(live_rid, 1) == good
    assert await client.barrier() == []


@pytest.mark.parametrize(
    "batch",
    [
        pytest.param(make_events(1, 1) + make_events(5, 1, 3), id="parent-does-not-chain"),
        pytest.param(make_events(1, 2) + make_events(2, 1, 2), id="seq-repeats"),
        pytest.param(
            [*make_events(1, 1), {**make_events(2, 1)[0], "seqNum": 0, "parentSeqNum": 1}],
            id="seq-decreases",
        ),
    ],
)
async def test_case_19_non_chaining_batch_is_refused(
    gateway: GatewayHarness, connect: Connect, batch: list[dict[str, Any]]
) -> None:
    """A batch that does not chain internally fails with UnknownError and stores nothing."""
    client = await connect(gateway, new_store_id())
    frame = await client.push(batch)
    assert_fail(frame, "UnknownError")
    assert events_of(await client.pull()) == []
    await client.push_ok(make_events(1, 1))


async def test_case_19_push_for_another_store_id_is_refused(
    gateway: GatewayHarness, connect: Connect
) -> None:
    """A push whose payload.storeId differs from the URL's fails with UnknownError."""
    store = new_store_id()
    client = await connect(gateway, store)
    frame = await client.push(make_events(1, 1), store_id=new_store_id())
    assert_fail(frame, "UnknownError")
    assert events_of(await client.pull()) == []
    assert not any(is_exit(f) for f in await client.barrier())


async def test_case_27_restart_closes_open_connections(
    gateway: GatewayHarness, connect: Connect
) -> None:
    """A restart closes open sockets promptly (clients reconnect), and nothing is lost."""
    store = new_store_id()
    subscriber = await connect(gateway, store)
    await subscriber.live_pull()
    pusher = await connect(gateway, store)
    await pusher.push_ok(make_events(1, 2))
    started = time.monotonic()
    await gateway.restart()
    assert time.monotonic() - started < 5 * TIMEOUT_UNIT
    with pytest.raises(ConnectionClosed):  # noqa: PT012 - drain whatever was sent, then closed
        while True:
            await asyncio.wait_for(subscriber.ws.recv(), 5 * TIMEOUT_UNIT)
    again = await connect(gateway, store)
    assert seqs_of(await again.pull()) == [1, 2]
    await again.push_ok(make_events(3, 1))
