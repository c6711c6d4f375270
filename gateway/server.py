"""Network glue: one listening socket for the WebSocket and the HTTP transport.

``websockets`` only handles ``GET`` requests, while the HTTP transport POSTs JSON bodies.
So each accepted TCP connection starts with a tiny sniffer that reads the request method:
``GET`` connections are handed, bytes and all, to a ``websockets`` ``ServerConnection``
(handshake hook :meth:`Frontend.process_request`, then :class:`gateway.session.Peer`);
anything else goes to :class:`gateway.http.HttpConnection`. Both paths parse the sync URL
with :mod:`gateway.handshake` and run the same ``validate_payload`` hook, and both drive
the same :class:`gateway.engine.SyncEngine`.

We build the ``websockets`` ``Server`` ourselves instead of calling ``serve()`` because
``serve()`` owns the protocol factory, and the sniffer must run first. The connection
handler below mirrors the one in ``websockets.asyncio.server.serve`` (handshake under
``open_timeout``, then the session), which is why websockets is pinned below 18.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import hashlib
import hmac
import http
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, cast

import orjson
from websockets.asyncio.server import Server, ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

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


class GatewayConnection(ServerConnection):
    """A ``ServerConnection`` that remembers what its handshake admitted.

    One attribute, not several: a websockets connection's instance dict is large, and a few
    more keys can make it double in size, per idle connection.
    """

    admitted: Admitted


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
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(
            self._frontend.config.server.open_timeout, self._transport.abort
        )

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        space = self._buffer.find(b" ", 0, _MAX_METHOD)
        if space < 0 and len(self._buffer) < _MAX_METHOD:
            return
        assert self._transport is not None
        if self._timer is not None:
            self._timer.cancel()
        method = bytes(self._buffer[:space]) if space > 0 else b""
        initial = bytes(self._buffer)
        self._buffer.clear()
        if method == b"GET" or space < 0:
            # websockets answers malformed request lines with a 400 itself.
            self._frontend.open_websocket(self._transport, initial)
        else:
            self._frontend.open_http(self._transport, initial)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()


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
        quiet = logging.getLogger("gateway.websockets")
        if _quiet_filter not in quiet.filters:
            quiet.addFilter(_quiet_filter)
        self.ws_server: Server | None = None
        self.http_connections: set[HttpConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._expiries: dict[int, set[GatewayConnection]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self.closing = False

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        server_config = self.config.server

        async def create_server() -> asyncio.Server:
            return await loop.create_server(
                lambda: _Sniffer(self), server_config.host, server_config.port, backlog=1024
            )

        quiet = logging.getLogger("gateway.websockets")
        self.ws_server = Server(create_server, self._handle_websocket, quiet)
        await self.ws_server
        self._sweeper = loop.create_task(self._sweep_expiries())

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        assert self.ws_server is not None
        return self.ws_server.sockets

    @property
    def port(self) -> int:
        return int(self.sockets[0].getsockname()[1])

    def stop_accepting(self) -> None:
        """Close the listening socket; established connections carry on."""
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.ws_server is not None:
            self.ws_server.server.close()

    async def close(self, timeout: float) -> None:  # noqa: ASYNC109 - bounds several waits
        """Close peers with 1001 (going away), end HTTP connections, wait for handlers;
        all within ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self.stop_accepting()
        for conn in tuple(self.http_connections):
            conn.shutdown()
        if self.ws_server is not None:
            self.ws_server.close(code=1001, reason="server shutting down")
            try:
                async with asyncio.timeout_at(deadline):
                    await self.ws_server.wait_closed()
            except TimeoutError:
                logger.warning("connections still open after %.1f s; aborting them", timeout)
                for connection in tuple(self.ws_server.all_connections):
                    connection.transport.abort()
        for conn in tuple(self.http_connections):
            conn.abort()
        if self._tasks:
            await asyncio.wait(tuple(self._tasks), timeout=max(deadline - loop.time(), 0.1))

    def spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- routing --------------------------------------------------------------------------

    def open_websocket(self, transport: asyncio.Transport, initial: bytes) -> None:
        assert self.ws_server is not None
        server_config = self.config.server
        protocol = ServerProtocol(
            max_size=self.config.limits.max_message_bytes,
            logger=logging.getLogger("gateway.websockets"),
        )
        connection = GatewayConnection(
            protocol,
            self.ws_server,
            ping_interval=server_config.ping_interval,
            ping_timeout=server_config.ping_timeout,
            close_timeout=server_config.close_timeout,
        )
        transport.set_protocol(connection)
        connection.connection_made(transport)
        connection.data_received(initial)

    def open_http(self, transport: asyncio.Transport, initial: bytes) -> None:
        conn = HttpConnection(self, transport)
        self.http_connections.add(conn)
        transport.set_protocol(conn)
        conn.data_received(initial)

    # -- WebSocket ------------------------------------------------------------------------

    async def process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
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
        assert isinstance(connection, GatewayConnection)
        # Kept to re-check the session after a reload: only the headers credentials come
        # from, so an idle connection does not hold every request header.
        kept = dataclasses.replace(
            context,
            headers={k: v for k, v in context.headers.items() if k in CREDENTIAL_HEADERS},
        )
        connection.admitted = Admitted(decision, kept)
        return None

    async def plain_get(
        self, path: str, request: Request, connection: ServerConnection
    ) -> Response:
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

    def _operator(self, request: Request, connection: ServerConnection) -> bool:
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
        if self.ws_server is not None:
            for connection in self.ws_server.all_connections:
                if isinstance(connection, GatewayConnection) and connection.state is State.OPEN:
                    by_store[connection.admitted.context.store_id] += 1
                    by_subject[connection.admitted.admission.subject] += 1
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

    async def _handle_websocket(self, connection: ServerConnection) -> None:
        """Mirror of ``serve()``'s handler: handshake under a timeout, then the session.

        The read loop is inline: every suspended coroutine frame here is kept by every idle
        connection.
        """
        assert self.ws_server is not None
        server = self.ws_server
        try:
            async with asyncio.timeout(self.config.server.open_timeout):
                await connection.handshake(self.process_request, None, SERVER_HEADER)
            if connection.protocol.state is not State.OPEN:
                connection.transport.abort()
                return
            assert isinstance(connection, GatewayConnection)
            server.all_connections.add(connection)
            connection.start_keepalive()
            peer = self._open_session(connection)
            try:
                while True:
                    try:
                        data = await connection.recv(decode=False)
                    except ConnectionClosed:
                        break
                    peer.handle(data)
            except Exception:
                logger.exception("session failed")
            finally:
                self._close_session(connection, peer)
                server.all_connections.discard(connection)
                await connection.close()
        except Exception:
            connection.transport.abort()
        finally:
            task = asyncio.current_task()
            if task is not None:
                server.handler_tasks.discard(task)

    def _open_session(self, connection: GatewayConnection) -> Peer:
        admitted = connection.admitted
        store_id, admission = admitted.context.store_id, admitted.admission
        peer = Peer(
            connection,
            store_id,
            self.engine,
            limits=self.config.limits,
            spawn=self.spawn,
            before_push=lambda: self.push_gate(admission),
        )
        admitted.started = time.monotonic()
        logger.info(
            "open transport=ws store=%s subject=%s instance=%s reason=%s token=%s remote=%s",
            store_id,
            admission.subject,
            admission.instance_id,
            admission.reason,
            admission.fingerprint,
            _remote(connection.remote_address),
        )
        self._schedule_expiry(connection, admission.expires_at)
        counters = self.engine.counters
        counters.connections["ws"] += 1
        counters.connections_total["ws"] += 1
        return peer

    def _close_session(self, connection: GatewayConnection, peer: Peer) -> None:
        admitted = connection.admitted
        self.engine.counters.connections["ws"] -= 1
        self._schedule_expiry(connection, None)
        peer.close()
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
            _remote(connection.remote_address),
        )

    def _schedule_expiry(self, connection: GatewayConnection, expires_at: float | None) -> None:
        """The session lives while its credential would still be accepted.

        Expiries are kept in one-second buckets swept by a single task, instead of a timer
        handle per connection.
        """
        admitted = connection.admitted
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
                    connection.admitted.expiry = None
                    self._expire(connection)

    async def recheck_sessions(
        self, check: Callable[[PayloadContext], Awaitable[Refusal | float | None]]
    ) -> int:
        """After a reload: close sessions the new policy refuses; returns how many."""
        if self.ws_server is None:
            return 0
        closed = 0
        for connection in tuple(self.ws_server.all_connections):
            if not isinstance(connection, GatewayConnection) or connection.state is not State.OPEN:
                continue
            outcome = await check(connection.admitted.context)
            if isinstance(outcome, Refusal):
                code = CLOSE_TOKEN_EXPIRED if outcome.code == "TOKEN_EXPIRED" else CLOSE_FORBIDDEN
                logger.info(
                    "closing store=%s subject=%s after reload: %s",
                    connection.admitted.context.store_id,
                    connection.admitted.admission.subject,
                    outcome.code,
                )
                self.spawn(connection.close(code, outcome.code.lower()))
                closed += 1
            else:
                self._schedule_expiry(connection, outcome)
        return closed

    def _expire(self, connection: GatewayConnection) -> None:
        logger.info(
            "closing store=%s subject=%s: token expired",
            connection.admitted.context.store_id,
            connection.admitted.admission.subject,
        )
        self.spawn(connection.close(CLOSE_TOKEN_EXPIRED, "token expired"))

    # -- HTTP -----------------------------------------------------------------------------

    async def handle_http(
        self, method: str, target: str, headers: dict[str, str], body: bytes, remote: str | None
    ) -> HttpResponse:
        return await handle_http_request(self, method, target, headers, body, remote)


def _remote(address: object) -> str | None:
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return None
