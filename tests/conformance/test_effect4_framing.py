"""Effect 4 framing (LiveStore's next release) beside 0.4.0's, chosen per request by the id's
JSON type: numeric ids are echoed as numbers, a failed Exit's cause is an array of reasons,
and stream-closing Exits carry ``"value": null``. Wire level, on both transports; the real
Effect 4 RpcClient runs in tests/interop.
"""

from __future__ import annotations

from typing import Any

import orjson

from tests.helpers.clients import Connect
from tests.helpers.harness import GatewayHarness
from tests.helpers.http_client import http_post_json
from tests.helpers.wire import (
    HTTP_PULL,
    HTTP_PUSH,
    NONE,
    PULL,
    PUSH,
    make_events,
    new_store_id,
    seqs_of,
)


def _request(rid: int, tag: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {"_tag": "Request", "id": rid, "tag": tag, "payload": payload, "headers": []}


def _for(rid: int) -> Any:
    return lambda frame: frame.get("requestId") == rid and type(frame["requestId"]) is int


async def test_numeric_ids_over_websocket(gateway: GatewayHarness, connect: Connect) -> None:
    """A numeric-id push is acked under its numeric id; a live pull's Chunks carry it; a stale
    push fails with a cause array; Ack and Interrupt name requests by number."""
    store = new_store_id()
    client = await connect(gateway, store)
    base = {"storeId": store, "payload": None}
    await client.send(_request(0, PUSH, {**base, "batch": make_events(1, 2), "backendId": NONE}))
    ack = await client.recv_where(_for(0), what="the push's Exit")
    assert ack["exit"] == {"_tag": "Success", "value": {}}
    await client.send(_request(1, PULL, {**base, "cursor": NONE, "live": True}))
    chunk = await client.recv_where(_for(1), what="the pull's first Chunk")
    assert chunk["_tag"] == "Chunk"
    assert seqs_of(chunk["values"]) == [1, 2]
    await client.send({"_tag": "Ack", "requestId": 1})
    await client.send(_request(2, PUSH, {**base, "batch": make_events(1, 1), "backendId": NONE}))
    stale = await client.recv_where(_for(2), what="the stale push's Exit")
    assert stale["exit"]["_tag"] == "Failure"
    (reason,) = stale["exit"]["cause"]
    assert reason["_tag"] == "Fail"
    assert reason["error"] == {
        "_tag": "ServerAheadError",
        "minimumExpectedNum": 2,
        "providedNum": 0,
    }
    # The live pull goes on under its numeric id, and an Interrupt by number ends it.
    await client.send(_request(3, PUSH, {**base, "batch": make_events(3, 1), "backendId": NONE}))
    live = await client.recv_where(lambda f: _for(1)(f) and f["_tag"] == "Chunk", what="live")
    assert seqs_of(live["values"]) == [3]
    await client.recv_where(_for(3), what="the third push's Exit")
    await client.send({"_tag": "Interrupt", "requestId": 1})
    await client.send(_request(4, PULL, {**base, "cursor": NONE, "live": False}))
    frames: list[Any] = []
    while not frames or frames[-1]["_tag"] != "Exit":
        frames.append(await client.recv_where(_for(4), what="the finite pull"))
    assert frames[-1]["exit"] == {"_tag": "Success", "value": None}
    assert [s for f in frames[:-1] for s in seqs_of(f["values"])] == [1, 2, 3]
    assert gateway.gw.hub.subscriber_count(store) == 0


async def test_string_and_numeric_ids_keep_their_own_framing(
    gateway: GatewayHarness, connect: Connect
) -> None:
    """On one connection, request "5" gets the object cause and request 5 the array: the id's
    JSON type alone decides, and "5" and 5 are different requests."""
    store = new_store_id()
    client = await connect(gateway, store)
    bad = {"storeId": store, "batch": make_events(4, 1), "backendId": NONE}
    await client.send(_request(5, PUSH, bad))
    await client.send({**_request(5, PUSH, bad), "id": "5"})
    numeric = await client.recv_where(_for(5), what="the numeric Exit")
    text = await client.recv_where(lambda f: f.get("requestId") == "5", what="the string Exit")
    assert isinstance(numeric["exit"]["cause"], list)
    assert isinstance(text["exit"]["cause"], dict)
    assert numeric["exit"]["cause"][0] == text["exit"]["cause"]


async def test_numeric_ids_over_http(gateway: GatewayHarness) -> None:
    """The HTTP transport echoes numeric ids and uses the array cause too."""
    store = new_store_id()
    url = gateway.http_url(store)
    push = _request(0, HTTP_PUSH, {"storeId": store, "batch": make_events(1, 1), "backendId": NONE})
    answer = await http_post_json(url, push)
    assert answer.status == 200
    assert answer.body == [
        {"_tag": "Exit", "requestId": 0, "exit": {"_tag": "Success", "value": {}}}
    ]
    stale = await http_post_json(url, {**push, "id": 1})
    (exit_,) = stale.body
    assert exit_["requestId"] == 1
    assert exit_["exit"]["cause"][0]["error"]["_tag"] == "ServerAheadError"
    pull = _request(2, HTTP_PULL, {"storeId": store, "cursor": NONE})
    pulled = await http_post_json(url, pull)
    *chunks, last = pulled.body
    assert all(c["requestId"] == 2 for c in pulled.body)
    assert last["exit"] == {"_tag": "Success", "value": None}
    assert [s for c in chunks for s in seqs_of(c["values"])] == [1]
    assert orjson.dumps(last).startswith(b'{"_tag":"Exit","requestId":2,')


async def test_interrupt_then_pull_on_the_same_socket(
    gateway: GatewayHarness, connect: Connect
) -> None:
    """After a ServerAheadError the next client interrupts its live pull and at once pulls
    again from its saved cursor on the same socket: the new pull gets exactly the events
    after the cursor, then live ones; the old one gets nothing more."""
    store = new_store_id()
    client = await connect(gateway, store)
    other = await connect(gateway, store)
    base = {"storeId": store, "payload": None}
    await client.send(_request(0, PULL, {**base, "cursor": NONE, "live": True}))
    first = await client.recv_where(_for(0), what="the first pull's empty backlog")
    backend = first["values"][0]["backendId"]
    await other.push_ok(make_events(1, 3))
    seen: list[int] = []
    while len(seen) < 3:
        chunk = await client.recv_where(_for(0), what="live events")
        seen += seqs_of(chunk["values"])
    assert seen == [1, 2, 3]
    # Saved cursor: 2 (the app had not processed 3 yet). Interrupt and re-pull in one go.
    cursor = {"_tag": "Some", "value": {"backendId": backend, "eventSequenceNumber": 2}}
    await client.send({"_tag": "Interrupt", "requestId": 0})
    await client.send(_request(1, PULL, {**base, "cursor": cursor, "live": True}))
    again = await client.recv_where(_for(1), what="the new pull's backlog")
    assert seqs_of(again["values"]) == [3]
    await other.push_ok(make_events(4, 1))
    live = await client.recv_where(_for(1), what="the new pull's live event")
    assert seqs_of(live["values"]) == [4]
    assert gateway.gw.hub.subscriber_count(store) == 1
    assert [f for f in await client.barrier() if f.get("requestId") == 0] == []
