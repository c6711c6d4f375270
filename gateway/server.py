"""Network glue: one listening socket for the WebSocket and the HTTP transport.

Each accepted TCP connection starts with a tiny sniffer that reads the request method:
``GET`` connections become a :class:`gateway.wsconn.WsConnection` (websockets' Sans-I/O
``ServerProtocol`` under our own ``asyncio.Protocol``; handshake hook
:meth:`Frontend.process_request`, then a :class:`gateway.session.Peer`); anything else goes
to :class:`gateway.http.HttpConnection`. Both paths parse the sync URL with
:mod:`gateway.handshake` and run the same ``validate_payload`` hook, and both drive the same
:class:`gateway.engine.SyncEngine`.

Timers that would otherwise exist per connection are shared: one sweeper sends keepalive
Pings (and closes connections whose Pong is late), one closes sessions whose credentials
expired, in one-second buckets.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import functools
import hashlib
import hmac
import http
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import orjson
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from gateway import __version__, metrics
from gateway.config import Config
from gateway.engine import SyncEngine
from gateway.handshake import (
    Admission,
    NotSync,
    PayloadContext,
    Refusal,
    ValidatePayload,
    parse_target,
    redact_target,
)
from gateway.http import HttpConnection, HttpResponse, handle_http_request
from gateway.session import Peer
from gateway.wsconn import Session, WsConnection, cast_transport

if TYPE_CHECKING:
    import socket
    from collections.abc import Sequence

logger = logging.getLogger("gateway.server")

SERVER_HEADER = f"gateway/{__version__}"
INFO_TEXT = "Info: gateway sync endpoint for @livestore/sync-cf 0.4.0 clients.\n"
# Longest request method we wait for before deciding how to route a connection.
_MAX_METHOD = 16

ReadyCheck = Callable[[], Awaitable[bool]]
PushGate = Callable[[Admission], Awaitable[None]]

# Request headers the auth gate reads (token sources and the client address).
CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "x-forwarded-for"})

# Seconds between sweeps for sessions whose credentials expired.
EXPIRY_SWEEP_INTERVAL = 1.0

CLOSE_TOKEN_EXPIRED = 4001
CLOSE_FORBIDDEN = 4003


async def _no_gate(admission: Admission) -> None:
    return None


_WS_LOGGER = logging.getLogger("gateway.websockets")


def _quiet_filter(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


class Admitted:
    """What a connection's handshake admitted, kept for its session (and reload checks)."""

    __slots__ = ("admission", "context", "expiry", "started")

    def __init__(self, admission: Admission, context: PayloadContext):
        self.admission = admission
        self.context = context
        # The expiry bucket (a whole second) the connection sits in, if any.
        self.expiry: int | None = None
        self.started = 0.0


def _response(
    status: int, body: bytes, content_type: str, *, extra: Sequence[tuple[str, str]] = ()
) -> Response:
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", content_type),
            *extra,
        ]
    )
    return Response(status, http.HTTPStatus(status).phrase, headers, body)


def refusal_response(refusal: Refusal) -> Response:
    return _response(refusal.status, refusal.body(), "application/json", extra=refusal.headers)


def _wants_websocket(request: Request) -> bool:
    for value in request.headers.get_all("Upgrade"):
        if any(token.strip().lower() == "websocket" for token in value.split(",")):
            return True
    return False


class _Sniffer(asyncio.Protocol):
    """Reads the first bytes of a connection and hands it to the right protocol."""

    def __init__(self, frontend: Frontend) -> None:
        self._frontend = frontend
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast_transport(transport)
        self._frontend.sniffing.add(self._transport)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(
            self._frontend.config.server.open_timeout, self._transport.abort
        )

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        space = self._buffer.find(b" ", 0, _MAX_METHOD)
        if space < 0 and len(self._buffer) < _MAX_METHOD and b"\n" not in self._buffer:
            return
        assert self._transport is not None
        if self._timer is not None:
            self._timer.cancel()
        self._frontend.sniffing.discard(self._transport)
        method = bytes(self._buffer[:space]) if space > 0 else b""
        initial = bytes(self._buffer)
        self._buffer.clear()
        if method == b"GET" or space < 0:
            # Malformed request lines get their 400 from the WebSocket path.
            self._frontend.open_websocket(self._transport, initial)
        else:
            self._frontend.open_http(self._transport, initial)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            self._frontend.sniffing.discard(self._transport)


