"""§14 conformance, "Flow control and lifecycle": cases 29 to 34."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from tests.helpers.clients import Connect, RpcClient, open_raw_socket
from tests.helpers.harness import GatewayHarness, MakeGateway
from tests.helpers.timeouts import TIMEOUT_UNIT
from tests.helpers.wire import (
    NONE,
    PULL,
    assert_die,
    cursor,
    events_of,
    for_request,
    is_chunk,
    is_exit,
    make_events,
    new_store_id,
    seqs_of,
)

pytestmark = pytest.mark.timeout(60 * TIMEOUT_UNIT)


def _chunks_for(frames: list[Any], rid: str) -> list[Any]:
    return [f for f in frames if is_chunk(f, rid)]


async def test_case_29_acks_never_get_a_reply(gateway: GatewayHarness, connect: Connect) -> None:
    """Acks for active, finished or unknown request ids cause no error and no reply."""
    store = new_store_id()
    client = await connect(gateway, store)
    live_rid, _ = await client.live_pull()
    finished_rid = await client.send_pull(live=False)
    await client.collect(finished_rid)
    push_rid = await client.send_push(make_events(1, 1))
    await client.recv_where(lambda f: is_exit(f, push_rid))
    await client.live_events(live_rid, 1)

    for rid in (live_rid, live_rid, finished_rid, push_rid, "424242", "not-a-number"):
        await client.send({"_tag": "Ack", "requestId": rid})
    assert await client.barrier() == []

    # The acked live pull still delivers.
    pusher = await connect(gateway, store)
    await pusher.push_ok(make_events(2, 1))
    assert [e["seqNum"] for e in await client.live_events(live_rid, 2)] == [2]
    assert await client.barrier() == []


async def test_case_30_interrupt_stops_only_that_stream(
    gateway: GatewayHarness, connect: Connect
) -> None:
    """After Interrupt X no Chunk for X arrives, while other live pulls keep receiving."""
    store = new_store_id()
    a = await connect(gateway, store)
    x, _ = await a.live_pull()
    y, _ = await a.live_pull()
    b = await connect(gateway, store)
    z, _ = await b.live_pull()
    pusher = await connect(gateway, store)

    await a.send({"_tag": "Interrupt", "requestId": x})
    await a.send({"_tag": "Interrupt", "requestId": "31337"})  # unknown id: harmless
    after_interrupt = await a.barrier()
    for frame in after_interrupt:
        # The only frame the server may send for X now is an interrupt Exit.
        assert is_exit(frame, x), frame
        assert frame["exit"].get("_tag") == "Failure", frame

    for seq in (1, 2, 3):
        batch = make_events(seq, 1)
        await pusher.push_ok(batch)
        assert await a.live_events(y, seq) == batch
        assert await b.live_events(z, seq) == batch
    rest = await a.barrier()
    assert _chunks_for(rest, x) == [], rest
    assert [f for f in rest if not is_exit(f, x)] == [], rest
    assert await b.barrier() == []


@pytest.mark.parametrize("how", ["close", "abort"])
async def test_case_31_closed_connection_drops_its_subscriptions(
    gateway: GatewayHarness, connect: Connect, how: str
) -> None:
    """Closing a connection drops its live pulls; later pushes still succeed and broadcast."""
    store = new_store_id()
    leavers = [await connect(gateway, store) for _ in range(5)]
    for leaver in leavers:
        await leaver.live_pull()
        await leaver.live_pull()
    stayer = await connect(gateway, store)
    rid, _ = await stayer.live_pull()
    for leaver in leavers:
        if how == "close":
            await leaver.close()
        else:
            leaver.ws.transport.abort()

    pusher = await connect(gateway, store)
    for seq in range(1, 6):
        batch = make_events(seq, 1)
        await pusher.push_ok(batch)
        assert await stayer.live_events(rid, seq) == batch
    assert seqs_of(await pusher.pull()) == [1, 2, 3, 4, 5]
    assert await stayer.barrier() == []


async def test_case_32_same_request_id_on_two_connections(
    gateway: GatewayHarness, connect: Connect
) -> None:
    """Two connections using request id "0" get separate streams; one Interrupt spares the other."""
    store = new_store_id()
    pusher = await connect(gateway, store)
    await pusher.push_ok(make_events(1, 1))
    backend_id = await pusher.backend_id()

    a = await connect(gateway, store)
    b = await connect(gateway, store)
    _, a_catch_up = await a.live_pull(rid="0")
    _, b_catch_up = await b.live_pull(cursor(backend_id, 1), rid="0")
    assert seqs_of(a_catch_up) == [1]
    assert seqs_of(b_catch_up) == []

    second = make_events(2, 1)
    await pusher.push_ok(second)
    assert await a.live_events("0", 2) == second
    assert await b.live_events("0", 2) == second

    await a.send({"_tag": "Interrupt", "requestId": "0"})
    for frame in await a.barrier():
        assert is_exit(frame, "0"), frame

    third = make_events(3, 1)
    await pusher.push_ok(third)
    assert await b.live_events("0", 3) == third
    fourth = make_events(4, 1)
    await pusher.push_ok(fourth)
    assert await b.live_events("0", 4) == fourth
    leftovers = await a.barrier()
    assert [f for f in leftovers if not is_exit(f, "0")] == [], leftovers
    assert await b.barrier() == []


DEFECT_FRAMES: dict[str, str | bytes] = {
    "not-json": "this is { not json",
    "truncated-json": '{"_tag":"Ping"',
    "json-array": '[{"_tag":"Ping"}]',
    "json-number": "42",
    "json-string": '"Ping"',
    "json-null": "null",
    "negative-request-id": orjson.dumps(
        {
            "_tag": "Request",
            "id": -7,
            "tag": PULL,
            "headers": [],
            "payload": {"storeId": "S", "live": False, "cursor": NONE},
        }
    ).decode(),
}


@pytest.mark.parametrize("name", sorted(DEFECT_FRAMES))
async def test_case_33_protocol_violations_answer_a_defect(
    gateway: GatewayHarness, connect: Connect, name: str
) -> None:
    """A non-JSON frame, a non-object or an id that is neither a string nor a safe integer
    gets a Defect; the connection lives on."""
    store = new_store_id()
    bystander = await connect(gateway, store)
    bystander_rid, _ = await bystander.live_pull()
    client = await connect(gateway, store)
    frame = DEFECT_FRAMES[name]
    if isinstance(frame, str):
        frame = frame.replace('"S"', orjson.dumps(store).decode())
    await client.send_raw(frame)
    frames = await client.barrier()
    assert len(frames) == 1, frames
    (defect,) = frames
    assert isinstance(defect, dict), defect
    assert defect.get("_tag") == "Defect", defect
    assert "defect" in defect, defect
    assert "requestId" not in defect, defect
    await _still_serving(client, bystander, bystander_rid)


async def test_case_33_unknown_rpc_tag_dies_that_request(
    gateway: GatewayHarness, connect: Connect
) -> None:
    """A Request with an unknown RPC tag gets Exit Failure/Die for its id; nothing else breaks."""
    store = new_store_id()
    bystander = await connect(gateway, store)
    bystander_rid, _ = await bystander.live_pull()
    client = await connect(gateway, store)
    own_rid, _ = await client.live_pull()
    rid = await client.request("SyncWsRpc.Nope", {"storeId": store})
    frames = await client.collect(rid)
    assert len(frames) == 1, frames
    assert_die(frames[0])
    await _still_serving(client, bystander, bystander_rid, own_rid)


IGNORABLE_FRAMES: dict[str, tuple[dict[str, Any], bool]] = {
    # name: (frame, whether the server decision says it is silently ignored)
    "bogus-tag": ({"_tag": "Bogus"}, True),
    "pong": ({"_tag": "Pong"}, True),
    "server-chunk": ({"_tag": "Chunk", "requestId": "5", "values": []}, True),
    "server-exit": ({"_tag": "Exit", "requestId": "5", "exit": {"_tag": "Success"}}, True),
    # Eof MAY interrupt in-flight requests (the reference does); a Defect is also tolerated.
    "eof": ({"_tag": "Eof"}, False),
    "no-tag": ({"noTag": True}, False),
}


@pytest.mark.parametrize("name", sorted(IGNORABLE_FRAMES))
async def test_case_33_unknown_top_level_tags_are_tolerated(
    gateway: GatewayHarness, connect: Connect, name: str
) -> None:
    """A frame with an unknown top-level ``_tag`` is ignored and breaks nothing."""
    frame, ignored = IGNORABLE_FRAMES[name]
    store = new_store_id()
    bystander = await connect(gateway, store)
    bystander_rid, _ = await bystander.live_pull()
    client = await connect(gateway, store)
    own_rid, _ = await client.live_pull()
    await client.send(frame)
    answers = await client.barrier()
    if ignored:
        assert answers == [], answers
        await _still_serving(client, bystander, bystander_rid, own_rid)
    else:
        for answer in answers:
            assert isinstance(answer, dict), answers
            assert answer.get("_tag") == "Defect" or is_exit(answer, own_rid), answers
        await _still_serving(client, bystander, bystander_rid)


async def _still_serving(
    client: RpcClient, bystander: RpcClient, bystander_rid: str, own_rid: str | None = None
) -> None:
    """The offending connection answers new requests; other connections are unaffected."""
    seq = len(events_of(await client.pull())) + 1
    batch = make_events(seq, 1)
    await client.push_ok(batch)
    assert await bystander.live_events(bystander_rid, seq) == batch
    if own_rid is not None:
        assert await client.live_events(own_rid, seq) == batch
    assert [f for f in await client.barrier() if not is_chunk(f)] == []


@pytest.mark.parametrize("phase", ["live", "catch-up"])
async def test_case_34_slow_consumer_is_evicted_without_blocking_others(
    make_gateway: MakeGateway, connect: Connect, phase: str
) -> None:
    """A subscriber that never reads does not stall pushes or others, and is disconnected."""
    limit = 256 * 1024
    gw = await make_gateway(send_buffer_limit=limit)
    store = new_store_id()
    pusher = await connect(gw, store)
    backlog = 0
    if phase == "catch-up":
        # A backlog of 20 pages: without Acks, the slow consumer's catch-up never finishes.
        backlog = 2000
        for start in range(1, backlog + 1, 100):
            await pusher.push_ok(make_events(start, 100, args_size=500))

    # The slow consumer: a tiny receive window, a one-frame queue, reading paused for good,
    # and no Acks ever.
    sock = await open_raw_socket("127.0.0.1", gw.port, rcvbuf=4096)
    slow = await connect(gw, store, sock=sock, max_queue=1, auto_ack=False)
    slow_rid = await slow.send_pull(live=True)
    first = await slow.recv_for(slow_rid)
    assert is_chunk(first, slow_rid), first
    slow.ws.transport.pause_reading()

    healthy = await connect(gw, store)
    healthy_rid, caught_up = await healthy.live_pull()
    assert len(seqs_of(caught_up)) == backlog

    pushes, per_push, size = 130, 4, 24_000  # ~12.5 MB in ~96 KB broadcasts
    total = backlog + pushes * per_push

    async def read_all() -> list[int]:
        seen: list[int] = list(range(1, backlog + 1))
        while not seen or seen[-1] < total:
            seen += [
                e["seqNum"]
                for e in await healthy.live_events(
                    healthy_rid, (seen[-1] if seen else 0) + 1, 20 * TIMEOUT_UNIT
                )
            ]
        return seen

    reader = asyncio.create_task(read_all())
    try:
        started = time.monotonic()
        for i in range(pushes):
            batch = make_events(backlog + i * per_push + 1, per_push, args_size=size)
            frame = await pusher.push(batch, within=5 * TIMEOUT_UNIT)
            assert frame["exit"] == {"_tag": "Success", "value": {}}, frame
        push_time = time.monotonic() - started
        seen = await asyncio.wait_for(reader, 20 * TIMEOUT_UNIT)
    finally:
        reader.cancel()
    assert seen == list(range(1, total + 1))
    assert push_time < 30 * TIMEOUT_UNIT

    # Let the slow connection read again: it must find that the server has closed it.
    slow.ws.transport.resume_reading()
    received = 0
    closed = False
    deadline = time.monotonic() + 15 * TIMEOUT_UNIT
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            parsed = orjson.loads(await asyncio.wait_for(slow.ws.recv(), remaining))
            if for_request(parsed, slow_rid) and is_chunk(parsed):
                received += len(events_of(parsed["values"]))
    except ConnectionClosed:
        closed = True
    except TimeoutError:
        pass
    assert closed, f"slow consumer still connected after reading {received} of {total} events"
    assert received < total, "the slow consumer received everything: it was never evicted"

    # The store carries on.
    after = make_events(total + 1, 1)
    await pusher.push_ok(after)
    assert await healthy.live_events(healthy_rid, total + 1) == after
