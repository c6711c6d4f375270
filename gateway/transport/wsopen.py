"""The opening handshake of a WebSocket connection, before the 101 (a part of
:class:`gateway.transport.ws.WsConnection`).

Bytes gather until the request head is complete (:mod:`.http1` parses it; a malformed or
oversized one is refused at once); reading then pauses while the owner decides and calls
:meth:`Opening.respond`: a 101 (from :mod:`.upgrade`) creates websockets' ``ServerProtocol``
in the OPEN state and opens the session, with the frames that came behind the request; a
refusal half-closes and discards input until the client's FIN or the close timer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from websockets.protocol import State
from websockets.server import ServerProtocol

from gateway.errors import CloseCode, Refusal, RefusalCode
from gateway.transport import http1
from gateway.transport.answer import Answer, closing

if TYPE_CHECKING:
    from gateway.transport.ws import Session

logger = logging.getLogger("gateway.transport.ws")

_OPEN = State.OPEN

# The request line of an upgrade: at most what browsers send and websockets accepted.
MAX_REQUEST_LINE = 8 * 1024

# Where a connection is before its session: reading the request, waiting for the owner's
# verdict (reading paused), or refused (the answer is out; input is discarded until the
# client's FIN). Then websockets' ServerProtocol takes over, created in the OPEN state.
READING, DECIDING, REFUSED, OPENED = range(4)

_NOT_GET = Refusal(code=RefusalCode.METHOD_NOT_ALLOWED, message="WebSocket upgrades use GET")


class Opening:
    """The handshake half of a connection: what it uses of the rest is declared here."""

    # What the handshake changes lives here; the connection declares the rest.
    __slots__ = ("_cork", "_head", "_phase", "_rest", "_timer", "proto", "session")

    proto: ServerProtocol | None
    session: Session | None
    _phase: int
    _head: bytearray | None
    _rest: bytes
    _timer: asyncio.TimerHandle | None
    _cork: list[bytes] | None
    # Read only.
    transport: asyncio.Transport | None
    close_timeout: Callable[[], float]
    _max_size: int
    _logger: logging.Logger

    def _ask_owner(self, head: http1.Head) -> None:
        raise NotImplementedError

    def _flush(self) -> None:
        raise NotImplementedError

    def _uncork(self) -> None:
        raise NotImplementedError

    def _dispatch(self, events: Sequence[object]) -> None:
        raise NotImplementedError

    def _abort(self) -> None:
        raise NotImplementedError

    def fail(self, code: int, reason: str = "") -> None:
        raise NotImplementedError

    def _read_head(self, data: bytes) -> None:
        buffer = self._head
        assert buffer is not None
        buffer += data
        end = http1.head_end(buffer)
        if end < 0:
            refusal = http1.unfinished(buffer, max_request_line=MAX_REQUEST_LINE)
            if refusal is not None:
                self._refuse(closing(Answer.refusal(refusal)))
            return
        head = http1.parse_head(bytes(buffer[:end]), max_request_line=MAX_REQUEST_LINE)
        self._rest = bytes(buffer[http1.body_start(end) :])
        self._head = None
        if not isinstance(head, Refusal) and head.method != "GET":
            head = _NOT_GET
        if isinstance(head, Refusal):
            self._refuse(closing(Answer.refusal(head)))
            return
        self._phase = DECIDING
        if self.transport is not None:
            self.transport.pause_reading()
        self._ask_owner(head)

    def respond(self, response: bytes, session: Callable[[], Session] | None) -> None:
        """Send the handshake's answer: with ``session``, the 101 (then open ``session()`` and
        read on); without, a refusal (then close)."""
        transport = self.transport
        if transport is None or self._phase != DECIDING:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if session is None:
            self._refuse(response)
            return
        self._phase = OPENED
        self.proto = ServerProtocol(state=_OPEN, max_size=self._max_size, logger=self._logger)
        # The 101 and the answers to the frames that came with the request: one write.
        self._cork = [response]
        try:
            self._open(session)
        finally:
            self._uncork()
        if self.transport is not None:
            self.transport.resume_reading()

    def _open(self, session: Callable[[], Session]) -> None:
        try:
            self.session = session()
        except Exception:
            logger.exception("session failed to open")
            self.fail(CloseCode.INTERNAL_ERROR, "internal error")
            return
        rest, self._rest = self._rest, b""
        if rest:
            proto = self.proto
            assert proto is not None
            proto.receive_data(rest)
            events = proto.events_received()
            self._flush()
            if events:
                self._dispatch(events)

    def _refuse(self, response: bytes) -> None:
        """Write ``response``, half-close, and discard input until the client closes (or
        the close timer aborts): closing at once while request bytes are unread would reset
        the connection, which can destroy the answer before the client reads it."""
        self._phase = REFUSED
        self._head = None
        self._rest = b""
        transport = self.transport
        if transport is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        transport.write(response)
        if not transport.can_write_eof():
            self._timer = None
            transport.close()
            return
        transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(self.close_timeout(), self._abort)
        transport.resume_reading()