class Frontend:
    """The listening socket and everything that happens before the sync engine."""

    def __init__(
        self,
        config: Config,
        engine: SyncEngine,
        validate_payload: ValidatePayload,
        ready_check: ReadyCheck,
        push_gate: PushGate = _no_gate,
    ) -> None:
        self.config = config
        self.engine = engine
        self.validate_payload = validate_payload
        self.ready_check = ready_check
        self.push_gate = push_gate
        # websockets logs request lines and headers (tokens!) below WARNING: never let it,
        # whatever level the embedding application configures.
        # The level also spares building records the filter would drop.
        if _WS_LOGGER.getEffectiveLevel() < logging.WARNING:
            _WS_LOGGER.setLevel(logging.WARNING)
        if _quiet_filter not in _WS_LOGGER.filters:
            _WS_LOGGER.addFilter(_quiet_filter)
        self.server: asyncio.Server | None = None
        # Every WebSocket connection from the sniffer's handoff to connection_lost; the
        # open sessions among them are those with a ``session``.
        self.ws_connections: set[WsConnection] = set()
        self._ws_gone: asyncio.Event | None = None
        self.http_connections: set[HttpConnection] = set()
        # Connections that have not sent their request method yet.
        self.sniffing: set[asyncio.Transport] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._expiries: dict[int, set[WsConnection]] = {}
        self._sweepers: list[asyncio.Task[None]] = []
        self.closing = False

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        server_config = self.config.server
        self.server = await loop.create_server(
            lambda: _Sniffer(self), server_config.host, server_config.port, backlog=1024
        )
        self._sweepers.append(loop.create_task(self._sweep_expiries()))
        self._sweepers.append(loop.create_task(self._sweep_keepalive()))

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        assert self.server is not None
        return tuple(self.server.sockets)

    @property
    def port(self) -> int:
        return int(self.sockets[0].getsockname()[1])

    def sessions(self) -> list[WsConnection]:
        """Open WebSocket sessions."""
        return [c for c in self.ws_connections if c.session is not None and c.open]

    def stop_accepting(self) -> None:
        """Close the listening socket; established connections carry on."""
        self.closing = True
        for sweeper in self._sweepers:
            sweeper.cancel()
        if self.server is not None:
            self.server.close()

    async def close(self, timeout: float) -> None:  # noqa: ASYNC109 - bounds several waits
        """Close peers with 1001 (going away), end HTTP connections, wait for handlers;
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
                connection.close(1001, "server shutting down")
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
        for conn in tuple(self.http_connections):
            conn.abort()
        if self._tasks:
            await asyncio.wait(tuple(self._tasks), timeout=max(deadline - loop.time(), 0.1))
        if self.server is not None:
            try:
                async with asyncio.timeout_at(max(deadline, loop.time() + 0.1)):
                    await self.server.wait_closed()
            except TimeoutError:
                logger.warning("listening socket still has connections after %.1f s", timeout)

    def spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- routing --------------------------------------------------------------------------

    def open_websocket(self, transport: asyncio.Transport, initial: bytes) -> None:
        server_config = self.config.server
        connection = WsConnection(
            self,
            transport,
            max_size=self.config.limits.max_message_bytes,
            open_timeout=server_config.open_timeout,
            close_timeout=server_config.close_timeout,
            logger=_WS_LOGGER,
        )
        self.ws_connections.add(connection)
        transport.set_protocol(connection)
        connection.data_received(initial)

    def open_http(self, transport: asyncio.Transport, initial: bytes) -> None:
        conn = HttpConnection(self, transport)
        self.http_connections.add(conn)
        transport.set_protocol(conn)
        conn.data_received(initial)

    # -- WebSocket: the wsconn Owner ------------------------------------------------------

    def handshake(self, connection: WsConnection, request: Request) -> None:
        self.spawn(self._handshake(connection, request))

    def malformed(self) -> bytes:
        return refusal_response(
            Refusal(status=400, code="BAD_REQUEST", message="malformed HTTP request")
        ).serialize()

    async def _handshake(self, connection: WsConnection, request: Request) -> None:
        try:
            response = await self.process_request(connection, request)
        except Exception:
            logger.exception("handshake failed")
            response = refusal_response(
                Refusal(status=500, code="INTERNAL_ERROR", message="internal server error")
            )
        if response is None:
            response = connection.proto.accept(request)
            if response.status_code == 101 and self.closing:
                response = refusal_response(
                    Refusal(status=503, code="SHUTTING_DOWN", message="server is shutting down")
                )
        response.headers["Server"] = SERVER_HEADER
        connection.respond(response, lambda: self._open_session(connection))
        # The parser's frame keeps the request for the connection's lifetime; what the
        # session needs from its headers was copied (``Admitted``).
        request.headers.clear()

    def closed(self, connection: WsConnection, session: Session | None) -> None:
        self.ws_connections.discard(connection)
        if isinstance(session, Peer):
            self._close_session(connection, session)
        if self._ws_gone is not None and not self.ws_connections:
            self._ws_gone.set()

    async def process_request(self, connection: WsConnection, request: Request) -> Response | None:
        """The handshake hook: answer plain GETs, refuse bad sync requests before 101."""
        limits = self.config.limits
        target = parse_target(
            request.path,
            max_store_id_length=limits.max_store_id_length,
            max_payload_bytes=limits.max_payload_bytes,
        )
        if isinstance(target, NotSync):
            return await self.plain_get(target.path, request, connection)
        if isinstance(target, Refusal):
            return refusal_response(target)
        if target.transport != "ws":
            return refusal_response(
                Refusal(
                    status=405,
                    code="METHOD_NOT_ALLOWED",
                    message="the http transport uses POST",
                    headers=(("Allow", "POST, OPTIONS"),),
                )
            )
        if not _wants_websocket(request):
            return refusal_response(
                Refusal(
                    status=426,
                    code="UPGRADE_REQUIRED",
                    message="transport=ws expects Upgrade: websocket",
                    headers=(("Upgrade", "websocket"),),
                )
            )
        if self.closing:
            return refusal_response(
                Refusal(status=503, code="SHUTTING_DOWN", message="server is shutting down")
            )
        context = PayloadContext(
            store_id=target.store_id,
            payload=target.payload,
            transport="ws",
            headers={name.lower(): value for name, value in request.headers.raw_items()},
            remote_addr=_remote(connection.remote_address),
            query_token=target.query_token,
        )
        decision = await self.validate_payload(context)
        if isinstance(decision, Refusal):
            logger.info(
                "refused ws store=%s path=%s code=%s remote=%s",
                target.store_id,
                redact_target(request.path),
                decision.code,
                context.remote_addr,
            )
            return refusal_response(decision)
        # Kept to re-check the session after a reload: only the headers credentials come
        # from, so an idle connection does not hold every request header.
        kept = dataclasses.replace(
            context,
            headers={k: v for k, v in context.headers.items() if k in CREDENTIAL_HEADERS},
        )
        connection.admitted = Admitted(decision, kept)
        return None

    async def plain_get(self, path: str, request: Request, connection: WsConnection) -> Response:
        if path == "/healthz":
            return _response(200, b"ok\n", "text/plain; charset=utf-8")
        if path == "/readyz":
            if not self.closing and await self.ready_check():
                return _response(200, b"ready\n", "text/plain; charset=utf-8")
            return refusal_response(
                Refusal(status=503, code="NOT_READY", message="the store is not reachable")
            )
        if path == "/stats":
            if not self._operator(request, connection):
                return refusal_response(
                    Refusal(
                        status=403,
                        code="FORBIDDEN",
                        message="/stats needs Authorization: Bearer <bypass token>",
                    )
                )
            return _response(200, orjson.dumps(self.stats()), "application/json")
        if path == "/metrics" and self.config.metrics.enabled:
            return _response(200, self.engine.metrics.render(), metrics.CONTENT_TYPE)
        if path == "/":
            return _response(200, INFO_TEXT.encode(), "text/plain; charset=utf-8")
        return refusal_response(Refusal(status=404, code="NOT_FOUND", message="no such endpoint"))

    def _operator(self, request: Request, connection: WsConnection) -> bool:
        """Operator endpoints: the bypass token as a Bearer token, or loopback when unset."""
        token = self.config.auth.bypass_token
        if not token:
            address = connection.remote_address
            return isinstance(address, tuple) and address[0] in ("127.0.0.1", "::1")
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            hashlib.sha256(value.strip().encode()).digest(),
            hashlib.sha256(token.encode()).digest(),
        )

    def stats(self) -> dict[str, object]:
        """Connections per store and per subject (``gateway stats``)."""
        by_store: Counter[str] = Counter()
        by_subject: Counter[str] = Counter()
        for connection in self.sessions():
            admitted = _admitted(connection)
            by_store[admitted.context.store_id] += 1
            by_subject[admitted.admission.subject] += 1
        counters = self.engine.counters
        return {
            "connections": {"ws": sum(by_store.values()), "http": len(self.http_connections)},
            "stores": dict(by_store.most_common()),
            "subjects": dict(by_subject.most_common()),
            "live_subscribers": self.engine.hub.subscriber_count(),
            "stores_loaded": self.engine.stores_loaded,
            "pushes_accepted": counters.pushes_accepted,
            "events_accepted": counters.events_accepted,
        }

    def _open_session(self, connection: WsConnection) -> Peer:
        admitted = _admitted(connection)
        store_id, admission = admitted.context.store_id, admitted.admission
        peer = Peer(
            connection,
            store_id,
            self.engine,
            limits=self.config.limits,
            # A partial, not a closure: one object per idle connection instead of three.
            before_push=functools.partial(self.push_gate, admission),
        )
        admitted.started = time.monotonic()
        logger.info(
            "open transport=ws store=%s subject=%s instance=%s reason=%s token=%s remote=%s",
            store_id,
            admission.subject,
            admission.instance_id,
            admission.reason,
            admission.fingerprint,
            admitted.context.remote_addr,
        )
        self._schedule_expiry(connection, admission.expires_at)
        counters = self.engine.counters
        counters.connections["ws"] += 1
        counters.connections_total["ws"] += 1
        return peer

    def _close_session(self, connection: WsConnection, peer: Peer) -> None:
        admitted = _admitted(connection)
        self.engine.counters.connections["ws"] -= 1
        self._schedule_expiry(connection, None)
        logger.info(
            "close transport=ws store=%s subject=%s instance=%s code=%s duration=%.1fs "
            "events_in=%d frames_out=%d remote=%s",
            admitted.context.store_id,
            admitted.admission.subject,
            admitted.admission.instance_id,
            connection.close_code,
            time.monotonic() - admitted.started,
            peer.events_in,
            peer.frames_out,
            admitted.context.remote_addr,
        )

    async def _sweep_keepalive(self) -> None:
        """Keepalive for every open session from one task (see ``WsConnection.keepalive``).

        The settings are read on every tick, so a reload changes them for all sessions.
        """
        loop = asyncio.get_running_loop()
        while True:
            server_config = self.config.server
            interval = server_config.ping_interval or 0.0
            timeout = server_config.ping_timeout or None
            tick = min(interval, timeout or interval) / 2 if interval else 1.0
            await asyncio.sleep(min(max(tick, 0.05), 5.0))
            if not interval:
                continue
            now = loop.time()
            for connection in tuple(self.ws_connections):
                if connection.session is not None:
                    connection.keepalive(now, interval, timeout)

    def _schedule_expiry(self, connection: WsConnection, expires_at: float | None) -> None:
        """The session lives while its credential would still be accepted.

        Expiries are kept in one-second buckets swept by a single task, instead of a timer
        handle per connection.
        """
        admitted = _admitted(connection)
        if admitted.expiry is not None:
            bucket = self._expiries.get(admitted.expiry)
            if bucket is not None:
                bucket.discard(connection)
                if not bucket:
                    del self._expiries[admitted.expiry]
            admitted.expiry = None
        if expires_at is not None:
            second = math.ceil(expires_at)
            self._expiries.setdefault(second, set()).add(connection)
            admitted.expiry = second

    async def _sweep_expiries(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_SWEEP_INTERVAL)
            now = time.time()
            for second in sorted(s for s in self._expiries if s <= now):
                for connection in self._expiries.pop(second):
                    _admitted(connection).expiry = None
                    self._expire(connection)

    async def recheck_sessions(
        self, check: Callable[[PayloadContext], Awaitable[Refusal | float | None]]
    ) -> int:
        """After a reload: close sessions the new policy refuses; returns how many."""
        closed = 0
        for connection in self.sessions():
            admitted = _admitted(connection)
            outcome = await check(admitted.context)
            if not connection.open:
                continue
            if isinstance(outcome, Refusal):
                code = CLOSE_TOKEN_EXPIRED if outcome.code == "TOKEN_EXPIRED" else CLOSE_FORBIDDEN
                logger.info(
                    "closing store=%s subject=%s after reload: %s",
                    admitted.context.store_id,
                    admitted.admission.subject,
                    outcome.code,
                )
                connection.close(code, outcome.code.lower())
                closed += 1
            else:
                self._schedule_expiry(connection, outcome)
        return closed

    def _expire(self, connection: WsConnection) -> None:
        admitted = _admitted(connection)
        logger.info(
            "closing store=%s subject=%s: token expired",
            admitted.context.store_id,
            admitted.admission.subject,
        )
        connection.close(CLOSE_TOKEN_EXPIRED, "token expired")

    # -- HTTP -----------------------------------------------------------------------------

    async def handle_http(
        self, method: str, target: str, headers: dict[str, str], body: bytes, remote: str | None
    ) -> HttpResponse:
        return await handle_http_request(self, method, target, headers, body, remote)


def _admitted(connection: WsConnection) -> Admitted:
    admitted = connection.admitted
    assert isinstance(admitted, Admitted)
    return admitted


def _remote(address: object) -> str | None:
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return None
