"""The HTTP transport (spec §10): a small HTTP/1.1 server for ``POST`` and ``OPTIONS``.

Each POST carries one JSON ``Request``; the answer is a JSON array of the frames the
WebSocket transport would have sent for it, ending with its ``Exit``. Requests are handled
one at a time per connection (reading pauses meanwhile), with keep-alive. Bodies must carry
a ``Content-Length``; chunked uploads are refused with 411.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
from collections.abc import Coroutine
from typing import Any, Protocol

from gateway import protocol
from gateway.admission import (
    Admitted,
    Incoming,
    NotSync,
    Transport,
    cors_headers,
    origin_allowed,
    redact_target,
)
from gateway.config import LiveConfig
from gateway.errors import FrameError, Refusal, RefusalCode, StoreError
from gateway.protocol import Request
from gateway.transport import http1
from gateway.transport.answer import SERVER_HEADER, Answer, encode

logger = logging.getLogger(__name__)

# How long a connection closed after an error answer keeps draining the client's input.
LINGER_SECONDS = 2.0


class Owner(Protocol):
    """The server side an HTTP connection reports to (``gateway.transport.listener``)."""

    @property
    def closing(self) -> bool:
        """The server is stopping: answer the request in progress, then close."""

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task the server waits for when it stops."""

    async def admit(self, request: Incoming, via: Transport) -> Admitted | Refusal | NotSync:
        """:func:`gateway.admission.admit` with the server's settings and hook."""

    async def call(self, admitted: Admitted, request: Request) -> list[bytes]:
        """Run one RPC request of an admitted sync request; its frames, Exit last."""

    def http_closed(self, conn: HttpConnection) -> None:
        """The TCP connection is gone (called once)."""

    def request_failed(self, transport: Transport) -> None:
        """A request ended by an unexpected exception (it was answered 500)."""

    def take_over(self, conn: HttpConnection, transport: asyncio.Transport, initial: bytes) -> None:
        """Serve the rest of the connection on the WebSocket path, from ``initial`` on."""


