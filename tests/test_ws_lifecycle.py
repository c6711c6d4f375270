"""WebSocket connection lifecycle, black-box: keepalive, handshake and close timeouts, clean and
abrupt closes, fragmentation, early frames, binary frames and a mass close at shutdown.

These tests look only at the wire and at the operator endpoints (``GET /stats``), never at the
server's objects, so they hold whatever drives the WebSocket protocol inside the gateway.

Most tests speak WebSocket through :class:`RawWs`, a hand-written client on a plain asyncio
stream: it sends a literal HTTP upgrade request, masks its own frames, and parses the server's
frames itself, so it can do what a library client never does (not answer pings, not answer a
close frame, split a message into fragments, send a frame in the same write as the request).

Nothing sleeps to synchronise: every wait is a read bounded by ``asyncio.timeout`` (the only
sleeps are the poll interval between awaited ``/stats`` requests and zero-length yields). Server
timeouts are configured small, so each test finishes in about a second; upper bounds are
multiples of ``TIMEOUT_UNIT``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from tests.helpers.clients import RpcClient
from tests.helpers.harness import GatewayHarness, MakeGateway
from tests.helpers.http_client import http_request
from tests.helpers.timeouts import TIMEOUT_UNIT
from tests.helpers.urls import sync_query
from tests.helpers.wire import new_store_id

pytestmark = pytest.mark.timeout(60 * TIMEOUT_UNIT)


PING_JSON = b'{"_tag":"Ping"}'
PONG_JSON = b'{"_tag":"Pong"}'

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# ---------------------------------------------------------------------------------------------
# A raw WebSocket client


@dataclass(frozen=True, slots=True)
class ServerFrame:
    """One frame as the server put it on the wire."""

    fin: bool
    opcode: int
    payload: bytes
    at: float  # time.monotonic() when it was read

    @property
    def close_code(self) -> int | None:
        """The status code of a close frame (None for an empty close payload)."""
        assert self.opcode == OP_CLOSE, self
        if len(self.payload) < 2:
            return None
        return int.from_bytes(self.payload[:2], "big")


def client_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A masked client frame (RFC 6455 §5.2), built by hand."""
    head = bytearray([(0x80 if fin else 0) | opcode])
    length = len(payload)
    if length < 126:
        head.append(0x80 | length)
    elif length < 1 << 16:
        head.append(0x80 | 126)
        head += length.to_bytes(2, "big")
    else:
        head.append(0x80 | 127)
        head += length.to_bytes(8, "big")
    mask = os.urandom(4)
    head += mask
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if length < 4096 else None
    if masked is None:
        # Large payloads: XOR through int arithmetic instead of a per-byte Python loop.
        key = int.from_bytes((mask * (length // 4 + 1))[:length], "big")
        masked = (int.from_bytes(payload, "big") ^ key).to_bytes(length, "big")
    return bytes(head) + masked


def upgrade_request(host: str, query: str, key: str, *, path: str = "/") -> bytes:
    """A minimal, valid WebSocket upgrade request, as bytes."""
    return (
        f"GET {path}?{query} HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "\r\n"
    ).encode()


def accept_value(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + _WS_GUID).digest()).decode()  # noqa: S324


class RawWs:
    """A WebSocket client on a plain asyncio stream that does only what a test tells it to."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.key = base64.b64encode(os.urandom(16)).decode()
        # How the stream ended: "eof", "reset", or None while it is open.
        self.ended: str | None = None

    @classmethod
    async def open_tcp(cls, gw: GatewayHarness) -> RawWs:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        return cls(reader, writer)

    @classmethod
    async def connect(cls, gw: GatewayHarness, store_id: str, *, after: bytes = b"") -> RawWs:
        """Upgrade, with ``after`` appended to the request in the same write; read the 101."""
        ws = await cls.open_tcp(gw)
        try:
            ws.writer.write(ws.request(gw, store_id) + after)
            await ws.writer.drain()
            await ws.read_101()
        except BaseException:
            await ws.aclose()
            raise
        return ws

    def request(self, gw: GatewayHarness, store_id: str) -> bytes:
        return upgrade_request(gw.base, sync_query(store_id), self.key)

    async def read_101(self) -> None:
        async with asyncio.timeout(5 * TIMEOUT_UNIT):
            head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].startswith("HTTP/1.1 101 "), head
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        assert headers.get("upgrade", "").lower() == "websocket", head
        assert "upgrade" in headers.get("connection", "").lower(), head
        assert headers.get("sec-websocket-accept") == accept_value(self.key), head
        # No extension was offered, so none may be in use (frames below assume RSV bits 0).
        assert "sec-websocket-extensions" not in headers, head

    def send(self, opcode: int, payload: bytes, *, fin: bool = True) -> None:
        self.writer.write(client_frame(opcode, payload, fin=fin))

    async def _exact(self, n: int) -> bytes | None:
        """``n`` bytes; None at EOF (or reset) before the first byte; mid-frame EOF fails."""
        partial = b""
        try:
            return await self.reader.readexactly(n)
        except asyncio.IncompleteReadError as exc:
            partial = exc.partial
            self.ended = "eof"
        except ConnectionResetError:
            self.ended = "reset"
        assert not partial, f"connection ended inside a frame: {partial!r}"
        return None

    async def read_frame(self) -> ServerFrame | None:
        """The next server frame, or None when the connection has ended."""
        head = await self._exact(2)
        if head is None:
            return None
        b0, b1 = head
        assert b0 & 0x70 == 0, f"RSV bits set without an extension: {head!r}"
        assert b1 & 0x80 == 0, "a server must not mask its frames"
        length = b1 & 0x7F
        if length >= 126:
            ext = await self._exact(2 if length == 126 else 8)
            assert ext is not None, "connection ended inside a frame header"
            length = int.from_bytes(ext, "big")
        payload = b""
        if length:
            data = await self._exact(length)
            assert data is not None, "connection ended inside a frame"
            payload = data
        return ServerFrame(bool(b0 & 0x80), b0 & 0x0F, payload, time.monotonic())

    async def frames_until_end(self, within: float) -> list[ServerFrame]:
        """Every frame until the server ends the connection; fails after ``within`` seconds."""
        frames: list[ServerFrame] = []
        try:
            async with asyncio.timeout(within):
                while (frame := await self.read_frame()) is not None:
                    frames.append(frame)
        except TimeoutError:
            raise AssertionError(
                f"the server did not end the connection within {within:.1f}s; "
                f"frames so far: {frames!r}"
            ) from None
        return frames

    async def expect(
        self, pred: Callable[[ServerFrame], bool], within: float = 5 * TIMEOUT_UNIT
    ) -> tuple[ServerFrame, list[ServerFrame]]:
        """The first frame matching ``pred`` and the frames read before it."""
        before: list[ServerFrame] = []
        try:
            async with asyncio.timeout(within):
                while True:
                    frame = await self.read_frame()
                    assert frame is not None, f"connection ended; frames before: {before!r}"
                    if pred(frame):
                        return frame, before
                    before.append(frame)
        except TimeoutError:
            raise AssertionError(
                f"no matching frame within {within:.1f}s; frames: {before!r}"
            ) from None

    async def aclose(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


def is_pong_text(frame: ServerFrame) -> bool:
    return frame.opcode == OP_TEXT and frame.fin and frame.payload == PONG_JSON


def close_frames(frames: list[ServerFrame]) -> list[ServerFrame]:
    return [f for f in frames if f.opcode == OP_CLOSE]


# ---------------------------------------------------------------------------------------------
# /stats


async def get_stats(gw: GatewayHarness) -> dict[str, Any]:
    result = await http_request("GET", f"http://{gw.base}/stats", within=5 * TIMEOUT_UNIT)
    assert result.status == 200, result
    assert isinstance(result.body, dict), result
    return result.body


async def wait_stats(
    gw: GatewayHarness, pred: Callable[[dict[str, Any]], bool], within: float = 5 * TIMEOUT_UNIT
) -> dict[str, Any]:
    """Poll ``GET /stats`` until ``pred`` holds; each poll is an awaited HTTP request."""
    stats: dict[str, Any] = {}
    try:
        async with asyncio.timeout(within):
            while True:
                stats = await get_stats(gw)
                if pred(stats):
                    return stats
                await asyncio.sleep(0.02)  # poll interval only
    except TimeoutError:
        raise AssertionError(f"/stats never matched within {within:.1f}s: {stats!r}") from None


# ---------------------------------------------------------------------------------------------
# 1, 2: keepalive


class SansIoClient:
    """websockets' Sans-I/O ``ClientProtocol`` over a raw stream: a real library client
    whose WebSocket layer answers pings by itself, and which lets the test see every frame."""

    def __init__(self, url: str) -> None:
        self.protocol = ClientProtocol(parse_uri(url))
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.pings: list[float] = []
        self.frames: list[Frame] = []

    async def connect(self, gw: GatewayHarness) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", gw.port)
        self.protocol.send_request(self.protocol.connect())
        self.flush()
        async with asyncio.timeout(5 * TIMEOUT_UNIT):
            while self.protocol.state is State.CONNECTING:
                await self.pump()
        assert self.protocol.handshake_exc is None, self.protocol.handshake_exc
        assert self.protocol.state is State.OPEN

    def state(self) -> State:
        return self.protocol.state

    def flush(self) -> None:
        assert self.writer is not None
        for data in self.protocol.data_to_send():
            if data:
                self.writer.write(data)
            elif self.writer.can_write_eof():
                self.writer.write_eof()

    async def pump(self) -> None:
        """Read once, feed the protocol, record events, send what it wants (e.g. pongs)."""
        assert self.reader is not None
        data = await self.reader.read(65536)
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        for event in self.protocol.events_received():
            if isinstance(event, Response):
                assert event.status_code == 101, event
            elif isinstance(event, Frame):
                if event.opcode is Opcode.PING:
                    self.pings.append(time.monotonic())
                self.frames.append(event)
        self.flush()
        if not data:
            raise AssertionError(f"server ended the connection; frames: {self.frames!r}")

    def data_frames(self) -> list[Frame]:
        return [f for f in self.frames if f.opcode not in (Opcode.PING, Opcode.PONG)]

    async def aclose(self) -> None:
        if self.writer is None:
            return
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


async def test_keepalive_pings_keep_an_idle_answering_client_open(
    make_gateway: MakeGateway,
) -> None:
    """The server pings an idle client every ``ping_interval``; a client whose WebSocket layer
    answers the pings stays open well past ``ping_interval + ping_timeout`` and still gets a
    Pong for an application Ping."""
    gw = await make_gateway(ping_interval=0.2, ping_timeout=0.2)
    client = SansIoClient(gw.ws_url(new_store_id()))
    try:
        await client.connect(gw)
        start = time.monotonic()
        # Idle: read (and let the protocol answer pings) until > 1.5 s have passed.
        async with asyncio.timeout(5 * TIMEOUT_UNIT):
            while time.monotonic() - start < 1.6 or len(client.pings) < 3:
                await client.pump()
        assert client.state() is State.OPEN
        assert client.data_frames() == [], "an idle connection got frames besides pings"
        # At 0.2 s intervals 1.6 s hold about 8 pings; 3 leaves room for a slow machine.
        assert len(client.pings) >= 3, client.pings

        client.protocol.send_text(PING_JSON)
        client.flush()
        async with asyncio.timeout(5 * TIMEOUT_UNIT):
            while not client.data_frames():
                await client.pump()
        (frame,) = client.data_frames()
        assert frame.opcode is Opcode.TEXT, frame
        assert frame.data == PONG_JSON, frame

        client.protocol.send_close(1000)
        client.flush()
        async with asyncio.timeout(5 * TIMEOUT_UNIT):
            while client.state() is not State.CLOSED:
                assert client.reader is not None
                data = await client.reader.read(65536)
                if data:
                    client.protocol.receive_data(data)
                else:
                    client.protocol.receive_eof()
        assert client.protocol.close_code == 1000
    finally:
        await client.aclose()


async def test_keepalive_timeout_closes_a_client_that_never_pongs(
    make_gateway: MakeGateway,
) -> None:
    """A client that reads but never answers pings gets close 1011 about ``ping_timeout`` after
    a ping, then the server ends the TCP connection."""
    ping_timeout = 0.3
    gw = await make_gateway(ping_interval=0.2, ping_timeout=ping_timeout)
    ws = await RawWs.connect(gw, new_store_id())
    try:
        start = time.monotonic()
        frames = await ws.frames_until_end(3 * TIMEOUT_UNIT)
        assert ws.ended is not None
        assert time.monotonic() - start < 3 * TIMEOUT_UNIT
    finally:
        await ws.aclose()
    pings = [f for f in frames if f.opcode == OP_PING]
    closes = close_frames(frames)
    assert pings, f"the server never pinged: {frames!r}"
    assert len(closes) == 1, frames
    (close,) = closes
    assert close.close_code == 1011, close
    assert frames[-1] is close, f"nothing may follow the close frame: {frames!r}"
    # The server waited for the pong before giving up (loose bound: same-host timers).
    assert close.at - pings[0].at >= 0.7 * ping_timeout, (pings, close)


# ---------------------------------------------------------------------------------------------
# 3: open timeout


@pytest.mark.parametrize(
    "sent",
    [
        b"",
        b"GE",
        b"GET /?storeId=x",
        b"GET /?storeId=x&transport=ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n",
    ],
    ids=["nothing", "partial-method", "partial-request-line", "partial-headers"],
)
async def test_open_timeout_drops_an_incomplete_handshake(
    make_gateway: MakeGateway, sent: bytes
) -> None:
    """A connection that never completes its request is dropped after ``open_timeout``."""
    open_timeout = 0.3
    gw = await make_gateway(open_timeout=open_timeout)
    ws = await RawWs.open_tcp(gw)
    try:
        start = time.monotonic()
        ws.writer.write(sent)
        await ws.writer.drain()
        received = b""
        try:
            async with asyncio.timeout(3 * TIMEOUT_UNIT):
                while chunk := await ws.reader.read(65536):
                    received += chunk
        except ConnectionResetError:
            pass
        except TimeoutError:
            raise AssertionError(f"still connected after 3 s; received {received!r}") from None
        elapsed = time.monotonic() - start
    finally:
        await ws.aclose()
    # An error response before the close is fine; an upgrade is not.
    assert b" 101 " not in received, received
    assert elapsed >= 0.8 * open_timeout, f"dropped after {elapsed:.3f}s, before open_timeout"


# ---------------------------------------------------------------------------------------------
# 4: close timeout


async def test_close_timeout_drops_a_client_that_never_answers_close(
    make_gateway: MakeGateway,
) -> None:
    """At shutdown the server sends close 1001; a client that neither answers nor closes its
    socket is dropped after ``close_timeout``, and the stop does not wait any longer."""
    close_timeout = 0.3
    gw = await make_gateway(close_timeout=close_timeout)
    ws = await RawWs.connect(gw, new_store_id())
    try:
        # The session is running (not only the handshake done) before the stop.
        ws.send(OP_TEXT, PING_JSON)
        await ws.expect(is_pong_text)
        started = time.monotonic()
        stop = asyncio.create_task(gw.stop())
        try:
            frames = await ws.frames_until_end(3 * TIMEOUT_UNIT)
            async with asyncio.timeout(3 * TIMEOUT_UNIT):
                await stop
        finally:
            if not stop.done():
                stop.cancel()
        ended = time.monotonic()
    finally:
        await ws.aclose()
    assert ws.ended is not None
    assert frames, "the connection ended without a close frame"
    assert frames[0].opcode == OP_CLOSE, f"expected a close frame first: {frames!r}"
    assert frames[0].close_code == 1001, frames[0]
    assert len(frames) == 1, f"nothing may follow the close frame: {frames!r}"
    assert ended - started < 3 * TIMEOUT_UNIT
    # The client was given time to answer the close before the TCP connection was dropped.
    assert ended - frames[0].at >= 0.5 * close_timeout, (frames[0].at, ended)


# ---------------------------------------------------------------------------------------------
# 5: client-initiated close, clean and abrupt


@pytest.mark.parametrize("how", ["close-1000", "tcp-abort"])
async def test_closed_connection_leaves_stats(make_gateway: MakeGateway, how: str) -> None:
    """A client close(1000) is echoed with 1000; after it (or after the client just drops its
    TCP connection) ``/stats`` no longer counts the connection or its live pull."""
    gw = await make_gateway()
    store = new_store_id()
    client = await RpcClient.open(gw.ws_url(store), store)
    try:
        await client.live_pull()
        stats = await get_stats(gw)
        assert stats["connections"]["ws"] == 1, stats
        assert stats["stores"] == {store: 1}, stats
        assert stats["live_subscribers"] == 1, stats

        if how == "close-1000":
            await asyncio.wait_for(client.ws.close(1000, "bye"), 5 * TIMEOUT_UNIT)
            assert client.ws.protocol.close_sent is not None
            assert client.ws.protocol.close_sent.code == 1000
            # The server echoed the close: the code the client received is 1000, not 1006.
            assert client.ws.protocol.close_rcvd is not None, "the server did not echo the close"
            assert client.ws.close_code == 1000
            assert not client.ws.protocol.close_rcvd_then_sent
        else:
            client.ws.transport.abort()
    finally:
        await client.close()

    stats = await wait_stats(
        gw, lambda s: s["connections"]["ws"] == 0 and s["live_subscribers"] == 0
    )
    assert stats["stores"] == {}, stats


# ---------------------------------------------------------------------------------------------
# 6: fragmented messages


async def test_fragmented_ping_gets_a_pong(make_gateway: MakeGateway) -> None:
    """A Ping split into three fragments, with a WebSocket ping between two of them (control
    frames may interleave with fragments), is reassembled and answered."""
    gw = await make_gateway()
    ws = await RawWs.connect(gw, new_store_id())
    try:
        ws.send(OP_TEXT, PING_JSON[:5], fin=False)
        ws.send(OP_PING, b"mid-message")
        ws.send(OP_CONT, PING_JSON[5:10], fin=False)
        ws.send(OP_CONT, PING_JSON[10:], fin=True)
        await ws.writer.drain()
        pong, before = await ws.expect(is_pong_text)
        control = [f for f in before if f.opcode == OP_PONG]
        if not control:
            control = [(await ws.expect(lambda f: f.opcode == OP_PONG))[0]]
        assert [f.payload for f in control] == [b"mid-message"], (before, pong)
        assert [f for f in before if f.opcode != OP_PONG] == [], before

        # The connection is still in a sane state: an unfragmented Ping works too.
        ws.send(OP_TEXT, PING_JSON)
        _, before = await ws.expect(is_pong_text)
        assert before == [], before
    finally:
        await ws.aclose()


async def test_fragmented_message_over_the_limit_is_closed_1009(
    make_gateway: MakeGateway,
) -> None:
    """Fragments that are each under ``limits.max_message_bytes`` but together exceed it get
    close 1009 (message too big), then the connection ends."""
    limit = 1024 * 1024  # the smallest limit the configuration accepts
    gw = await make_gateway(max_message_bytes=limit)
    ws = await RawWs.connect(gw, new_store_id())
    try:
        part = b"x" * (limit // 2 + 1024)
        try:
            ws.send(OP_TEXT, part, fin=False)
            ws.send(OP_CONT, part, fin=False)
            ws.send(OP_CONT, b"x", fin=True)
            await ws.writer.drain()
        except ConnectionError:
            pass  # the server may stop reading before the last bytes; its answer is below
        frames = await ws.frames_until_end(5 * TIMEOUT_UNIT)
    finally:
        await ws.aclose()
    closes = close_frames(frames)
    assert len(closes) == 1, frames
    assert closes[0].close_code == 1009, closes[0]
    assert frames[-1] is closes[0], frames


# ---------------------------------------------------------------------------------------------
# 7: frames in the same write as the upgrade request


async def _write(ws: RawWs, data: bytes, delivery: str) -> None:
    """``one-write``: all bytes in one write. ``dribbled``: 7-byte writes with a yield to the
    loop between them, so the server sees the bytes in small pieces (best effort: TCP may still
    coalesce them; the tests are valid either way)."""
    if delivery == "one-write":
        ws.writer.write(data)
    else:
        for i in range(0, len(data), 7):
            ws.writer.write(data[i : i + 7])
            await ws.writer.drain()
            await asyncio.sleep(0)  # a yield so the server can read, not a wait
    await ws.writer.drain()


@pytest.mark.parametrize("delivery", ["one-write", "dribbled"])
async def test_frame_sent_with_the_upgrade_request_is_not_lost(
    make_gateway: MakeGateway, delivery: str
) -> None:
    """A text Ping that follows the upgrade request without waiting for the 101 (in the same
    TCP write) is answered with a Pong after the 101: early frames are not lost."""
    gw = await make_gateway()
    ws = await RawWs.open_tcp(gw)
    try:
        data = ws.request(gw, new_store_id()) + client_frame(OP_TEXT, PING_JSON)
        await _write(ws, data, delivery)
        await ws.read_101()
        pong, before = await ws.expect(lambda f: f.opcode in (OP_TEXT, OP_BINARY, OP_CLOSE))
        assert before == [], before
        assert is_pong_text(pong), pong
        # The session carries on normally.
        ws.send(OP_TEXT, PING_JSON)
        await ws.writer.drain()
        _, before = await ws.expect(is_pong_text)
        assert before == [], before
    finally:
        await ws.aclose()


async def test_control_frame_sent_with_the_upgrade_request_is_answered_after_the_101(
    make_gateway: MakeGateway,
) -> None:
    """A WebSocket ping (control frame) in the same write as the upgrade request: nothing may
    precede the 101; its PONG and the Pong for a text Ping come after it."""
    gw = await make_gateway()
    ws = await RawWs.open_tcp(gw)
    try:
        data = (
            ws.request(gw, new_store_id())
            + client_frame(OP_TEXT, PING_JSON)
            + client_frame(OP_PING, b"early")
        )
        await _write(ws, data, "one-write")
        await ws.read_101()
        frames: list[ServerFrame] = []
        async with asyncio.timeout(5 * TIMEOUT_UNIT):
            while not (any(map(is_pong_text, frames)) and any(f.opcode == OP_PONG for f in frames)):
                frame = await ws.read_frame()
                assert frame is not None, f"connection ended; frames: {frames!r}"
                frames.append(frame)
    finally:
        await ws.aclose()
    assert sorted((f.opcode, f.payload) for f in frames) == [
        (OP_TEXT, PONG_JSON),
        (OP_PONG, b"early"),
    ], frames


# ---------------------------------------------------------------------------------------------
# 8: binary frames


async def test_binary_ping_is_answered_like_text(make_gateway: MakeGateway) -> None:
    """A Ping request in a *binary* frame gets the same answer as in a text frame: a Pong in a
    text frame, and the connection stays open. (Current behaviour: the session decodes the
    payload of text and binary messages alike; the 0.4.0 client only sends text.)"""
    gw = await make_gateway()
    ws = await RawWs.connect(gw, new_store_id())
    try:
        ws.send(OP_BINARY, PING_JSON)
        pong, before = await ws.expect(lambda f: f.opcode in (OP_TEXT, OP_BINARY, OP_CLOSE))
        assert before == [], before
        assert pong.opcode == OP_TEXT, pong
        assert pong.payload == PONG_JSON, pong
        # A fragmented binary message too.
        ws.send(OP_BINARY, PING_JSON[:3], fin=False)
        ws.send(OP_CONT, PING_JSON[3:])
        pong, before = await ws.expect(lambda f: f.opcode in (OP_TEXT, OP_BINARY, OP_CLOSE))
        assert before == [], before
        assert is_pong_text(pong), pong
    finally:
        await ws.aclose()


# ---------------------------------------------------------------------------------------------
# 9: many connections closing at once


async def test_shutdown_closes_many_live_connections_with_1001(
    make_gateway: MakeGateway,
) -> None:
    """50 connections with live pulls on one store: stopping the gateway closes every one with
    1001, promptly, with the closing handshake completed (no 1006)."""
    count = 50
    close_timeout = 4 * TIMEOUT_UNIT
    gw = await make_gateway(close_timeout=close_timeout)
    store = new_store_id()
    clients: list[RpcClient] = []
    try:
        opened = await asyncio.gather(
            *(RpcClient.open(gw.ws_url(store), store) for _ in range(count)),
            return_exceptions=True,
        )
        clients = [c for c in opened if isinstance(c, RpcClient)]
        failures = [c for c in opened if not isinstance(c, RpcClient)]
        assert not failures, failures[:3]
        # Each live pull has read its catch-up through NoMore, so it is subscribed. (No /stats
        # here: a plain GET's own connection must not be what this test measures.)
        await asyncio.gather(*(client.live_pull() for client in clients))

        started = time.monotonic()
        await asyncio.wait_for(gw.stop(), 5 * TIMEOUT_UNIT)
        async with asyncio.timeout(5 * TIMEOUT_UNIT):
            await asyncio.gather(*(client.ws.wait_closed() for client in clients))
        elapsed = time.monotonic() - started
        codes = [client.ws.close_code for client in clients]
        assert codes == [1001] * count, sorted(set(map(str, codes)))
        # Every client answered its close at once, so nothing waited for close_timeout.
        assert elapsed < close_timeout / 2, elapsed
    finally:
        await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)


# ---------------------------------------------------------------------------------------------
# Plain GETs and refused upgrades share the WebSocket handshake path


async def test_plain_gets_and_refused_upgrades_do_not_delay_shutdown(
    make_gateway: MakeGateway,
) -> None:
    """``GET /healthz``, ``GET /stats`` and a refused upgrade (400) go through the handshake
    path but never become WebSockets; once they are answered and the client has hung up, they
    must not hold ``stop()`` for ``close_timeout``."""
    close_timeout = 4 * TIMEOUT_UNIT
    gw = await make_gateway(close_timeout=close_timeout)
    health = await http_request("GET", f"http://{gw.base}/healthz", within=5 * TIMEOUT_UNIT)
    assert health.status == 200, health
    await get_stats(gw)
    with pytest.raises(InvalidStatus) as refused:
        await RpcClient.open(f"ws://{gw.base}/?storeId=x&payload=%7Bx&transport=ws", "x")
    assert refused.value.response.status_code == 400
    started = time.monotonic()
    await asyncio.wait_for(gw.stop(), 2 * close_timeout)
    elapsed = time.monotonic() - started
    assert elapsed < close_timeout / 2, f"stop() took {elapsed:.2f}s"


def _upgrade(
    *, key: str = "dGhlIHNhbXBsZSBub25jZQ==", version: str = "13", connection: str = "Upgrade"
) -> bytes:
    return (
        "GET /?storeId=x&transport=ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        f"Connection: {connection}\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: {version}\r\n\r\n"
    ).encode()


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"GET /?storeId=x&transport=ws HTTP/1.1\r\nno colon here\r\n\r\n", 400, "BAD_REQUEST"),
        (b"GET /?storeId=x&transport=ws HTTP/1.1\r\nX : y\r\n\r\n", 400, "BAD_REQUEST"),
        (b"GET /?storeId=x&transport=ws HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400, "BAD_REQUEST"),
        (b"GET /?storeId=x&transport=ws HTTP/1.1\r\nX: a\nY: b\r\n\r\n", 400, "BAD_REQUEST"),
        (b"GET /?storeId=x\x7f HTTP/1.1\r\nHost: x\r\n\r\n", 400, "BAD_REQUEST"),
        (b"GET  /  HTTP/1.1\r\nHost: x\r\n\r\n", 400, "BAD_REQUEST"),
        (b"GET\r\n\r\n", 400, "BAD_REQUEST"),
        (b"GET /?storeId=x&transport=ws HTTP/9.9\r\nHost: x\r\n\r\n", 505, "HTTP_VERSION"),
        (b"GET / HTTP/1.1\r\n" + b"X-H: v\r\n" * 101 + b"\r\n", 431, "HEADERS_TOO_LARGE"),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414, "URI_TOO_LONG"),
        (b"AVERYLONGMETHODNAME / HTTP/1.1\r\n\r\n", 405, "METHOD_NOT_ALLOWED"),
        # Admitted sync requests that are not valid upgrades (checked after the admission).
        (_upgrade(key="short"), 400, "BAD_REQUEST"),
        (_upgrade(version="8"), 426, "UPGRADE_REQUIRED"),
        (_upgrade(connection="keep-alive"), 426, "UPGRADE_REQUIRED"),
    ],
    ids=[
        "bad-header-line",
        "space-before-colon",
        "control-character",
        "bare-lf",
        "target-character",
        "double-space",
        "no-target",
        "bad-version",
        "too-many-headers",
        "long-request-line",
        "not-get",
        "bad-key",
        "bad-version-header",
        "no-connection-upgrade",
    ],
)
async def test_malformed_request_gets_its_reason_code(
    make_gateway: MakeGateway, request_bytes: bytes, status: int, code: str
) -> None:
    """Bytes that are not an HTTP request get their documented status and JSON code, then
    the close."""
    gw = await make_gateway()
    ws = await RawWs.open_tcp(gw)
    try:
        ws.writer.write(request_bytes)
        await ws.writer.drain()
        async with asyncio.timeout(5 * TIMEOUT_UNIT):
            received = await ws.reader.read()  # until the server closes
    finally:
        await ws.aclose()
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), received
    assert b"Connection: close" in head, head
    assert orjson.loads(body)["error"]["code"] == code, body
    if code == "UPGRADE_REQUIRED":
        assert b"Upgrade: websocket" in head, head
    if b"Sec-WebSocket-Version: 8" in request_bytes:
        assert b"Sec-WebSocket-Version: 13" in head, head
    assert gw.gw.sessions.counters.connections_total["ws"] == 0


async def test_unfinished_requests_do_not_delay_shutdown(make_gateway: MakeGateway) -> None:
    """Connections that sent nothing, or only part of their request, are dropped at once by
    ``stop()``: they cannot hold it for ``open_timeout`` or ``close_timeout``."""
    slow = 30 * TIMEOUT_UNIT
    gw = await make_gateway(open_timeout=slow, close_timeout=slow)
    partial = [b"", b"GE", b"GET /?storeId=x&transport=ws HTTP/1.1\r\nHost: x\r\n"]
    clients = [await RawWs.open_tcp(gw) for _ in partial]
    try:
        for client, sent in zip(clients, partial, strict=True):
            client.writer.write(sent)
            await client.writer.drain()
        # The connections are established and read by the server once /stats answers.
        await get_stats(gw)
        started = time.monotonic()
        await asyncio.wait_for(gw.stop(), slow)
        elapsed = time.monotonic() - started
        for client in clients:
            async with asyncio.timeout(5 * TIMEOUT_UNIT):
                with contextlib.suppress(ConnectionResetError):
                    assert await client.reader.read() == b""
    finally:
        for client in clients:
            await client.aclose()
    assert elapsed < 5 * TIMEOUT_UNIT, f"stop() took {elapsed:.2f}s"


async def test_refused_connection_ends_when_the_client_hangs_up(make_gateway: MakeGateway) -> None:
    """After a refusal (400 here) the server notices the client's FIN at once instead of
    holding the socket for ``close_timeout``: a client retrying refused upgrades in a loop must
    not pile up open sockets. (White-box: it counts the frontend's WebSocket connections.)"""
    gw = await make_gateway(close_timeout=60 * TIMEOUT_UNIT)
    frontend = gw.gw.listener
    for _ in range(5):
        with pytest.raises(InvalidStatus):
            await RpcClient.open(f"ws://{gw.base}/?storeId=x&payload=%7Bx&transport=ws", "x")
    async with asyncio.timeout(5 * TIMEOUT_UNIT):
        while frontend.ws_connections:  # noqa: ASYNC110 - no event to wait on; bounded
            await asyncio.sleep(0.01)


async def test_a_session_bug_closes_only_that_connection_with_1011(
    make_gateway: MakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: if handling a message raises (a bug, never bad input), that connection
    is closed with 1011 and every other connection carries on."""
    from gateway.peer import Peer

    original = Peer.handle

    def faulty(self: Peer, data: bytes) -> None:
        if b"boom" in data:
            raise RuntimeError("injected fault")
        original(self, data)

    monkeypatch.setattr(Peer, "handle", faulty)
    gw = await make_gateway()
    store = new_store_id()
    victim = await RawWs.connect(gw, store)
    bystander = await RpcClient.open(gw.ws_url(store), store)
    try:
        victim.writer.write(client_frame(OP_TEXT, b'{"boom":1}'))
        await victim.writer.drain()
        frames = await victim.frames_until_end(5 * TIMEOUT_UNIT)
        closes = close_frames(frames)
        assert closes, frames
        assert closes[0].close_code == 1011, closes
        await bystander.send({"_tag": "Ping"})
        assert await bystander.recv() == {"_tag": "Pong"}
    finally:
        await victim.aclose()
        await bystander.close()


@pytest.mark.parametrize("how", ["close", "abort"])
async def test_closed_connections_leave_no_cyclic_garbage(
    make_gateway: MakeGateway, how: str
) -> None:
    """A closed connection is freed by reference counting alone: nothing of it waits for the
    cyclic GC, whose full collections pause the whole server (100+ ms with many objects).
    (White-box: looks for the server's connection objects with the collector switched off.)"""
    from websockets.server import ServerProtocol

    from gateway.peer import Peer
    from gateway.transport.ws import WsConnection

    gw = await make_gateway()
    store = new_store_id()
    gc.collect()
    gc.disable()
    try:
        for _ in range(10):
            client = await RpcClient.open(gw.ws_url(store), store)
            await client.live_pull()
            if how == "close":
                await client.close()
            else:
                client.ws.transport.abort()  # the server sees an EOF without a close frame
        async with asyncio.timeout(5 * TIMEOUT_UNIT):
            while gw.gw.listener.ws_connections:  # noqa: ASYNC110 - no event to wait on
                await asyncio.sleep(0.01)
        kinds = (ServerProtocol, WsConnection, Peer)
        alive = [type(o).__name__ for o in gc.get_objects() if type(o) in kinds]
    finally:
        gc.enable()
    assert alive == [], alive


async def test_reload_turns_keepalive_on_for_open_sessions(make_gateway: MakeGateway) -> None:
    """Keepalive settings are read live: a session opened with keepalive off gets pinged (and,
    never answering, closed 1011) once a reload turns it on."""
    import dataclasses

    gw = await make_gateway(ping_interval=0, ping_timeout=0)
    ws = await RawWs.connect(gw, new_store_id())
    try:
        server = dataclasses.replace(gw.config.server, ping_interval=0.2, ping_timeout=0.3)
        await gw.gw.reload(dataclasses.replace(gw.config, server=server))
        frames = await ws.frames_until_end(5 * TIMEOUT_UNIT)
    finally:
        await ws.aclose()
    assert [f.opcode for f in frames if f.opcode == OP_PING], frames
    assert [c.close_code for c in close_frames(frames)] == [1011], frames


async def test_a_session_that_fails_to_open_is_closed_with_1011(
    make_gateway: MakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: if building the session raises after the 101, the connection is closed
    with 1011 at once (not left open without a session) and the server keeps serving."""
    from gateway.peer import Peer

    original = Peer.__init__
    broken = {"on": True}

    def faulty(self: Peer, *args: Any, **kwargs: Any) -> None:
        if broken["on"]:
            raise RuntimeError("injected fault")
        original(self, *args, **kwargs)

    monkeypatch.setattr(Peer, "__init__", faulty)
    gw = await make_gateway()
    store = new_store_id()
    victim = await RawWs.connect(gw, store)
    try:
        frames = await victim.frames_until_end(5 * TIMEOUT_UNIT)
    finally:
        await victim.aclose()
    assert [c.close_code for c in close_frames(frames)] == [1011], frames
    broken["on"] = False
    client = await RpcClient.open(gw.ws_url(store), store)
    try:
        await client.send({"_tag": "Ping"})
        assert await client.recv() == {"_tag": "Pong"}
    finally:
        await client.close()


async def test_a_client_that_pings_without_reading_cannot_grow_the_servers_buffer(
    make_gateway: MakeGateway,
) -> None:
    """Pongs are written by the server on its own; a client that floods Pings and never reads
    must meet backpressure (the server stops reading it), not make the server buffer megabytes
    of Pongs. (White-box: reads the connection's queued bytes.)"""
    gw = await make_gateway()
    ws = await RawWs.connect(gw, new_store_id())
    frontend = gw.gw.listener
    ping = client_frame(OP_PING, b"p" * 125)
    chunk = ping * 512  # ~66 KB per write
    sent = 0
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.5 * TIMEOUT_UNIT):
                while sent < 64 * 1024 * 1024:
                    ws.writer.write(chunk)
                    await ws.writer.drain()  # blocks once the server stops reading us
                    sent += len(chunk)
        (connection,) = frontend.ws_connections
        queued = connection.buffered()
    finally:
        ws.writer.transport.abort()  # a graceful close would wait for the unsent pings
    assert sent < 64 * 1024 * 1024, "the server read 64 MB of pings from a client not reading"
    assert queued < 4 * 1024 * 1024, f"{queued} bytes of pongs queued for one client"
