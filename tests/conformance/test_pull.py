"""§14 conformance, "Pull": cases 6 to 15."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import orjson
import pytest

from tests.helpers.clients import Connect, RpcClient
from tests.helpers.harness import GatewayHarness
from tests.helpers.http_client import http_rpc
from tests.helpers.timeouts import TIMEOUT_UNIT
from tests.helpers.wire import (
    HTTP_PULL,
    NO_MORE,
    NONE,
    PULL,
    PUSH,
    assert_die,
    assert_fail,
    assert_pull_response,
    assert_stream_success,
    assert_success,
    cursor,
    events_of,
    is_chunk,
    is_exit,
    make_events,
    new_store_id,
    request_frame,
    seqs_of,
)

pytestmark = pytest.mark.timeout(60 * TIMEOUT_UNIT)


async def _store_with_events(
    gateway: GatewayHarness, connect: Connect, n: int, per_push: int = 100
) -> tuple[RpcClient, list[dict[str, Any]]]:
    """A fresh store holding events 1..n, and a client connected to it."""
    client = await connect(gateway, new_store_id())
    pushed: list[dict[str, Any]] = []
    for start in range(1, n + 1, per_push):
        batch = make_events(start, min(per_push, n + 1 - start))
        await client.push_ok(batch)
        pushed.extend(batch)
    return client, pushed


def _empty_item(backend_id: str) -> dict[str, Any]:
    return {"batch": [], "pageInfo": NO_MORE, "backendId": backend_id}


async def test_case_06_live_pull_on_empty_store(gateway: GatewayHarness, connect: Connect) -> None:
    """A live pull on an empty store gets exactly one empty NoMore Chunk and no Exit."""
    client = await connect(gateway, new_store_id())
    rid = await client.send_pull(live=True)
    frame = await client.recv()
    assert isinstance(frame, dict), frame
    assert frame.get("_tag") == "Chunk", frame
    assert frame.get("requestId") == rid, frame
    values = frame.get("values")
    assert isinstance(values, list), frame
    assert len(values) == 1, frame
    backend_id = values[0].get("backendId")
    assert isinstance(backend_id, str), frame
    assert backend_id, frame
    assert values == [_empty_item(backend_id)], frame
    # No Exit (and nothing else) within 2 s.
    await client.expect_silence(2 * TIMEOUT_UNIT)
    assert await client.barrier() == []


async def test_case_07_non_live_pull_on_empty_store(
    gateway: GatewayHarness, connect: Connect
) -> None:
    """A non-live pull on an empty store gets the empty NoMore Chunk, then Exit Success."""
    client = await connect(gateway, new_store_id())
    rid = await client.send_pull(live=False)
    frames = await client.collect(rid)
    assert len(frames) == 2, frames
    chunk, exit_ = frames
    assert is_chunk(chunk, rid), chunk
    backend_id = chunk["values"][0]["backendId"]
    assert isinstance(backend_id, str), chunk
    assert backend_id, chunk
    assert chunk["values"] == [_empty_item(backend_id)], chunk
    assert_stream_success(exit_)
    assert exit_["exit"] in ({"_tag": "Success"}, {"_tag": "Success", "value": None}), exit_
    assert await client.barrier() == []


async def test_case_08_backend_id_is_stable(gateway: GatewayHarness, connect: Connect) -> None:
    """The backendId is one non-empty string across connections, transports and restarts."""
    store = new_store_id()
    first = await connect(gateway, store)
    backend_id = await first.backend_id()
    assert isinstance(backend_id, str)
    assert backend_id

    second = await connect(gateway, store)
    live_rid, live_items = await second.live_pull()
    assert {item["backendId"] for item in live_items} == {backend_id}
    await first.push_ok(make_events(1, 2), backend_id)
    assert {item["backendId"] for item in await second.pull()} == {backend_id}
    broadcast = await second.live_events(live_rid, 2)
    assert [e["seqNum"] for e in broadcast] == [1, 2]

    result = await http_rpc(gateway.http_url(store), HTTP_PULL, {"storeId": store, "cursor": NONE})
    chunks = [frame for frame in result.body if is_chunk(frame)]
    assert chunks, result.body
    assert {item["backendId"] for c in chunks for item in c["values"]} == {backend_id}

    await first.close()
    await second.close()
    await gateway.restart()
    after = await connect(gateway, store)
    items = await after.pull()
    assert {item["backendId"] for item in items} == {backend_id}
    assert seqs_of(items) == [1, 2]


async def test_case_08_backend_id_agrees_under_concurrent_first_use(
    gateway: GatewayHarness, connect: Connect
) -> None:
    """Many first requests for a new store at once all see one and the same backendId."""
    store = new_store_id()

    async def over_ws() -> set[str]:
        client = await connect(gateway, store)
        return {item["backendId"] for item in await client.pull()}

    async def over_http() -> set[str]:
        result = await http_rpc(
            gateway.http_url(store), HTTP_PULL, {"storeId": store, "cursor": NONE}
        )
        return {v["backendId"] for f in result.body if is_chunk(f) for v in f["values"]}

    seen = await asyncio.gather(*(over_ws() for _ in range(8)), *(over_http() for _ in range(8)))
    assert len(set().union(*seen)) == 1, seen


async def test_case_09_pull_returns_events_verbatim(
    gateway: GatewayHarness, connect: Connect
) -> None:
    """A pull from None returns every pushed event in order, field for field, with metadata."""
    client = await connect(gateway, new_store_id())
    first = make_events(1, 2, client_id="client-A")
    first[0]["args"] = {"nested": {"list": [1, 2.5, None, True, {"deep": "é😀"}]}, "big": 2**53 - 1}
    first[1]["args"] = None
    second = make_events(3, 1, client_id="client-B", session_id="other")
    await client.push_ok(first)
    await client.push_ok(second)

    items = await client.pull()
    events = events_of(items)
    assert [e["seqNum"] for e in events] == [1, 2, 3]
    for got, sent in zip(events, first + second, strict=True):
        assert got == sent
    for entry in (entry for item in items for entry in item["batch"]):
        assert set(entry) >= {"eventEncoded", "metadata"}, entry

    # A live pull's catch-up returns the same events.
    _, live_items = await client.live_pull()
    assert events_of(live_items) == events


async def test_case_09_missing_args_round_trip_as_absent_or_null(
    gateway: GatewayHarness, connect: Connect
) -> None:
    """An event pushed without ``args`` comes back with ``args`` absent or null."""
    client = await connect(gateway, new_store_id())
    batch = make_events(1, 1)
    del batch[0]["args"]
    await client.push_ok(batch)
    (event,) = events_of(await client.pull())
    assert event.get("args") is None, event
    rest = {k: v for k, v in event.items() if k != "args"}
    assert rest == batch[0]


async def test_case_10_cursor_pulls_only_later_events(
    gateway: GatewayHarness, connect: Connect
) -> None:
    """A cursor returns only events after it; at or beyond the head, one empty NoMore item."""
    client, pushed = await _store_with_events(gateway, connect, 3)
    backend_id = await client.backend_id()

    items = await client.pull(cursor(backend_id, 1))
    assert events_of(items) == pushed[1:]

    for at in (3, 99):
        assert await client.pull(cursor(backend_id, at)) == [_empty_item(backend_id)]

    rid, live_items = await client.live_pull(cursor(backend_id, 3))
    assert live_items == [_empty_item(backend_id)]
    await client.push_ok(make_events(4, 1), backend_id)
    assert [e["seqNum"] for e in await client.live_events(rid, 4)] == [4]


@pytest.mark.parametrize("live", [False, True])
async def test_case_11_cursor_with_wrong_backend_id(
    gateway: GatewayHarness, connect: Connect, live: bool
) -> None:
    """A cursor with a wrong backendId gets only Exit Fail BackendIdMismatchError, no Chunk."""
    client, _ = await _store_with_events(gateway, connect, 2)
    backend_id = await client.backend_id()
    rid = await client.send_pull(cursor("wrong", 1), live=live)
    frames = await client.collect(rid)
    assert len(frames) == 1, frames
    error = assert_fail(frames[0], "BackendIdMismatchError")
    assert error == {"_tag": "BackendIdMismatchError", "expected": backend_id, "received": "wrong"}
    assert await client.barrier() == []
    # The connection keeps working.
    assert seqs_of(await client.pull(cursor(backend_id, 0))) == [1, 2]


async def test_case_12_paging_250_events(gateway: GatewayHarness, connect: Connect) -> None:
    """250 events page as 100, 100, 50 with MoreKnown(150), MoreKnown(50), NoMore."""
    client, pushed = await _store_with_events(gateway, connect, 250)
    expected_pages = [
        {"_tag": "MoreKnown", "remaining": 150},
        {"_tag": "MoreKnown", "remaining": 50},
        NO_MORE,
    ]

    items = await client.pull()
    assert [len(item["batch"]) for item in items] == [100, 100, 50]
    assert [item["pageInfo"] for item in items] == expected_pages
    assert events_of(items) == pushed

    _, live_items = await client.live_pull()
    assert [len(item["batch"]) for item in live_items] == [100, 100, 50]
    assert [item["pageInfo"] for item in live_items] == expected_pages
    assert events_of(live_items) == pushed

    backend_id = items[0]["backendId"]
    tail = await client.pull(cursor(backend_id, 50))
    assert [len(item["batch"]) for item in tail] == [100, 100]
    assert [item["pageInfo"] for item in tail] == [{"_tag": "MoreKnown", "remaining": 100}, NO_MORE]
    assert events_of(tail) == pushed[50:]


async def test_case_13_large_events_page_under_900kb(
    gateway: GatewayHarness, connect: Connect
) -> None:
    """60 events of ~120 KB arrive complete and in order, each PullResponse at most 900,000 B."""
    store = new_store_id()
    subscriber = await connect(gateway, store)
    live_rid, _ = await subscriber.live_pull()
    pusher = await connect(gateway, store)
    pushed = make_events(1, 60, args_size=120_000)
    for start in range(0, 60, 7):
        batch = pushed[start : start + 7]
        assert len(orjson.dumps({"storeId": store, "batch": batch})) < 900_000
        await pusher.push_ok(batch)

    # Live broadcasts obey the same bound.
    live: list[dict[str, Any]] = []
    while len(live) < 60:
        for item in await subscriber.next_items(live_rid, 10 * TIMEOUT_UNIT):
            assert_pull_response(item)
            assert len(orjson.dumps(item)) <= 900_000
            assert item["pageInfo"] == NO_MORE, item["pageInfo"]
            live.extend(events_of([item]))
    assert live == pushed

    pulled = await pusher.pull(within=30 * TIMEOUT_UNIT)
    _, caught_up = await subscriber.live_pull()
    for items in (pulled, caught_up):
        for item in items:
            assert len(item["batch"]) <= 100
            assert len(orjson.dumps(item)) <= 900_000, len(orjson.dumps(item))
        assert events_of(items) == pushed


@pytest.mark.parametrize("rid", ["0", "41", "18446744073709551616", "007"])
async def test_case_14_request_id_echoed_exactly(
    gateway: GatewayHarness, connect: Connect, rid: str
) -> None:
    """Every Chunk has non-empty values and echoes the request id string exactly."""
    store = new_store_id()
    client = await connect(gateway, store)
    await client.push_ok(make_events(1, 2))

    await client.send_pull(live=False, rid=rid)
    frames = await client.collect(rid)
    assert frames[-1]["requestId"] == rid
    assert_stream_success(frames[-1])
    for frame in frames[:-1]:
        assert is_chunk(frame), frame
        assert frame["requestId"] == rid
        assert isinstance(frame["values"], list)
        assert frame["values"], frame

    live_rid, items = await client.live_pull(rid=rid)
    assert live_rid == rid
    assert seqs_of(items) == [1, 2]
    other = await connect(gateway, store)
    await other.push_ok(make_events(3, 1))
    frame = await client.recv_where(is_chunk)
    assert frame["requestId"] == rid, frame
    assert frame["values"], frame
    assert seqs_of(frame["values"]) == [3]


MALFORMED_PULLS: dict[str, Any] = {
    "no-cursor": {"storeId": "S", "live": False},
    "live-as-string": {"storeId": "S", "live": "true", "cursor": NONE},
    "no-live": {"storeId": "S", "cursor": NONE},
    "cursor-null": {"storeId": "S", "live": False, "cursor": None},
    "cursor-bad-tag": {"storeId": "S", "live": False, "cursor": {"_tag": "Maybe"}},
    "seq-as-string": {
        "storeId": "S",
        "live": False,
        "cursor": {"_tag": "Some", "value": {"backendId": "B", "eventSequenceNumber": "1"}},
    },
    "seq-as-float": {
        "storeId": "S",
        "live": False,
        "cursor": {"_tag": "Some", "value": {"backendId": "B", "eventSequenceNumber": 1.5}},
    },
    "cursor-without-backend": {
        "storeId": "S",
        "live": False,
        "cursor": {"_tag": "Some", "value": {"eventSequenceNumber": 1}},
    },
    "no-store-id": {"live": False, "cursor": NONE},
    "payload-not-object": "not an object",
    "payload-null": None,
}


@pytest.mark.parametrize("name", sorted(MALFORMED_PULLS))
async def test_case_15_malformed_pull_fails_only_that_request(
    gateway: GatewayHarness, connect: Connect, name: str
) -> None:
    """A malformed Pull payload gets an Exit with a Die cause; other requests continue."""
    store = new_store_id()
    client = await connect(gateway, store)
    live_rid, _ = await client.live_pull()
    backend_id = await client.backend_id()

    payload = orjson.loads(
        orjson.dumps(MALFORMED_PULLS[name])
        .replace(b'"S"', orjson.dumps(store))
        .replace(b'"B"', orjson.dumps(backend_id))
    )
    bad_rid = await client.request(PULL, payload)
    frames = await client.collect(bad_rid)
    assert len(frames) == 1, f"expected only an Exit for the malformed pull, got {frames!r}"
    assert_die(frames[0])

    # The connection and its live pull keep working.
    assert [item["batch"] for item in await client.pull()] == [[]]
    pusher = await connect(gateway, store)
    await pusher.push_ok(make_events(1, 1))
    assert [e["seqNum"] for e in await client.live_events(live_rid, 1)] == [1]
    assert await client.barrier() == []


async def test_case_09_lone_surrogate_in_args_round_trips(
    gateway: GatewayHarness, connect: Connect
) -> None:
    """Args holding a lone UTF-16 surrogate (as JSON.stringify escapes it) round-trip intact."""
    store = new_store_id()
    client = await connect(gateway, store)
    # JSON.stringify("\ud800") is the 8 characters "\ud800" with the escape kept (ES2019
    # well-formed stringify); Python's json module writes the same, orjson cannot.
    batch = make_events(1, 1)
    batch[0]["args"] = {"text": "broken emoji \ud83d", "ok": "fine"}
    frame = json.dumps(
        request_frame("500", PUSH, {"storeId": store, "batch": batch, "backendId": NONE})
    )
    assert "\\ud83d" in frame
    await client.send_raw(frame)
    answers = await client.barrier()
    assert [f for f in answers if not is_exit(f, "500")] == [], answers
    exit_ = answers[0] if answers else await client.wait_exit("500")
    assert_success(exit_)
    # Read raw frames with the stdlib parser, which (like JSON.parse) keeps lone surrogates.
    rid = await client.send_pull(live=False)
    entries = []
    while True:
        frame = json.loads(await asyncio.wait_for(client.ws.recv(), 5 * TIMEOUT_UNIT))
        if is_chunk(frame, rid):
            entries += [entry for item in frame["values"] for entry in item["batch"]]
            await client.send({"_tag": "Ack", "requestId": rid})
        elif is_exit(frame, rid):
            assert_stream_success(frame)
            break
    assert [entry["eventEncoded"] for entry in entries] == batch


async def test_case_12_long_backlog_pages_completely(
    gateway: GatewayHarness, connect: Connect
) -> None:
    """A 1,250-event backlog arrives complete, in pages of 100, on live and non-live pulls."""
    client, pushed = await _store_with_events(gateway, connect, 1250)
    pages = [100] * 12 + [50]
    remaining = [1250 - 100 * (i + 1) for i in range(12)]
    expected_info = [{"_tag": "MoreKnown", "remaining": r} for r in remaining] + [NO_MORE]

    items = await client.pull(within=20 * TIMEOUT_UNIT)
    assert [len(item["batch"]) for item in items] == pages
    assert [item["pageInfo"] for item in items] == expected_info
    assert events_of(items) == pushed

    _, live_items = await client.live_pull()
    assert [len(item["batch"]) for item in live_items] == pages
    assert events_of(live_items) == pushed

    store = client.store_id
    result = await http_rpc(gateway.http_url(store), HTTP_PULL, {"storeId": store, "cursor": NONE})
    http_items = [v for frame in result.body if is_chunk(frame) for v in frame["values"]]
    assert [len(item["batch"]) for item in http_items] == pages
    assert events_of(http_items) == pushed
    assert_stream_success(result.body[-1])


async def test_case_13_oversized_event_travels_alone(
    gateway: GatewayHarness, connect: Connect
) -> None:
    """An event over 900 KB (never sent by real clients) is paged alone, not failed (§15.3)."""
    store = new_store_id()
    client = await connect(gateway, store)
    small = make_events(1, 2)
    huge = make_events(3, 1, args_size=950_000)
    tail = make_events(4, 2)
    for batch in (small, huge, tail):
        await client.push_ok(batch)
    items = await client.pull()
    assert events_of(items) == small + huge + tail
    (alone,) = [item for item in items if 3 in seqs_of([item])]
    assert seqs_of([alone]) == [3]
    for item in items:
        if item is not alone:
            assert len(orjson.dumps(item)) <= 900_000


async def test_case_14_trace_fields_and_missing_headers_are_tolerated(
    gateway: GatewayHarness, connect: Connect
) -> None:
    """Requests with tracing fields, or without ``headers``, are served normally."""
    store = new_store_id()
    client = await connect(gateway, store)
    await client.send(
        {
            "_tag": "Request",
            "id": "7",
            "tag": PULL,
            "traceId": "45f9a0c2d3e4f5a6b7c8d9e0f1a2b3c4",
            "spanId": "3d08a1b2c3d4e5f6",
            "sampled": True,
            "headers": [],
            "payload": {"storeId": store, "live": False, "cursor": NONE},
        }
    )
    frames = await client.collect("7")
    assert_stream_success(frames[-1])
    await client.send(
        {
            "_tag": "Request",
            "id": "8",
            "tag": PULL,
            "traceId": "livestore-noop-trace-id",
            "spanId": "livestore-noop-span-id",
            "sampled": False,
            "payload": {"storeId": store, "live": False, "cursor": NONE},
        }
    )
    frames = await client.collect("8")
    assert [item["batch"] for item in frames[0]["values"]] == [[]]
    assert_stream_success(frames[-1])


async def test_case_30_interrupt_during_catch_up_stops_the_stream(
    gateway: GatewayHarness, connect: Connect
) -> None:
    """An Interrupt in the middle of a long catch-up stops its Chunks for good."""
    client, _ = await _store_with_events(gateway, connect, 2000)
    slow = await connect(gateway, client.store_id, auto_ack=False)
    rid = await slow.send_pull(live=True)
    first = await slow.recv_for(rid)
    assert is_chunk(first, rid), first
    await slow.send({"_tag": "Interrupt", "requestId": rid})
    before = await slow.barrier()
    # Acks for everything received so far would open the window of an ack-paced server.
    for frame in [first, *before]:
        if is_chunk(frame, rid):
            await slow.send({"_tag": "Ack", "requestId": rid})
    after = await slow.barrier()
    assert [f for f in after if is_chunk(f, rid)] == [], after
    received = seqs_of([item for f in [first, *before] if is_chunk(f) for item in f["values"]])
    assert received == list(range(1, len(received) + 1))
    # New events do not reach the interrupted pull either.
    await client.push_ok(make_events(2001, 1))
    assert [f for f in await slow.barrier() if is_chunk(f, rid)] == []