def _preflight(headers: dict[str, str]) -> Answer:
    """A CORS preflight: browsers send one before a POST with a JSON body."""
    allow_headers = headers.get("access-control-request-headers", "content-type")
    return Answer(
        204,
        headers=(
            ("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
            ("Access-Control-Allow-Headers", allow_headers),
            ("Access-Control-Max-Age", "86400"),
        ),
    )


class HttpConnection(asyncio.Protocol):
    """One HTTP/1.1 connection of the HTTP transport (until a GET hands it over)."""

    def __init__(self, owner: Owner, transport: asyncio.Transport, settings: LiveConfig) -> None:
        self._owner = owner
        self._settings = settings
        self._transport = transport
        self._buffer = bytearray()
        self._busy = False
        self._closing = False
        self._lingering = False
        self._idle: asyncio.TimerHandle | None = None
        peer = transport.get_extra_info("peername")
        self._remote = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else None
        self._arm_idle()

    # -- asyncio.Protocol -----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # the answer is out; input is discarded until the peer closes
        self._buffer += data
        if not self._busy:
            self._next()

    def eof_received(self) -> bool:
        # Finish the request in progress, if any, then close.
        self._closing = True
        if not self._busy or self._lingering:
            self._transport.close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._idle is not None:
            self._idle.cancel()
        self._owner.http_closed(self)

    # -- lifecycle ------------------------------------------------------------------------

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(
            self._settings.current.server.http_keepalive_timeout, self._transport.close
        )

    def shutdown(self) -> None:
        """Server shutdown: close now if idle, else after the current response."""
        self._closing = True
        if not self._busy:
            self._transport.close()

    def abort(self) -> None:
        self._transport.abort()

    # -- parsing --------------------------------------------------------------------------

    def _fail(self, refusal: Refusal) -> None:
        self._closing = True
        self._write(Answer.refusal(refusal), keep_alive=False)

    def _next(self) -> None:
        """Parse and start the next complete request in the buffer, if there is one."""
        if self._closing:
            return
        end = http1.head_end(self._buffer)
        if end < 0:
            refusal = http1.unfinished(self._buffer)
            if refusal is not None:
                self._fail(refusal)
            return
        head = http1.parse_head(bytes(self._buffer[:end]))
        if isinstance(head, Refusal):
            self._fail(head)
            return
        method, target, version, headers = head
        if method == "GET":
            # A GET on a kept-alive connection (an upgrade after a fetch: Node's WebSocket
            # reuses pooled connections) is served exactly as on a fresh one: the WebSocket
            # path takes the connection over, with this request and what follows it.
            if self._idle is not None:
                self._idle.cancel()
            self._closing = True
            initial = bytes(self._buffer)
            self._buffer.clear()
            self._owner.take_over(self, self._transport, initial)
            return
        if "transfer-encoding" in headers:
            self._fail(
                Refusal(
                    code=RefusalCode.LENGTH_REQUIRED, message="send the body with a Content-Length"
                )
            )
            return
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit():
            self._fail(Refusal(code=RefusalCode.BAD_REQUEST, message="invalid Content-Length"))
            return
        length = int(length_text)
        if length > self._settings.current.limits.max_message_bytes:
            self._fail(
                Refusal(code=RefusalCode.PAYLOAD_TOO_LARGE, message="request body is too large")
            )
            return
        start = http1.body_start(end)
        if len(self._buffer) < start + length:
            return
        body = bytes(self._buffer[start : start + length])
        del self._buffer[: start + length]
        keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        self._busy = True
        if self._idle is not None:
            self._idle.cancel()
        self._transport.pause_reading()
        request = Incoming(method=method, target=target, headers=headers, remote_addr=self._remote)
        self._owner.spawn(self._respond(request, body, keep_alive))

    async def _respond(self, request: Incoming, body: bytes, keep_alive: bool) -> None:
        try:
            response = await self._handle(request, body)
        except StoreError as exc:
            # Transient: a 5xx makes the client retry (an UnknownError would be final).
            logger.error("http request failed path=%s: %s", redact_target(request.target), exc)
            refusal = Refusal(code=RefusalCode.STORAGE_UNAVAILABLE, message="storage unavailable")
            response = Answer.transient(refusal)
        except Exception:
            # Where every HTTP request ends: whatever failed underneath, it gets an answer.
            logger.exception("http request failed path=%s", redact_target(request.target))
            self._owner.request_failed("http")
            refusal = Refusal(code=RefusalCode.INTERNAL_ERROR, message="internal server error")
            response = Answer.transient(refusal)
        if self._transport.is_closing():
            return
        keep_alive = keep_alive and not self._closing and not self._owner.closing
        self._write(response, keep_alive=keep_alive, origin=request.headers.get("origin"))
        self._busy = False
        if keep_alive:
            self._arm_idle()
            self._transport.resume_reading()
            self._next()

    async def _handle(self, request: Incoming, body: bytes) -> Answer:
        if request.method == "OPTIONS":
            allowed = self._settings.current.server.allowed_origins
            if not origin_allowed(request.headers.get("origin"), allowed):
                return Answer.refusal(
                    Refusal(
                        code=RefusalCode.ORIGIN_FORBIDDEN,
                        message="this origin may not use this server",
                    )
                )
            return _preflight(dict(request.headers))
        admitted = await self._owner.admit(request, "http")
        if isinstance(admitted, Refusal):
            if admitted.status >= 500:  # shutting down: retry elsewhere, soon
                return Answer.transient(admitted)
            return Answer.refusal(admitted)
        assert not isinstance(admitted, NotSync)  # the http transport has no plain endpoints
        try:
            message = protocol.decode_frame(body)
        except FrameError as exc:
            return Answer.refusal(Refusal(code=RefusalCode.BAD_REQUEST, message=str(exc)))
        if not isinstance(message, Request):
            return Answer.refusal(
                Refusal(code=RefusalCode.BAD_REQUEST, message="the body must be one Request")
            )
        frames = await self._owner.call(admitted, message)
        return Answer(200, b"[" + b",".join(frames) + b"]")

    def _write(self, response: Answer, *, keep_alive: bool, origin: str | None = None) -> None:
        headers = [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Server", SERVER_HEADER),
            ("Content-Length", str(len(response.body))),
        ]
        if response.body or response.status != 204:
            headers.append(("Content-Type", response.content_type))
        server_config = self._settings.current.server
        headers.extend(
            cors_headers(origin, server_config.cors_allow_origin, server_config.allowed_origins)
        )
        headers.extend(response.headers)
        headers.extend(server_config.response_headers.items())
        if keep_alive:
            timeout = int(server_config.http_keepalive_timeout)
            headers += [("Connection", "keep-alive"), ("Keep-Alive", f"timeout={timeout}")]
        else:
            headers.append(("Connection", "close"))
        self._transport.write(encode(response.status, headers, response.body))
        if not keep_alive:
            self._closing = True
            self._close_after_answer()

    def _close_after_answer(self) -> None:
        """Lingering close: half-close, then discard input briefly before closing.

        Closing at once while request bytes are still unread makes the kernel send a reset,
        which can destroy the answer (a 413 or 431) before the client reads it.
        """
        self._buffer.clear()
        if not self._transport.can_write_eof():
            self._transport.close()
            return
        self._transport.write_eof()
        self._lingering = True
        self._transport.resume_reading()
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(LINGER_SECONDS, self._transport.close)
