"""One WebSocket session with the server and the RPC requests multiplexed on it.

A :class:`Connection` reads frames in a background task and routes each to the queue of the
request it answers (by request id). When the socket closes, every open request receives a
:class:`Closed` marker; the owner (:class:`gateway.client.store.StoreClient`) decides whether
to reconnect (:func:`retryable`) and with which delay (:class:`~gateway.client.backoff.Backoff`).

:class:`Session` is the interface the owner uses; :class:`Connection` and the HTTP transport's
:class:`gateway.client.http.HttpSession` implement it.

Keepalive (WebSocket only): every ``ping_interval`` seconds the connection sends the RPC
layer's ``{"_tag":"Ping"}`` (spec §11; the server answers ``{"_tag":"Pong"}``). When no frame
at all arrives within ``ping_timeout`` of a Ping (any frame proves the path works, as in
LiveStore's client), the connection is aborted: its requests see ``Closed(1006)``, as for any
lost connection, and the owner reconnects. This catches a path that went silent without a
reset (a NAT or proxy that dropped the flow), which TCP alone notices only after many
minutes. An HTTP session needs none: each request has its own deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl as ssl_module
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol
from urllib.parse import quote, urlencode

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed as WsConnectionClosed
from websockets.exceptions import InvalidHandshake, InvalidStatus

from gateway.client.backoff import Unavailable, retry_after_seconds
from gateway.client.model import ClientError, ProtocolViolation, Refused, Stats
from gateway.frames import ack_frame, request_frame

# Close codes after which reconnecting can help (the server restarts, is overloaded, or the
# network dropped: 1006 is what a lost TCP connection reports). 4000-4499: the application
# closed the session and the client may reconnect (gateway.errors.CloseCode).
_RETRY_CODES: Final = frozenset({1000, 1001, 1005, 1006, 1011, 1012, 1013, 1014})
PING_FRAME: Final = b'{"_tag":"Ping"}'
TOKEN_EXPIRED: Final = 4001
"""The close code of a session whose token expired (gateway.errors.CloseCode.TOKEN_EXPIRED);
an HTTP session refused ``401 TOKEN_EXPIRED`` ends with it too."""
LOST: Final = 1006


def retryable(code: int) -> bool:
    """Whether a session closed with ``code`` is worth reconnecting."""
    return code in _RETRY_CODES or 4000 <= code < 4500


def sync_url(
    url: str,
    store_id: str,
    *,
    instance_id: str,
    bypass_token: str | None = None,
    auth_token: str | None = None,
    transport: Literal["ws", "http"] = "ws",
) -> str:
    """The sync URL as the 0.4.0 LiveStore client builds it (spec §2.1-2.2).

    ``?storeId=…&payload=…&transport=ws`` (or ``=http``), where the payload is JSON
    percent-encoded twice (``encodeURIComponent`` then the query's form encoding).

    Args:
        url: The server's base URL (``ws://``, ``wss://``, ``http://`` or ``https://``),
            without a query string.
        store_id: The store.
        instance_id: Identifies this process in the server's logs and metrics.
        bypass_token: The server bypass token (internal services), sent as ``serverBypass``.
        auth_token: A JWT, sent as ``authToken``.
        transport: ``ws`` (WebSocket) or ``http`` (one POST per request, spec §10).

    Returns:
        The full URL, with a ``ws``/``wss`` scheme for the WebSocket transport and an
        ``http``/``https`` one for the HTTP transport.

    Raises:
        ValueError: ``url`` already has a query string or an unknown scheme.
    """
    if "?" in url:
        raise ValueError("the server URL must not contain a query string")
    scheme, sep, rest = url.partition("://")
    secure = {"ws": False, "http": False, "wss": True, "https": True}
    if not sep or scheme not in secure:
        raise ValueError(f"unsupported URL scheme: {url!r}")
    payload: dict[str, str] = {"instanceId": instance_id}
    if auth_token is not None:
        payload["authToken"] = auth_token
    if bypass_token is not None:
        payload["serverBypass"] = bypass_token
    encoded = quote(orjson.dumps(payload).decode(), safe="")
    query = urlencode([("storeId", store_id), ("payload", encoded), ("transport", transport)])
    if "/" not in rest:
        rest += "/"
    new_scheme = ("http" if transport == "http" else "ws") + ("s" if secure[scheme] else "")
    return f"{new_scheme}://{rest}?{query}"


@dataclass(frozen=True, slots=True)
class Closed:
    """Put on every open request's queue when the socket closes."""

    code: int
    reason: str


Message = dict[str, Any] | Closed


class Session(Protocol):
    """What :class:`gateway.client.store.StoreClient` needs of a session with the server.

    A request is registered with :meth:`request` and started with :meth:`send_request`; its
    answer frames (``Chunk``s, then its ``Exit``) arrive on its queue, or a :class:`Closed`
    marker when the session ends first. A closed session stays closed: the owner opens a new
    one (:data:`Opener`).
    """

    counted: bool
    """Whether the owner counted this session's loss as a failure (once per session)."""

    @property
    def closed(self) -> Closed | None:
        """Why the session ended, once it has."""

    @property
    def failure(self) -> ClientError | None:
        """The error that ended the session, when retrying cannot help."""

    @property
    def alive(self) -> bool:
        """Whether requests can still be sent."""

    def request(self) -> tuple[str, asyncio.Queue[Message]]:
        """Register a new request id and its queue."""

    async def send_request(self, rid: str, tag: str, payload: dict[str, Any]) -> None:
        """Start request ``rid`` (a ``SyncWsRpc.*`` tag)."""

    async def ack(self, rid: str) -> None:
        """Acknowledge a Chunk of stream ``rid``."""

    async def interrupt(self, rid: str) -> None:
        """Stop request ``rid`` and forget it."""

    def forget(self, rid: str) -> None:
        """Stop routing answers to request ``rid``."""

    async def close(self) -> None:
        """End the session; open requests receive :class:`Closed`."""


Opener = Callable[[str], Awaitable[Session]]
"""Opens a session on a sync URL (:meth:`Connection.open`, ``HttpSession.opener(...)``).

Raises :class:`Refused` when the server refuses (terminal), ``OSError`` when it cannot be
reached (worth retrying)."""


class Connection:
    """An open WebSocket session; see the module docstring."""

    def __init__(
        self,
        ws: ClientConnection,
        *,
        ping_interval: float | None = None,
        ping_timeout: float = 10.0,
        stats: Stats | None = None,
    ) -> None:
        self.ws = ws
        self.stats = stats if stats is not None else Stats()
        self.closed: Closed | None = None
        self.failure: ProtocolViolation | None = None
        self.counted = False
        """Whether the owner counted this session's loss as a failure (once per session)."""
        self._ids = itertools.count()
        self._requests: dict[str, asyncio.Queue[Message]] = {}
        self._heard: asyncio.Event | None = None  # set by any frame while a Ping waits
        self._lost_reason = ""
        self._reader = asyncio.create_task(self._read())
        self._keepalive = (
            asyncio.create_task(self._keep_alive(ping_interval, ping_timeout))
            if ping_interval is not None
            else None
        )

    @classmethod
    async def open(
        cls,
        url: str,
        headers: Mapping[str, str] | None = None,
        *,
        ssl: ssl_module.SSLContext | None = None,
        ping_interval: float | None = None,
        ping_timeout: float = 10.0,
        stats: Stats | None = None,
    ) -> Connection:
        """Open the WebSocket.

        Args:
            url: The sync URL (:func:`sync_url`).
            headers: Extra handshake headers.
            ssl: The TLS context of a ``wss://`` URL (default: the system's trusted CAs).
            ping_interval: Seconds between keepalive Pings; None sends none.
            ping_timeout: Seconds a Ping may wait for a frame before the connection is
                aborted as lost.
            stats: Counters to update (pings, pongs, ping timeouts).

        Raises:
            Refused: The server answered the handshake with a 4xx status.
            OSError: The server cannot be reached (or answered 5xx: :class:`Unavailable`,
                with the server's ``Retry-After``): worth retrying.
        """
        # websockets refuses ssl=None for wss://: pass it only when given.
        tls: dict[str, Any] = {} if ssl is None else {"ssl": ssl}
        try:
            ws = await connect(
                url,
                additional_headers=dict(headers or {}),
                max_size=None,
                compression=None,
                proxy=None,
                open_timeout=10,
                # The RPC-level Ping below is the keepalive (it also proves the server's
                # request loop answers, not only its TCP stack).
                ping_interval=None,
                **tls,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            code, message = _refusal_body(bytes(exc.response.body or b""))
            if 400 <= status < 500:
                raise Refused(status, code, message) from None
            wait = retry_after_seconds(exc.response.headers.get("Retry-After"))
            raise Unavailable(status, code, wait) from None
        except InvalidHandshake as exc:  # the server went away mid-handshake
            raise OSError(f"handshake failed: {exc}") from None
        return cls(ws, ping_interval=ping_interval, ping_timeout=ping_timeout, stats=stats)

    @property
    def alive(self) -> bool:
        return self.closed is None

    def request(self) -> tuple[str, asyncio.Queue[Message]]:
        """Register a new request id and its queue; send the request with :meth:`send_request`."""
        rid = str(next(self._ids))
        queue: asyncio.Queue[Message] = asyncio.Queue()
        if self.closed is not None:
            queue.put_nowait(self.closed)
        self._requests[rid] = queue
        return rid, queue

    async def send_request(self, rid: str, tag: str, payload: dict[str, Any]) -> None:
        await self._send(request_frame(rid, tag, payload))

    async def ack(self, rid: str) -> None:
        await self._send(ack_frame(rid))

    async def interrupt(self, rid: str) -> None:
        self._requests.pop(rid, None)
        await self._send(b'{"_tag":"Interrupt","requestId":' + orjson.dumps(rid) + b"}")

    def forget(self, rid: str) -> None:
        self._requests.pop(rid, None)

    async def _send(self, frame: bytes) -> None:
        try:
            await self.ws.send(frame, text=True)
        except WsConnectionClosed:
            pass  # the reader reports the close to every request

    async def close(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
        await self.ws.close()
        await asyncio.gather(self._reader, return_exceptions=True)

    async def _keep_alive(self, interval: float, deadline: float) -> None:
        """Ping every ``interval`` s; abort the connection when nothing answers within
        ``deadline`` s."""
        stats = self.stats
        while True:
            await asyncio.sleep(interval)
            heard = self._heard = asyncio.Event()
            try:
                # The send is inside the deadline too: on a dead path it may block.
                async with asyncio.timeout(deadline):
                    await self._send(PING_FRAME)
                    stats.pings += 1
                    await heard.wait()
            except TimeoutError:
                stats.ping_timeouts += 1
                self._lost_reason = f"no answer to a keepalive Ping within {deadline:g} s"
                # No closing handshake: nothing would answer it. The reader sees the abort
                # and reports Closed(1006) to every request.
                self.ws.transport.abort()
                return
            finally:
                self._heard = None

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                heard = self._heard
                if heard is not None:
                    heard.set()
                try:
                    frame = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    raise ProtocolViolation(
                        f"the server sent a frame that is not JSON: {raw!r:.200}"
                    ) from None
                if not isinstance(frame, dict):
                    raise ProtocolViolation(
                        f"the server sent a frame that is not an object: {raw!r:.200}"
                    )
                self._route(frame)
        except ProtocolViolation as exc:
            self.failure = exc
            await self.ws.close(1002, "protocol violation")
        except WsConnectionClosed:
            pass
        finally:
            if self._keepalive is not None:
                self._keepalive.cancel()
            code = self.ws.close_code
            reason = self.ws.close_reason or self._lost_reason
            self.closed = Closed(LOST if code is None else code, reason)
            for queue in self._requests.values():
                queue.put_nowait(self.closed)

    def _route(self, frame: dict[str, Any]) -> None:
        tag = frame.get("_tag")
        if tag in ("Chunk", "Exit"):
            queue = self._requests.get(str(frame.get("requestId")))
            if queue is not None:
                queue.put_nowait(frame)
        elif tag == "Pong":
            self.stats.pongs += 1
        elif tag == "Defect":
            raise ProtocolViolation(f"the server sent a Defect: {frame.get('defect')!r}")
        # Unknown tags: nothing to do.


def _refusal_body(body: bytes) -> tuple[str, str]:
    """The code and message of gateway's refusal body ``{"error": {"code", "message"}}``."""
    try:
        data = orjson.loads(body)
        error = data["error"]
        return str(error.get("code", "")), str(error.get("message", ""))
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return "", body[:200].decode("utf-8", "replace")
