"""One WebSocket connection: an ``asyncio.Protocol`` driving websockets' Sans-I/O layer.

websockets' ``ServerProtocol`` parses the upgrade request and the frames, answers Pings and
runs the closing handshake; this module moves bytes between it and the transport, and owns
the timers around it. It replaces the asyncio ``ServerConnection``, which costs a handler
task, an ``Assembler``, a keepalive task and a receive future per connection: about twice
the memory and CPU per connection of the protocol alone (measured in ``bench/studies/floor.py``).

What a connection does, in order:

1. ``CONNECTING``: bytes feed the parser until the request is complete; reading then pauses
   while the owner's ``handshake`` decides and calls :meth:`WsConnection.respond` (101 opens
   the session; anything else refuses). The handshake must end within ``open_timeout``.
2. ``OPEN``: each complete message (fragments joined, size capped by the parser: 1009) goes to
   the session's ``handle``. Text frames are written with a header built here, without the
   Sans-I/O frame object: no extension is ever negotiated, so the bytes are the same. While
   the transport's buffer is over its high-water mark, reading pauses too (backpressure).
3. Keepalive is not per connection: the owner's sweeper calls :meth:`keepalive` on every open
   connection each tick (a WebSocket Ping after ``ping_interval`` of silence, close 1011 when
   its Pong is ``ping_timeout`` late).
4. Closing: a close frame, the client's echo, then the client closes TCP; after
   ``close_timeout`` we abort. ``connection_lost`` ends the session exactly once and breaks
   the parser's reference cycles, so a closed connection never waits for the cyclic GC.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, cast

from websockets.exceptions import InvalidMessage
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from gateway.errors import CloseCode, WireClosed

if TYPE_CHECKING:
    from collections.abc import Sequence

logger = logging.getLogger(__name__)

_OPEN = State.OPEN
_CONNECTING = State.CONNECTING
_TEXT = Opcode.TEXT
_BINARY = Opcode.BINARY
_CONT = Opcode.CONT
_PONG = Opcode.PONG
_CLOSE = Opcode.CLOSE

# Headers of unmasked, unfragmented server text frames (RFC 6455 §5.2) by payload length.
_SHORT_HEADERS = tuple(bytes((0x81, n)) for n in range(126))
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


def text_frame(data: bytes) -> bytes:
    """``data`` as one unmasked text frame, as a server sends it."""
    n = len(data)
    if n < 126:
        return _SHORT_HEADERS[n] + data
    if n < 65536:
        return _MEDIUM.pack(0x81, 126, n) + data
    return _LONG.pack(0x81, 127, n) + data


class Session(Protocol):
    """What an open connection feeds: messages in, and the end of the connection."""

    def handle(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class Owner(Protocol):
    """The server side a connection reports to (``gateway.transport.listener.Listener``)."""

    def handshake(self, connection: WsConnection, request: Request) -> None:
        """Start deciding the upgrade; the decision ends with :meth:`WsConnection.respond`."""

    def malformed(self) -> bytes:
        """The HTTP answer to bytes that are not an HTTP request."""

    def closed(self, connection: WsConnection, session: Session | None) -> None:
        """The TCP connection is gone (called once, whatever the state), after
        ``session.close()``."""


class WsConnection(asyncio.Protocol):
    """A WebSocket connection; the session's ``Wire``."""

    __slots__ = (
        "_drain",
        "_early",
        "_fragments",
        "_paused",
        "_timer",
        "admitted",
        "close_timeout",
        "owner",
        "ping_deadline",
        "proto",
        "quiet_since",
        "seen",
        "session",
        "transport",
    )

    def __init__(
        self,
        owner: Owner,
        transport: asyncio.Transport,
        *,
        max_size: int,
        open_timeout: float,
        close_timeout: Callable[[], float],
        logger: logging.Logger,
    ) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = transport
        self.proto = ServerProtocol(max_size=max_size, logger=logger)
        # Read when a closing handshake starts, so a reload changes it for open sessions.
        self.close_timeout = close_timeout
        # Set by the owner: what the handshake admitted, and the session once open.
        self.admitted: object = None
        self.session: Session | None = None
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            open_timeout, self._abort
        )
        self._early: Sequence[object] | None = None
        self._fragments: list[bytes] | None = None
        self._paused = False
        self._drain: asyncio.Future[None] | None = None
        # Keepalive bookkeeping, driven by the owner's sweeper.
        self.seen = True
        self.quiet_since = 0.0
        self.ping_deadline = 0.0

    # -- state ----------------------------------------------------------------------------

    @property
    def open(self) -> bool:
        return self.proto.state is _OPEN and self.transport is not None

    @property
    def deciding(self) -> bool:
        """The request is in and the owner has not answered it yet."""
        return (
            self.session is None
            and self._early is not None
            and self.transport is not None
            and self.proto.state is _CONNECTING
            and not self.proto.close_expected()
        )

    @property
    def close_code(self) -> int | None:
        return self.proto.close_code

    @property
    def remote_address(self) -> object:
        transport = self.transport
        return None if transport is None else transport.get_extra_info("peername")

    def set_max_size(self, max_size: int) -> None:
        """Change the largest message accepted from now on (a reload of the limit)."""
        self.proto.max_message_size = max_size

    def buffered(self) -> int:
        transport = self.transport
        return 0 if transport is None else transport.get_write_buffer_size()

    # -- asyncio.Protocol -----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        proto = self.proto
        proto.receive_data(data)
        events = proto.events_received()
        self.seen = True
        # While connecting, what the parser answers to frames sent ahead of the 101 (a Pong)
        # must wait for the 101: ``respond`` sends it.
        if proto.state is not _CONNECTING or proto.handshake_exc is not None:
            if isinstance(proto.handshake_exc, InvalidMessage) and self._early is None:
                # websockets would only half-close; say why first. (It answers over-long
                # request lines and headers with 414 and 431 itself.)
                self._early = ()
                if self.transport is not None:
                    self.transport.write(self.owner.malformed())
            self._flush()
        if not events:
            return
        if self.session is None:
            first = events[0]
            if isinstance(first, Request) and self._early is None:
                # Frames the client sent right behind its request wait for the verdict.
                self._early = events[1:]
                if self.transport is not None:
                    self.transport.pause_reading()
                self.owner.handshake(self, first)
            return
        self._dispatch(events)

    def eof_received(self) -> bool:
        self.proto.receive_eof()
        self._flush()
        # Returning False lets the transport close itself.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        transport, self.transport = self.transport, None
        if transport is None:
            return
        proto = self.proto
        proto.receive_eof()
        # The parser is a generator whose frame holds the protocol, and the exceptions it
        # keeps (an abrupt EOF, a bad request) hold that frame in their tracebacks: reference
        # cycles only the cyclic GC would free. Breaking them lets refcounting free the
        # connection, and keeps full collections (100+ ms pauses with many connections) rare.
        proto.parser.close()
        proto.parser_exc = None
        proto.handshake_exc = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_exception(WireClosed())
            # Nobody may be waiting on it any more; never log "exception never retrieved".
            drain.exception()
        session, self.session = self.session, None
        if session is not None:
            session.close()
        self.owner.closed(self, session)

    def pause_writing(self) -> None:
        self._paused = True
        # Backpressure both ways: a client that does not read stops being read, so what we
        # answer on our own (Pongs to its Pings, close echoes) cannot pile up without bound.
        if self.session is not None and self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)
        if self.session is not None and self.transport is not None:
            self.transport.resume_reading()

    # -- handshake ------------------------------------------------------------------------

    def respond(self, response: Response, session: Callable[[], Session] | None) -> None:
        """Send the handshake's answer; on 101, open ``session()`` and read on."""
        proto = self.proto
        if self.transport is None or proto.state is not _CONNECTING:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # Answers to frames that came ahead of the verdict go after it, or nowhere.
        ahead = proto.data_to_send()
        proto.send_response(response)
        # A refusal half-closes; _flush arms the close timer for the client's side.
        self._flush()
        if proto.state is not _OPEN:
            # Read on (the parser discards) so the client's FIN ends the connection now
            # rather than at the close timer.
            if self.transport is not None:
                self.transport.resume_reading()
            return
        if ahead and self.transport is not None:
            for data in ahead:
                if data:
                    self.transport.write(data)
                else:
                    self.transport.write_eof()
        assert session is not None
        try:
            self.session = session()
        except Exception:
            logger.exception("session failed to open")
            self.fail(CloseCode.INTERNAL_ERROR, "internal error")
            return
        early, self._early = self._early, ()
        if early:
            self._dispatch(early)
        if self.transport is not None:
            self.transport.resume_reading()

    # -- reading --------------------------------------------------------------------------

    def _dispatch(self, events: Sequence[object]) -> None:
        try:
            self._handle_frames(events)
        except Exception:
            # A bug, not bad input (the session answers that itself): this connection ends
            # with 1011 and the others carry on.
            logger.exception("session failed")
            self.fail(CloseCode.INTERNAL_ERROR, "internal error")

    def _handle_frames(self, events: Sequence[object]) -> None:
        for event in events:
            session = self.session
            if session is None:
                return
            if type(event) is not Frame:
                continue
            opcode = event.opcode
            data = event.data
            if type(data) is not bytes:
                data = bytes(data)
            if opcode is _TEXT or opcode is _BINARY:
                if event.fin:
                    session.handle(data)
                else:
                    self._fragments = [data]
            elif opcode is _CONT:
                fragments = self._fragments
                if fragments is None:
                    continue  # the parser already failed the connection
                fragments.append(data)
                if event.fin:
                    self._fragments = None
                    session.handle(b"".join(fragments))
            elif opcode is _PONG:
                self.ping_deadline = 0.0

    # -- writing --------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Write ``data`` as one text frame now (the caller checked :attr:`open`)."""
        transport = self.transport
        if transport is not None:
            transport.write(text_frame(data))

    async def send_paced(self, data: bytes) -> None:
        """Write one text frame, then wait while the socket's buffer is above its limit."""
        if not self.open:
            raise WireClosed
        self.send(data)
        if self._paused:
            drain = self._drain
            if drain is None:
                drain = self._drain = asyncio.get_running_loop().create_future()
            await asyncio.shield(drain)
            if not self.open:
                raise WireClosed

    def _flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        proto = self.proto
        for data in proto.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()
            else:
                transport.close()
        if proto.close_expected() and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.close_timeout(), self._abort)

    # -- closing --------------------------------------------------------------------------

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake (no-op unless open)."""
        if self.open:
            self.proto.send_close(code, reason)
            self._flush()

    def fail(self, code: int, reason: str = "") -> None:
        """Close without waiting for anything the client sends."""
        if self.transport is not None and self.proto.state is _OPEN:
            self.proto.fail(code, reason)
            self._flush()

    def _abort(self) -> None:
        self._timer = None
        transport = self.transport
        if transport is not None:
            transport.abort()

    def abort(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._abort()

    # -- keepalive ------------------------------------------------------------------------

    def keepalive(self, now: float, interval: float, timeout: float | None) -> None:
        """One sweeper tick: ping after ``interval`` of silence; fail a late Pong."""
        if self.seen:
            self.seen = False
            self.quiet_since = now
            self.ping_deadline = 0.0
            return
        if self.ping_deadline:
            if now >= self.ping_deadline:
                logger.info("closing: keepalive ping timeout")
                self.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
            return
        if now - self.quiet_since >= interval and self.open:
            self.proto.send_ping(b"")
            self._flush()
            if timeout:
                self.ping_deadline = now + timeout
            else:
                self.quiet_since = now


def cast_transport(transport: asyncio.BaseTransport) -> asyncio.Transport:
    # uvloop's transports implement asyncio.Transport without subclassing it.
    return cast(asyncio.Transport, transport)
