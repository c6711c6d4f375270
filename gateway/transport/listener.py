"""The listening socket: accept, route, answer handshakes, shut down.

Each accepted TCP connection starts with a tiny sniffer that reads the request method:
``GET`` connections become a :class:`~gateway.transport.ws.WsConnection` (our own
``asyncio.Protocol``: the upgrade is read and answered by :mod:`~gateway.transport.http1` and
:mod:`~gateway.transport.upgrade`, the frames by websockets' Sans-I/O ``ServerProtocol``);
anything else goes to :class:`~gateway.transport.httpconn.HttpConnection`. Both ask
:func:`gateway.admission.admit` whether a sync request is admitted. A WebSocket request
without sync parameters is one of the plain :mod:`~gateway.transport.endpoints`; an admitted
one becomes a session, kept by :class:`~gateway.transport.sessions.Sessions`.

One request's path: ``_Sniffer`` -> ``WsConnection`` (parses the upgrade) ->
``Listener.handshake`` (sheds it, 503 ``OVERLOADED``, while too many wait) -> ``admit``
(target, transport, shutdown, ``validate_payload``) ->
``WsConnection.respond`` (101) -> ``Sessions.open`` -> ``Peer`` (RPC frames) ->
``SyncEngine`` -> store and hub.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from gateway import protocol
from gateway.admission import (
    Admitted,
    Incoming,
    NotSync,
    Transport,
    ValidatePayload,
    admit,
)
from gateway.config import LiveConfig
from gateway.errors import CloseCode, Refusal, RefusalCode
from gateway.shedding import is_sync_target, shed
from gateway.transport import tls, upgrade
from gateway.transport.answer import SERVER_HEADER, Answer, closing
from gateway.transport.endpoints import Endpoints
from gateway.transport.http1 import Head
from gateway.transport.httpconn import HttpConnection
from gateway.transport.sessions import Sessions
from gateway.transport.ws import Session, WsConnection, cast_transport

if TYPE_CHECKING:
    import socket

logger = logging.getLogger("gateway.server")

# Longest request method we wait for before deciding how to route a connection.
_MAX_METHOD = 16

HttpCall = Callable[[Admitted, protocol.Request], Awaitable[list[bytes]]]

_WS_LOGGER = logging.getLogger("gateway.websockets")


def _quiet_filter(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


def remote_text(address: object) -> str | None:
    """``host:port`` of a socket's peer address, for logs and the auth gate."""
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return None


class _Sniffer(asyncio.Protocol):
    """Reads the first bytes of a connection and hands it to the right protocol."""

    def __init__(self, listener: Listener) -> None:
        self._listener = listener
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast_transport(transport)
        self._listener.sniffing.add(self._transport)
        loop = asyncio.get_running_loop()
        timeout = self._listener.settings.current.server.open_timeout
        self._timer = loop.call_later(timeout, self._transport.abort)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        space = self._buffer.find(b" ", 0, _MAX_METHOD)
        if space < 0 and len(self._buffer) < _MAX_METHOD and b"\n" not in self._buffer:
            return
        assert self._transport is not None
        if self._timer is not None:
            self._timer.cancel()
        self._listener.sniffing.discard(self._transport)
        method = bytes(self._buffer[:space]) if space > 0 else b""
        initial = bytes(self._buffer)
        self._buffer.clear()
        if method == b"GET" or space < 0:
            # Malformed request lines get their 400 from the WebSocket path.
            self._listener.open_websocket(self._transport, initial)
        else:
            self._listener.open_http(self._transport, initial)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            self._listener.sniffing.discard(self._transport)


