"""gateway.client over HTTP against a scripted HTTP/1.1 server: answers that break the
protocol raise at once, a 4xx mid-session is a refusal, a kept-alive connection the server
closed is replaced without losing the session."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from typing import Any

import orjson
import pytest

from gateway.client import Batch, ProtocolViolation, Refused, connect
from gateway.client.connection import sync_url
from gateway.client.http import HttpSession
from tests.helpers.timeouts import TIMEOUT_UNIT

WITHIN = 5 * TIMEOUT_UNIT

# Answers a request frame, the ``n``th request of its connection (from 0): the raw response,
# or None to close the connection without answering.
Script = Callable[[dict[str, Any], int], bytes | Awaitable[bytes | None] | None]


def ok(body: bytes, length: str | None = None) -> bytes:
    """A 200 with a JSON body (``length``: the Content-Length value, default the body's)."""
    size = str(len(body)) if length is None else length
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nContent-Type: application/json"
    return (head + "\r\n\r\n").encode() + body


def pong(rid: str) -> bytes:
    exit_ = {"_tag": "Success", "value": {"_tag": "SyncMessage.Pong"}}
    return ok(orjson.dumps([{"_tag": "Exit", "requestId": rid, "exit": exit_}]))


def pull_answer(rid: str, seqs: list[int]) -> bytes:
    """A Pull's answer: one Chunk with events ``seqs``, then Exit."""
    batch = [
        {
            "eventEncoded": {
                "name": "e",
                "args": {},
                "seqNum": seq,
                "parentSeqNum": seq - 1,
                "clientId": "c",
                "sessionId": "s",
            },
            "metadata": {"_tag": "None"},
        }
        for seq in seqs
    ]
    value = {"batch": batch, "pageInfo": {"_tag": "NoMore"}, "backendId": "b"}
    return ok(
        orjson.dumps(
            [
                {"_tag": "Chunk", "requestId": rid, "values": [value]},
                {"_tag": "Exit", "requestId": rid, "exit": {"_tag": "Success"}},
            ]
        )
    )


@asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[list[int]]:
    """A server on 127.0.0.1:0 answering per ``script``; yields ``[port, connections]``."""
    state = [0, 0]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state[1] += 1
        try:
            for n in range(100):
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                frame = orjson.loads(await reader.readexactly(length))
                answer = script(frame, n)
                if inspect.isawaitable(answer):
                    answer = await answer
                if answer is None:
                    return
                writer.write(answer)
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    state[0] = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()


def pull_answered_with(raw: bytes) -> Script:
    """Pings are answered; anything else gets ``raw``, where ``RID`` is the request id (and
    ``%d`` the length of the body once it is substituted)."""

    def script(frame: dict[str, Any], _n: int) -> bytes:
        rid = frame["id"]
        if frame["tag"] == "SyncHttpRpc.Ping":
            return pong(rid)
        head, sep, body = raw.replace(b"RID", rid.encode()).partition(b"\r\n\r\n")
        return head.replace(b"%d", str(len(body)).encode()) + sep + body

    return script


def templated(body: bytes) -> bytes:
    """A 200 for :func:`pull_answered_with`: ``RID`` in ``body``, its length filled in."""
    return ok(body, "%d")


SUCCESS = {"_tag": "Success", "value": {}}
EXIT = b'{"_tag":"Exit","requestId":"RID","exit":{"_tag":"Success"}}'
CHUNK = b'{"_tag":"Chunk","requestId":"RID","values":[]}'


@pytest.mark.parametrize(
    "raw",
    [
        templated(b"not json"),
        templated(EXIT),
        templated(b"[]"),
        templated(b"[" + CHUNK + b"]"),
        templated(b"[1]"),
        templated(b'[{"_tag":"Defect","defect":"boom"},' + EXIT + b"]"),
        templated(b"[" + EXIT.replace(b"RID", b"other") + b"]"),
        templated(b"[" + EXIT + b"," + CHUNK + b"]"),
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n[" + EXIT + b"]",
        b"HTTP/1.1 302 Found\r\nLocation: /\r\nContent-Length: 0\r\n\r\n",
        b"SSH-2.0-OpenSSH\r\n\r\n",
    ],
    ids=[
        "not-json",
        "object",
        "empty-array",
        "no-exit",
        "not-a-frame",
        "defect",
        "another-request",
        "chunk-after-exit",
        "no-content-length",
        "redirect",
        "not-http",
    ],
)
async def test_a_broken_answer_raises_protocol_violation(raw: bytes) -> None:
    async with scripted(pull_answered_with(raw)) as (port, _):
        store = connect(f"http://127.0.0.1:{port}", "s", transport="http", backoff_base=60)
        async with store:
            with pytest.raises(ProtocolViolation):
                await asyncio.wait_for(anext(store.events()), WITHIN)


async def test_a_refusal_mid_session_raises_refused() -> None:
    body = b'{"error":{"code":"STORE_FORBIDDEN","message":"not yours"}}'
    raw = b"HTTP/1.1 403 Forbidden\r\nContent-Length: %d\r\n\r\n" + body
    async with scripted(pull_answered_with(raw)) as (port, _):
        store = connect(f"http://127.0.0.1:{port}", "s", transport="http", backoff_base=60)
        async with store:
            with pytest.raises(Refused) as caught:
                await asyncio.wait_for(anext(store.events()), WITHIN)
    assert (caught.value.status, caught.value.code) == (403, "STORE_FORBIDDEN")


async def drain(stream: AsyncIterator[Batch]) -> list[Batch]:
    return [batch async for batch in stream]


async def test_a_kept_alive_connection_closed_by_the_server_is_replaced() -> None:
    """The server keeps each connection alive for one request, then closes it when the next
    arrives: pulls (idempotent) go again on a new connection, without a reconnect delay."""

    def script(frame: dict[str, Any], n: int) -> bytes | None:
        if n > 0:
            return None
        rid = frame["id"]
        return pong(rid) if frame["tag"] == "SyncHttpRpc.Ping" else pull_answer(rid, [])

    async with scripted(script) as state:
        store = connect(f"http://127.0.0.1:{state[0]}", "s", transport="http", backoff_base=60)
        async with store:
            for _ in range(3):
                assert await asyncio.wait_for(drain(store.events(live=False)), WITHIN) == []
        assert state[1] == 4  # the Ping's connection, then one per pull


async def test_a_live_follower_that_stops_reading_stops_polling() -> None:
    """Each poll finds one new event. While the consumer does not take the batches, the
    client pulls no further than one answer ahead; when it reads again, the events follow
    in order."""
    pulls: list[int] = []
    third = asyncio.Event()

    def script(frame: dict[str, Any], _n: int) -> bytes:
        rid = frame["id"]
        if frame["tag"] == "SyncHttpRpc.Ping":
            return pong(rid)
        cursor = frame["payload"]["cursor"]
        after = cursor["value"]["eventSequenceNumber"] if cursor["_tag"] == "Some" else 0
        pulls.append(after)
        if len(pulls) >= 3:
            third.set()
        return pull_answer(rid, [after + 1])

    interval = 0.01
    async with scripted(script) as (port, _):
        store = connect(f"http://127.0.0.1:{port}", "s", transport="http", poll_interval=interval)
        async with store, aclosing(store.events()) as stream:
            first = await asyncio.wait_for(anext(stream), WITHIN)
            with pytest.raises(TimeoutError):  # no third pull while the second is unread
                await asyncio.wait_for(third.wait(), 30 * interval * TIMEOUT_UNIT)
            assert pulls == [0, 1]
            later = [await asyncio.wait_for(anext(stream), WITHIN) for _ in range(3)]
    assert [e.seq_num for b in [first, *later] for e in b.events] == [1, 2, 3, 4]
    assert pulls[:4] == [0, 1, 2, 3]


async def test_pushes_started_back_to_back_are_sent_one_at_a_time_in_order() -> None:
    """Pipelined pushes (each started before the previous one is answered) reach the server
    one at a time, in the order they were started: a later batch, which continues an
    earlier one, never overtakes it. The server holds each answer until another push arrives
    or a while has passed (only then can it tell none will)."""
    arrived: list[int] = []
    in_flight = 0
    most_in_flight = 0
    another = asyncio.Event()

    async def script(frame: dict[str, Any], _n: int) -> bytes:
        nonlocal in_flight, most_in_flight
        rid = frame["id"]
        if frame["tag"] == "SyncHttpRpc.Ping":
            return pong(rid)
        arrived.append(frame["payload"]["batch"][0]["seqNum"])
        in_flight += 1
        most_in_flight = max(most_in_flight, in_flight)
        another.set()
        another.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(another.wait(), 0.05 * TIMEOUT_UNIT)
        in_flight -= 1
        return ok(orjson.dumps([{"_tag": "Exit", "requestId": rid, "exit": SUCCESS}]))

    async with scripted(script) as (port, _):
        url = sync_url(f"http://127.0.0.1:{port}", "s", instance_id="t", transport="http")
        session = await HttpSession.open(url, "s")
        try:
            requests = [session.request() for _ in range(5)]
            for n, (rid, _queue) in enumerate(requests):
                batch = [{"name": "e", "seqNum": 1 + n, "parentSeqNum": n}]
                payload = {"storeId": "s", "batch": batch, "backendId": {"_tag": "None"}}
                await session.send_request(rid, "SyncWsRpc.Push", payload)
            for rid, queue in requests:
                answer = await asyncio.wait_for(queue.get(), WITHIN)
                assert isinstance(answer, dict), answer
                assert answer["requestId"] == rid
        finally:
            await session.close()
    assert arrived == [1, 2, 3, 4, 5]
    assert most_in_flight == 1
