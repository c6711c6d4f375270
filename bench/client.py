"""A lean WebSocket client: websockets' Sans-I/O ``ClientProtocol`` on a raw asyncio protocol.

The asyncio client API of websockets costs a task, futures and an assembler per message; at a
thousand subscribers that would make the load generator, not the server, the bottleneck. Here
each connection is one ``asyncio.Protocol`` feeding bytes to ``ClientProtocol`` and handing
every text frame to a callback together with the arrival time (``time.monotonic_ns``, the
system-wide ``CLOCK_MONOTONIC``, so pushers and subscribers in different processes share it).
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import ssl as _ssl
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

from websockets.client import ClientProtocol
from websockets.extensions.base import ClientExtensionFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

monotonic_ns = time.monotonic_ns
OP_TEXT = Opcode.TEXT

TextHandler = Callable[[bytes, int], None]


def _ignore(data: bytes, now: int) -> None:
    return None


class ConnectError(Exception):
    pass


class Refused(ConnectError):
    """The upgrade was answered with another status than 101; ``head``: the response head."""

    def __init__(self, status: int, head: bytes) -> None:
        line = head[: head.find(b"\r\n")].decode(errors="replace")
        super().__init__(f"upgrade refused: {line}")
        self.status = status
        self.head = head

    def header(self, name: bytes) -> bytes | None:
        """A response header's value (the first), or None."""
        prefix = b"\r\n" + name.lower() + b":"
        lower = self.head.lower()
        at = lower.find(prefix)
        if at < 0:
            return None
        start = at + len(prefix)
        end = lower.find(b"\r\n", start)
        return self.head[start : end if end >= 0 else len(self.head)].strip()


_LINGER_RESET = struct.pack("ii", 1, 0)
# One key for every upgrade of the fast path: the server only echoes its hash.
_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
_URI = parse_uri("ws://127.0.0.1/")


class Conn(asyncio.Protocol):
    """One client connection. ``on_text(data, now_ns)`` receives every text frame.

    Without extensions the upgrade takes a fast path: a prebuilt request goes out and the
    ``101`` status line is checked, then ``ClientProtocol`` starts in the OPEN state and does
    all the framing. (Building and validating the handshake with ``ClientProtocol`` costs
    the generator about as much CPU as the bare server spends on it, which would make the
    generator, not the server, the limit of the handshake measurement.) With extensions
    (permessage-deflate) the whole handshake goes through ``ClientProtocol``.
    """

    __slots__ = ("_head", "bytes_in", "closed", "on_text", "opened", "proto", "transport")

    def __init__(
        self,
        host: str,
        port: int,
        resource: str,
        on_text: TextHandler = _ignore,
        extensions: Sequence[ClientExtensionFactory] | None = None,
    ) -> None:
        self._head: bytearray | None = None
        if extensions:
            uri = parse_uri(f"ws://{host}:{port}{resource}")
            self.proto = ClientProtocol(uri, max_size=None, extensions=extensions)
            self.proto.send_request(self.proto.connect())
        else:
            self.proto = ClientProtocol(_URI, max_size=None, state=State.OPEN)
            self._head = bytearray()
            self.proto.writes.append(
                (
                    f"GET {resource} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {_KEY}\r\n"
                    "Sec-WebSocket-Version: 13\r\nUser-Agent: gateway-bench\r\n\r\n"
                ).encode()
            )
        self.on_text = on_text
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.closed = False
        self.bytes_in = 0

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._flush()

    def _upgrade(self, data: bytes, now: int) -> bytes | None:
        """Fast path: collect the response head; the bytes after it, or None for more."""
        head = self._head
        assert head is not None
        head += data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            if len(head) > 65536:
                self.opened.set_exception(ConnectError("oversized handshake response"))
                self.abort()
            return None
        self._head = None
        if not head.startswith(b"HTTP/1.1 101 "):
            try:
                status = int(head[9:12])
            except ValueError:
                status = 0
            self.opened.set_exception(Refused(status, bytes(head[:end])))
            self.abort()
            return None
        self.opened.set_result(now)
        return bytes(head[end + 4 :])

    def data_received(self, data: bytes) -> None:
        now = monotonic_ns()
        self.bytes_in += len(data)
        if self._head is not None:
            rest = self._upgrade(data, now)
            if not rest:
                return
            data = rest
        proto = self.proto
        proto.receive_data(data)
        for event in proto.events_received():
            if type(event) is Frame:
                if event.opcode is OP_TEXT:
                    self.on_text(event.data, now)  # type: ignore[arg-type]
            elif type(event) is Response:
                if proto.handshake_exc is not None:
                    if not self.opened.done():
                        self.opened.set_exception(ConnectError(str(proto.handshake_exc)))
                elif not self.opened.done():
                    self.opened.set_result(now)
        if proto.writes:
            self._flush()

    def eof_received(self) -> bool | None:
        self.proto.receive_eof()
        self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.opened.done():
            self.opened.set_exception(ConnectError(f"connection lost: {exc}"))

    # -- sending ----------------------------------------------------------------------------

    def _flush(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        for chunk in self.proto.data_to_send():
            if chunk:
                transport.write(chunk)
            elif transport.can_write_eof():
                transport.write_eof()

    def send(self, data: bytes) -> None:
        """Send ``data`` (UTF-8 JSON) as one text frame, without waiting."""
        if self.closed:
            return
        self.proto.send_text(data)
        self._flush()

    def abort(self) -> None:
        """Reset the connection (RST, no TIME_WAIT: a run opens tens of thousands)."""
        transport = self.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and not transport.is_closing():
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            except OSError:
                pass
        transport.abort()


async def connect(
    host: str,
    port: int,
    resource: str,
    on_text: TextHandler = _ignore,
    *,
    extensions: Sequence[ClientExtensionFactory] | None = None,
    ssl: _ssl.SSLContext | None = None,
    within: float = 30.0,
    source: str | None = None,
) -> Conn:
    """Open a connection and complete the upgrade; raises ConnectError when refused.

    With ``ssl`` the connection is TLS first (the context verifies the server certificate
    against ``host``); ``connection_made`` then comes after the TLS handshake, so the
    upgrade request goes out encrypted. ``source``: the local address to bind before
    connecting (e.g. ``127.0.3.7``; one address has ~28k ephemeral ports, see
    :func:`source_addresses`).
    """
    loop = asyncio.get_running_loop()
    conn = Conn(host, port, resource, on_text, extensions)
    local = (source, 0) if source is not None else None
    async with asyncio.timeout(within):
        await loop.create_connection(lambda: conn, host, port, ssl=ssl, local_addr=local)
        await conn.opened
    return conn


def source_addresses(count: int) -> list[str]:
    """``count`` loopback addresses in 127.0.0.0/8 other than 127.0.0.1 (the servers'):
    127.0.0.2 .. 127.0.0.254, then 127.0.1.2 ..."""
    return [f"127.0.{k // 253}.{2 + k % 253}" for k in range(count)]


async def run_workers(count: int, worker: Callable[[int], Any]) -> list[Any]:
    """Run ``worker(i)`` for i in range(count); exceptions propagate."""
    return list(await asyncio.gather(*(worker(i) for i in range(count))))


class IdSource:
    """Request ids as decimal strings, per connection, starting at "1" (pull uses "0")."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = itertools.count(1)

    def __call__(self) -> str:
        return str(next(self._next))
