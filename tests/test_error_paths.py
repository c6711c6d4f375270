"""README promises on the error paths ("HTTP status codes", "Close codes", "Push errors"),
each against a real gateway on 127.0.0.1:0: the HTTP transport's refusals (405, 411, 413),
503 for a handshake that is being decided when the server stops, the 1013 eviction of a slow
consumer, and a push whose durable append fails.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway.admission import Admission, PayloadContext
from gateway.errors import Refusal
from tests.helpers.clients import RpcClient, open_raw_socket
from tests.helpers.faults import FailingAppends
from tests.helpers.harness import MakeGateway
from tests.helpers.http_client import (
    assert_error_body,
    assert_transient_body,
    http_post_json,
    http_request,
    http_rpc,
    raw_http_exchange,
    refusal_of,
)
from tests.helpers.metrics import scrape
from tests.helpers.timeouts import TIMEOUT_UNIT, wait_for_event
from tests.helpers.urls import sync_query
from tests.helpers.wire import (
    HTTP_PING,
    HTTP_PUSH,
    NONE,
    events_of,
    for_request,
    is_chunk,
    make_events,
    new_store_id,
    request_frame,
    seqs_of,
)

pytestmark = pytest.mark.timeout(60 * TIMEOUT_UNIT)


def _allowed(headers: dict[str, str]) -> set[str]:
    assert "allow" in headers, f"a 405 names the allowed methods: {headers}"
    return {method.strip() for method in headers["allow"].split(",")}


def _post_head(address: str, store: str, *headers: str) -> bytes:
    """The head of an HTTP-transport POST, with ``headers`` (``Name: value``) added."""
    lines = [
        f"POST /?{sync_query(store, transport='http')} HTTP/1.1",
        f"Host: {address}",
        "Content-Type: application/json",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# ---------------------------------------------------------------------------------------------
# HTTP transport refusals


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
async def test_http_transport_answers_other_methods_with_405(
    make_gateway: MakeGateway, method: str
) -> None:
    """A method other than GET/POST/OPTIONS: 405 METHOD_NOT_ALLOWED naming what is allowed."""
    gw = await make_gateway()
    store = new_store_id()
    body = orjson.dumps(request_frame("1", HTTP_PING, {"storeId": store}))
    result = await http_request(
        method, gw.http_url(store), body=body, headers={"content-type": "application/json"}
    )
    assert_error_body(result, 405, "METHOD_NOT_ALLOWED")
    assert _allowed(result.headers) == {"GET", "POST", "OPTIONS"}


async def test_get_with_transport_http_is_405(make_gateway: MakeGateway) -> None:
    """``GET …&transport=http``: the HTTP transport takes POSTs (405, ``Allow: POST, OPTIONS``)."""
    gw = await make_gateway()
    result = await http_request("GET", gw.http_url(new_store_id()))
    assert_error_body(result, 405, "METHOD_NOT_ALLOWED")
    assert _allowed(result.headers) == {"POST", "OPTIONS"}


async def test_chunked_http_body_is_411(make_gateway: MakeGateway) -> None:
    """A body sent with ``Transfer-Encoding: chunked`` gets 411 LENGTH_REQUIRED; the same
    request with a Content-Length is answered."""
    gw = await make_gateway()
    store = new_store_id()
    frame = orjson.dumps(request_frame("1", HTTP_PING, {"storeId": store}))
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(frame), frame)
    head = _post_head(gw.base, store, "Transfer-Encoding: chunked")
    result = await raw_http_exchange(gw.base, head + chunked)
    assert_error_body(result, 411, "LENGTH_REQUIRED")
    assert result.headers.get("connection") == "close", result.headers

    answered = await http_rpc(gw.http_url(store), HTTP_PING, {"storeId": store}, "1")
    assert answered.body[-1]["exit"]["_tag"] == "Success", answered.body


async def test_http_body_over_max_message_bytes_is_413_and_the_answer_arrives(
    make_gateway: MakeGateway,
) -> None:
    """A Content-Length over ``limits.max_message_bytes`` is refused from the head alone with
    413 PAYLOAD_TOO_LARGE, and the client, still sending its body, reads that answer (the
    server drains the input before closing instead of resetting the connection). A body of
    exactly the limit is accepted."""
    limit = 1024 * 1024
    gw = await make_gateway(max_message_bytes=limit)
    store = new_store_id()
    head = _post_head(gw.base, store, f"Content-Length: {limit + 1}")
    result = await raw_http_exchange(gw.base, head, body=b" " * (limit + 1))
    assert_error_body(result, 413, "PAYLOAD_TOO_LARGE")
    assert result.headers.get("connection") == "close", result.headers

    frame = orjson.dumps(request_frame("1", HTTP_PING, {"storeId": store}))
    at_limit = frame + b" " * (limit - len(frame))
    answered = await http_request(
        "POST", gw.http_url(store), body=at_limit, headers={"content-type": "application/json"}
    )
    assert answered.status == 200, answered.raw[:300]
    assert answered.body[-1]["exit"]["_tag"] == "Success", answered.body


# ---------------------------------------------------------------------------------------------
# 503 SHUTTING_DOWN


@pytest.mark.parametrize("transport", ["ws", "http"])
async def test_request_being_decided_when_the_server_stops_gets_503(
    make_gateway: MakeGateway, transport: str
) -> None:
    """A WebSocket handshake, or an HTTP-transport POST, whose ``validate_payload`` is still
    running when ``stop()`` begins is answered 503 SHUTTING_DOWN (one admission for both;
    not upgraded into, nor served by, a server that is going away)."""
    held = new_store_id("held")
    entered, release = asyncio.Event(), asyncio.Event()

    async def hook(context: PayloadContext) -> Admission | Refusal:
        if context.store_id == held:
            entered.set()
            await release.wait()
        return Admission()

    gw = await make_gateway(validate_payload=hook)
    bystander_store = new_store_id()
    bystander = await RpcClient.open(gw.ws_url(bystander_store), bystander_store)
    attempt: asyncio.Task[Any]
    if transport == "ws":
        attempt = asyncio.create_task(RpcClient.open(gw.ws_url(held), held))
    else:
        ping = orjson.dumps(request_frame("0", HTTP_PING, {"storeId": held}))
        attempt = asyncio.create_task(http_request("POST", gw.http_url(held), body=ping))
    stopping: asyncio.Task[None] | None = None
    try:
        await wait_for_event(entered, what="the held request reaching validate_payload")
        stopping = asyncio.create_task(gw.stop())
        # The stop is under way once open sessions are being closed (1001).
        with pytest.raises(ConnectionClosed) as closed:
            await bystander.recv(within=10 * TIMEOUT_UNIT)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1001, closed.value
        release.set()
        if transport == "ws":
            with pytest.raises(InvalidStatus) as refused:
                await asyncio.wait_for(attempt, 10 * TIMEOUT_UNIT)
            assert_error_body(refusal_of(refused.value), 503, "SHUTTING_DOWN")
        else:
            answer = await asyncio.wait_for(attempt, 10 * TIMEOUT_UNIT)
            assert_transient_body(answer, 503, "SHUTTING_DOWN")
        await asyncio.wait_for(stopping, 20 * TIMEOUT_UNIT)
    finally:
        release.set()
        attempt.cancel()
        await asyncio.gather(attempt, return_exceptions=True)
        if stopping is not None:
            await asyncio.gather(stopping, return_exceptions=True)
        await bystander.close()


# ---------------------------------------------------------------------------------------------
# 1013: slow consumers


async def _read_until_closed(client: RpcClient, rid: str) -> tuple[int, ConnectionClosed]:
    """Read until the server closes: the events received for ``rid``, and the closure."""
    received = 0
    async with asyncio.timeout(20 * TIMEOUT_UNIT):
        while True:
            try:
                frame = orjson.loads(await client.ws.recv())
            except ConnectionClosed as closed:
                return received, closed
            if for_request(frame, rid) and is_chunk(frame):
                received += len(events_of(frame["values"]))


async def test_slow_consumer_is_closed_with_1013_and_counted(make_gateway: MakeGateway) -> None:
    """A live subscriber that stops reading is closed with exactly 1013 once more than
    ``limits.send_buffer_limit`` bytes wait for it; ``gateway_send_queue_evictions_total``
    counts it; another subscriber of the store gets every event."""
    limit = 64 * 1024
    # A long close_timeout: the 1013 close frame waits behind everything already queued.
    gw = await make_gateway(send_buffer_limit=limit, close_timeout=30 * TIMEOUT_UNIT)
    store = new_store_id()
    pusher = await RpcClient.open(gw.ws_url(store), store)
    healthy = await RpcClient.open(gw.ws_url(store), store)
    # The slow one: a tiny receive window, a one-frame queue, and reading paused.
    sock = await open_raw_socket("127.0.0.1", gw.port, rcvbuf=4096)
    slow = await RpcClient.open(gw.ws_url(store), store, sock=sock, max_queue=1, auto_ack=False)
    try:
        healthy_rid, _ = await healthy.live_pull()
        slow_rid, _ = await slow.live_pull()
        slow.ws.transport.pause_reading()
        assert (await scrape(gw)).value("gateway_send_queue_evictions_total") == 0

        seen: list[dict[str, Any]] = []
        pushed: list[dict[str, Any]] = []
        for seq in range(1, 401):  # at most ~13 MB; the eviction comes far earlier
            batch = make_events(seq, 1, args_size=32 * 1024)
            await pusher.push_ok(batch)
            pushed += batch
            seen += await healthy.live_events(healthy_rid, seq)
            if (await scrape(gw)).value("gateway_send_queue_evictions_total"):
                break
        assert (await scrape(gw)).value("gateway_send_queue_evictions_total") == 1

        # The store and its other subscriber carry on.
        after = make_events(len(pushed) + 1, 1)
        await pusher.push_ok(after)
        seen += await healthy.live_events(healthy_rid, after[0]["seqNum"])
        assert seen == pushed + after

        # The slow client, reading again, finds the server's close: 1013, after fewer events.
        slow.ws.transport.resume_reading()
        received, closed = await _read_until_closed(slow, slow_rid)
        assert closed.rcvd is not None, closed
        assert closed.rcvd.code == 1013, closed
        assert received < len(pushed), "the slow consumer got everything: never evicted"
        assert (await scrape(gw)).value("gateway_send_queue_evictions_total") == 1
    finally:
        for client in (pusher, healthy, slow):
            await client.close()


# ---------------------------------------------------------------------------------------------
# Storage failure on push


@pytest.mark.parametrize("transport", ["ws", "http"])
async def test_push_whose_append_fails_is_transient_and_publishes_nothing(
    make_gateway: MakeGateway, transport: str
) -> None:
    """When the durable append fails, the pusher is told "offline", never a final
    ``UnknownError``: its WebSocket is closed with 1011 (HTTP: 503 STORAGE_UNAVAILABLE). No
    subscriber sees the batch, ``gateway_pushes_rejected_total{reason="storage"}`` rises, and
    the server takes the retry once the store writes again."""
    gw = await make_gateway()
    store = new_store_id()
    pusher = await RpcClient.open(gw.ws_url(store), store)
    listener = await RpcClient.open(gw.ws_url(store), store)
    faults = FailingAppends(gw.config.store.data_dir)
    try:
        rid, _ = await listener.live_pull()
        first = make_events(1, 2)
        await pusher.push_ok(first)
        assert await listener.live_events(rid, 2) == first
        rejected = (await scrape(gw)).value("gateway_pushes_rejected_total", reason="storage")

        await faults.arm(store)
        batch = make_events(3, 2)
        if transport == "ws":
            await pusher.send_push(batch)
            with pytest.raises(ConnectionClosed) as closed:
                await pusher.recv(within=10 * TIMEOUT_UNIT)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1011, closed.value
            await pusher.close()
            pusher = await RpcClient.open(gw.ws_url(store), store)
        else:
            body = request_frame(
                "3", HTTP_PUSH, {"storeId": store, "batch": batch, "backendId": NONE}
            )
            answer = await http_post_json(gw.http_url(store), body)
            assert_transient_body(answer, 503, "STORAGE_UNAVAILABLE")
        assert await listener.barrier() == [], "a failed push published something"
        metrics = await scrape(gw)
        assert metrics.value("gateway_pushes_rejected_total", reason="storage") == rejected + 1
        assert metrics.value("gateway_pushes_accepted_total") == 1
        assert metrics.value("gateway_requests_failed_total", transport=transport) == 0
        assert seqs_of(await pusher.pull()) == [1, 2], "the failed batch was written"

        await faults.disarm(store)
        await pusher.push_ok(batch)
        assert await listener.live_events(rid, 4) == batch
        assert seqs_of(await pusher.pull()) == [1, 2, 3, 4]
    finally:
        await pusher.close()
        await listener.close()


async def test_a_handshake_that_waits(make_gateway: MakeGateway) -> None:
    """A handshake whose ``validate_payload`` waits (here under ``asyncio.timeout``, which
    needs a task: a hook may use anything asyncio offers) is admitted when the wait ends
    (and syncs), answered 500 when the hook then fails; every other handshake meanwhile is
    decided at once."""
    waiting, failing = new_store_id("waiting"), new_store_id("failing")
    entered = {waiting: asyncio.Event(), failing: asyncio.Event()}
    release = asyncio.Event()

    async def hook(context: PayloadContext) -> Admission | Refusal:
        if context.store_id in entered:
            entered[context.store_id].set()
            async with asyncio.timeout(30 * TIMEOUT_UNIT):
                await release.wait()
            if context.store_id == failing:
                raise RuntimeError("the hook broke after its wait")
        return Admission()

    gw = await make_gateway(validate_payload=hook)
    admitted = asyncio.create_task(RpcClient.open(gw.ws_url(waiting), waiting))
    refused = asyncio.create_task(RpcClient.open(gw.ws_url(failing), failing))
    try:
        for event in entered.values():
            await wait_for_event(event, what="a handshake waiting in validate_payload")
        other = new_store_id()
        quick = await RpcClient.open(gw.ws_url(other), other)
        await quick.backend_id()
        await quick.close()
        assert not admitted.done()
        assert not refused.done()
        release.set()
        client = await asyncio.wait_for(admitted, 10 * TIMEOUT_UNIT)
        await client.backend_id()
        await client.close()
        with pytest.raises(InvalidStatus) as failed:
            await asyncio.wait_for(refused, 10 * TIMEOUT_UNIT)
        assert_error_body(refusal_of(failed.value), 500, "INTERNAL_ERROR")
    finally:
        release.set()
        for task in (admitted, refused):
            task.cancel()
        await asyncio.gather(admitted, refused, return_exceptions=True)
