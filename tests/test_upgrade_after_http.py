"""An upgrade request is honoured on any connection, first request or not: Node's built-in
WebSocket (undici) reuses a pooled keep-alive connection that already carried a ``fetch``.
Byte level: one TCP connection carries an HTTP-transport POST, then a WebSocket upgrade.
"""

from __future__ import annotations

import asyncio
import base64
import os

import orjson

from tests.helpers.harness import MakeGateway
from tests.helpers.timeouts import TIMEOUT_UNIT
from tests.helpers.urls import sync_query
from tests.helpers.wire import HTTP_PING, new_store_id, request_frame


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5 * TIMEOUT_UNIT)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def test_upgrade_on_a_connection_that_carried_a_post(make_gateway: MakeGateway) -> None:
    """After an HTTP-transport POST answered with keep-alive, a WebSocket upgrade on the
    same connection gets 101 and a working session (it used to get 405)."""
    gw = await make_gateway()
    store = new_store_id()
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        body = orjson.dumps(request_frame("0", HTTP_PING, {"storeId": store}))
        http_query = sync_query(store, transport="http")
        writer.write(
            f"POST /?{http_query} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        status, headers = await _read_head(reader)
        assert status == 200
        assert headers["connection"] == "keep-alive"
        await reader.readexactly(int(headers["content-length"]))
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /?{sync_query(store)} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        status, headers = await _read_head(reader)
        assert status == 101, headers
        # The session works: a masked Ping RPC frame gets its Pong.
        payload = b'{"_tag":"Ping"}'
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        writer.write(bytes((0x81, 0x80 | len(payload))) + mask + masked)
        frame = await asyncio.wait_for(reader.readexactly(2 + len(b'{"_tag":"Pong"}')), 5)
        assert frame[2:] == b'{"_tag":"Pong"}'
        assert gw.gw.stats()["connections"] == {"ws": 1, "http": 0}
    finally:
        writer.close()


async def test_plain_get_after_a_post_is_served(make_gateway: MakeGateway) -> None:
    """A plain GET (``/healthz``) after a POST on the same connection is answered as it would
    be on a fresh one."""
    gw = await make_gateway()
    store = new_store_id()
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        body = orjson.dumps(request_frame("0", HTTP_PING, {"storeId": store}))
        writer.write(
            f"POST /?{sync_query(store, transport='http')} HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        status, headers = await _read_head(reader)
        assert status == 200
        await reader.readexactly(int(headers["content-length"]))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers = await _read_head(reader)
        assert status == 200
        assert await reader.readexactly(int(headers["content-length"])) == b"ok\n"
    finally:
        writer.close()