class Listener:
    """The listening socket and every connection on it, up to the session.

    It is the ``Owner`` both connection kinds report to (:mod:`.ws`, :mod:`.httpconn`).
    """

    def __init__(
        self,
        settings: LiveConfig,
        *,
        validate_payload: ValidatePayload,
        sessions: Sessions,
        endpoints: Endpoints,
        http_call: HttpCall,
    ) -> None:
        self.settings = settings
        self._validate_payload = validate_payload
        self._sessions = sessions
        self._endpoints = endpoints
        self._http_call = http_call
        # websockets logs request lines and headers (tokens!) below WARNING: never let it,
        # whatever level the embedding application configures.
        # The level also spares building records the filter would drop.
        if _WS_LOGGER.getEffectiveLevel() < logging.WARNING:
            _WS_LOGGER.setLevel(logging.WARNING)
        if _quiet_filter not in _WS_LOGGER.filters:
            _WS_LOGGER.addFilter(_quiet_filter)
        self.server: asyncio.Server | None = None
        # Every WebSocket connection from the sniffer's handoff to connection_lost.
        self.ws_connections: set[WsConnection] = set()
        self._ws_gone: asyncio.Event | None = None
        self.http_connections: set[HttpConnection] = set()
        # Connections that have not sent their request method yet.
        self.sniffing: set[asyncio.Transport] = set()
        # WebSocket connections whose request has not been answered yet: the handshakes
        # pending (load shedding, ``limits.max_pending_handshakes``; gateway.shedding).
        self.unanswered: set[WsConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self.tls: ssl.SSLContext | None = None
        # One callable for every connection (read when a closing handshake starts).
        self._close_timeout = lambda: self.settings.current.server.close_timeout

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        server_config = self.settings.current.server
        if server_config.tls_cert_file:
            self.tls = tls.server_context(server_config.tls_cert_file, server_config.tls_key_file)
        self.server = await loop.create_server(
            lambda: _Sniffer(self),
            server_config.host,
            server_config.port,
            backlog=server_config.backlog,
            ssl=self.tls,
            ssl_handshake_timeout=server_config.open_timeout if self.tls else None,
        )

    def reload_tls(self, cert_file: str, key_file: str) -> None:
        """New handshakes present the chain now in ``cert_file`` (raises ConfigError)."""
        if self.tls is not None:
            tls.reload(self.tls, cert_file, key_file)

    @property
    def scheme(self) -> str:
        return "wss" if self.tls is not None else "ws"

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        assert self.server is not None
        return tuple(self.server.sockets)

    @property
    def closing(self) -> bool:
        """The server is stopping: new sync requests get 503 ``SHUTTING_DOWN``."""
        return self._closing

    def is_closing(self) -> bool:
        return self._closing

    def stop_accepting(self) -> None:
        """Close the listening socket; established connections carry on."""
        self._closing = True
        if self.server is not None:
            self.server.close()

    async def close(self, timeout: float) -> None:  # noqa: ASYNC109 - bounds several waits
        """Close sessions with 1001 (going away), end HTTP connections, wait for handlers;
        all within ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self.stop_accepting()
        for transport in tuple(self.sniffing):
            transport.abort()
        for conn in tuple(self.http_connections):
            conn.shutdown()
        gone = self._ws_gone = asyncio.Event()
        for connection in tuple(self.ws_connections):
            if connection.session is not None:
                connection.close(CloseCode.GOING_AWAY, "server shutting down")
            elif not connection.deciding:
                # An incomplete request, or a refusal already sent (only the client's FIN is
                # awaited). Handshakes being decided get 503 (``closing``) and close too.
                connection.abort()
        if self.ws_connections:
            try:
                async with asyncio.timeout_at(deadline):
                    await gone.wait()
            except TimeoutError:
                logger.warning("connections still open after %.1f s; aborting them", timeout)
                for connection in tuple(self.ws_connections):
                    connection.abort()
        if self._tasks:
            # Handshakes being decided and HTTP requests in progress get their answer (503
            # or the result) before their connections go.
            await asyncio.wait(tuple(self._tasks), timeout=max(deadline - loop.time(), 0.1))
        for conn in tuple(self.http_connections):
            conn.abort()
        if self.server is not None:
            try:
                async with asyncio.timeout_at(max(deadline, loop.time() + 0.1)):
                    await self.server.wait_closed()
            except TimeoutError:
                logger.warning("listening socket still has connections after %.1f s", timeout)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- routing --------------------------------------------------------------------------

    def open_websocket(self, transport: asyncio.Transport, initial: bytes) -> None:
        current = self.settings.current
        connection = WsConnection(
            self,
            transport,
            max_size=current.limits.max_message_bytes,
            open_timeout=current.server.open_timeout,
            close_timeout=self._close_timeout,
            logger=_WS_LOGGER,
        )
        self.ws_connections.add(connection)
        self.unanswered.add(connection)
        transport.set_protocol(connection)
        connection.data_received(initial)

    def open_http(self, transport: asyncio.Transport, initial: bytes) -> None:
        conn = HttpConnection(self, transport, self.settings)
        self.http_connections.add(conn)
        self._sessions.http_opened()
        transport.set_protocol(conn)
        conn.data_received(initial)

    # -- admission, for both transports ---------------------------------------------------

    def pending_handshakes(self) -> int:
        """WebSocket connections handed over by the sniffer whose request has not been
        answered yet (in the queue of work, or still arriving)."""
        return len(self.unanswered)

    def _shed(self, head: Head) -> Answer | None:
        """Load shedding, as the request arrives: 503 OVERLOADED when too many wait ahead."""
        limit = self.settings.current.limits.max_pending_handshakes
        # The connection asking is one of the unanswered: count the others.
        if limit <= 0 or len(self.unanswered) <= limit or not is_sync_target(head.target):
            return None
        refusal = shed(len(self.unanswered) - 1, limit=limit)
        if refusal is None:
            return None
        self._sessions.counters.handshakes_shed += 1
        return Answer.refusal(refusal)

    async def admit(self, request: Incoming, via: Transport) -> Admitted | Refusal | NotSync:
        current = self.settings.current
        limits = current.limits
        return await admit(
            request,
            via=via,
            max_store_id_length=limits.max_store_id_length,
            max_payload_bytes=limits.max_payload_bytes,
            transports=current.server.transports,
            allowed_origins=current.server.allowed_origins,
            closing=self.is_closing,
            validate_payload=self._validate_payload,
        )

    # -- WebSocket: the ws Owner ----------------------------------------------------------

    def handshake(self, connection: WsConnection, head: Head) -> None:
        shed = self._shed(head)
        if shed is not None:
            self._answer(connection, head, shed)
            return
        self.spawn(self._handshake(connection, head))

    async def _handshake(self, connection: WsConnection, head: Head) -> None:
        try:
            answer = await self._decide(connection, head)
        except Exception:
            logger.exception("handshake failed")
            self.request_failed("ws")
            refusal = Refusal(code=RefusalCode.INTERNAL_ERROR, message="internal server error")
            answer = Answer.refusal(refusal)
        self._answer(connection, head, answer)

    def _answer(self, connection: WsConnection, head: Head, answer: Answer | None) -> None:
        """Send the handshake's answer (None: accept it and open the session)."""
        self.unanswered.discard(connection)
        if answer is not None:
            connection.respond(closing(answer), None)
            return
        # An admitted request that is not a valid upgrade (a bad Sec-WebSocket-Key...).
        opening = upgrade.switching_protocols(head, SERVER_HEADER)
        if isinstance(opening, Refusal):
            connection.respond(closing(Answer.refusal(opening)), None)
        else:
            connection.respond(opening, lambda: self._sessions.open(connection))

    async def _decide(self, connection: WsConnection, head: Head) -> Answer | None:
        """The handshake hook: None to accept, else the answer (an endpoint or a refusal)."""
        headers = head.headers
        remote = remote_text(connection.remote_address)
        incoming = Incoming(method="GET", target=head.target, headers=headers, remote_addr=remote)
        outcome = await self.admit(incoming, "ws")
        if isinstance(outcome, NotSync):
            return await self._endpoints.answer(outcome.path, headers, remote)
        if isinstance(outcome, Refusal):
            return Answer.refusal(outcome)
        self._sessions.admitted(connection, outcome)
        return None

    def closed(self, connection: WsConnection, session: Session | None) -> None:
        self.ws_connections.discard(connection)
        self.unanswered.discard(connection)
        self._sessions.closed(connection, session)
        if self._ws_gone is not None and not self.ws_connections:
            self._ws_gone.set()

    # -- HTTP: the http Owner -------------------------------------------------------------

    async def call(self, admitted: Admitted, request: protocol.Request) -> list[bytes]:
        return await self._http_call(admitted, request)

    def take_over(self, conn: HttpConnection, transport: asyncio.Transport, initial: bytes) -> None:
        self.http_closed(conn)
        self.open_websocket(transport, initial)

    def request_failed(self, transport: Transport) -> None:
        self._sessions.counters.requests_failed[transport] += 1

    def http_closed(self, conn: HttpConnection) -> None:
        if conn in self.http_connections:
            self.http_connections.discard(conn)
            self._sessions.http_closed()
