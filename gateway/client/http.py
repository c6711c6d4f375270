"""The HTTP transport of :mod:`gateway.client` (LiveStore's ``makeHttpSync``, spec §10).

:class:`HttpSession` is a :class:`~gateway.client.connection.Session` like the WebSocket
:class:`~gateway.client.connection.Connection`: each request runs in a task of the session
that POSTs one ``Request`` frame to the sync URL (``transport=http``) and puts the frames of
the answer, a JSON array ending with the request's ``Exit``, on the request's queue. Requests
travel over a small pool of keep-alive HTTP/1.1 connections (asyncio streams, TLS for
``https://``); pushes are sent one at a time, in the order they were started.

A live pull is polled: a non-live pull from the cursor, which the server answers up to its
head, then a wait of ``poll_interval`` seconds and a pull again from the last event received
(and not before the consumer took the previous answer: a slow consumer is not buried).
New events therefore arrive up to ``poll_interval`` (plus a round trip) late, and each idle
follower costs one request per interval; the WebSocket transport has neither cost.

What ends a session, as a lost WebSocket would: a 5xx answer (gateway's transient answers,
``STORAGE_UNAVAILABLE`` or ``SHUTTING_DOWN``, or a proxy's), a connection that fails or times
out — the owner opens a new session with its backoff and pulls or pushes again. A 4xx answer
ends it with :class:`Refused` (terminal; a ``401 TOKEN_EXPIRED`` ends it as a WebSocket
closed 4001, so that an owner with a token provider reconnects with a fresh token); a 200
whose body is not a JSON array of frames ending with the request's ``Exit`` ends it with
:class:`ProtocolViolation`.

A push goes out when the one before it is answered, so a client's ``push_window`` over 1
queues pushes in the session rather than pipelining them on the wire. There is no keepalive
Ping (the WebSocket's ``ping_interval``): every request has its own deadline
(:data:`PATIENCE`), which is what notices a path gone silent.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl as ssl_module
from collections.abc import Coroutine
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

from gateway import frames, protocol
from gateway.client.connection import TOKEN_EXPIRED, Closed, Message, Opener, _refusal_body
from gateway.client.decode import check_exit
from gateway.client.http11 import Http11, Response
from gateway.client.model import ClientError, ProtocolViolation, Refused
from gateway.errors import RefusalCode

POLL_INTERVAL: Final = 1.0
"""The default wait between two pulls of a live ``events()`` at the head, in seconds."""
CONNECT_TIMEOUT: Final = 10.0
PATIENCE: Final = 60.0
"""The longest a request waits for the server's progress (its answer's head, the next part of
its body), in seconds; past it the connection counts as lost. A whole answer may take longer."""
_HTTP_TAGS: Final = {
    protocol.TAG_WS_PULL: protocol.TAG_HTTP_PULL,
    protocol.TAG_WS_PUSH: protocol.TAG_HTTP_PUSH,
}


class _Lost(Exception):
    """A transient failure: the session ends with ``closed`` and the owner reconnects."""

    def __init__(self, closed: Closed) -> None:
        super().__init__(closed.reason)
        self.closed = closed


class _Window:
    """The Chunks of a live pull its consumer has not taken yet (it acks each one it takes)."""

    def __init__(self) -> None:
        self.unacked = 0
        self.drained = asyncio.Event()
        self.drained.set()

    def sent(self, count: int) -> None:
        self.unacked += count
        if self.unacked > 0:
            self.drained.clear()

    def acked(self) -> None:
        self.unacked -= 1
        if self.unacked <= 0:
            self.drained.set()


class HttpSession:
    """A session over the HTTP transport; see the module docstring.

    Create it with :meth:`open` (or :meth:`opener` for a
    :class:`~gateway.client.store.StoreClient`).
    """

    def __init__(
        self,
        url: str,
        store_id: str,
        *,
        ssl: ssl_module.SSLContext | None = None,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("the HTTP transport needs an http:// or https:// sync URL")
        if ssl is not None and parts.scheme != "https":
            raise ValueError("an ssl context needs an https:// URL")
        self.store_id = store_id
        self.poll_interval = poll_interval
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl: ssl_module.SSLContext | None = ssl
        if parts.scheme == "https" and ssl is None:
            self._ssl = ssl_module.create_default_context()
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host_header = parts.netloc.rpartition("@")[2]
        self._head = (
            f"POST {target} HTTP/1.1\r\nHost: {host_header}\r\n"
            "Content-Type: application/json\r\nUser-Agent: gateway.client\r\n"
        ).encode("ascii")
        self.closed: Closed | None = None
        self.failure: ClientError | None = None
        self.counted = False
        self._ids = itertools.count()
        self._requests: dict[str, asyncio.Queue[Message]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._windows: dict[str, _Window] = {}
        self._idle: list[Http11] = []
        self._busy: set[Http11] = set()
        self._push_lock = asyncio.Lock()

    @classmethod
    async def open(
        cls,
        url: str,
        store_id: str,
        *,
        ssl: ssl_module.SSLContext | None = None,
        poll_interval: float = POLL_INTERVAL,
    ) -> HttpSession:
        """A session whose first request, a ``SyncHttpRpc.Ping``, was answered.

        Args:
            url: The sync URL (``http(s)://…?storeId=…&transport=http``).
            store_id: The store (the Ping's payload).
            ssl: The TLS context for ``https://`` (default: the system's trusted CAs).
            poll_interval: The wait between two pulls of a live pull at the head, seconds.

        Raises:
            Refused: The server answered 4xx (credentials, transport disabled, ...).
            ProtocolViolation: The answer is not what the protocol allows.
            OSError: The server cannot be reached or answered 5xx: worth retrying.
        """
        session = cls(url, store_id, ssl=ssl, poll_interval=poll_interval)
        ping = {"storeId": store_id}
        try:
            check_exit((await session._call(session._new_id(), protocol.TAG_HTTP_PING, ping))[-1])
        except _Lost as exc:
            await session.close()
            raise OSError(exc.closed.reason) from None
        except BaseException:
            await session.close()
            raise
        return session

    @classmethod
    def opener(
        cls,
        store_id: str,
        *,
        ssl: ssl_module.SSLContext | None = None,
        poll_interval: float = POLL_INTERVAL,
    ) -> Opener:
        """An :data:`~gateway.client.connection.Opener` of sessions of ``store_id``."""

        async def open_session(url: str) -> HttpSession:
            return await cls.open(url, store_id, ssl=ssl, poll_interval=poll_interval)

        return open_session

    # -- the Session interface -------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.closed is None

    def request(self) -> tuple[str, asyncio.Queue[Message]]:
        """Register a new request id and its queue; start it with :meth:`send_request`."""
        rid = self._new_id()
        queue: asyncio.Queue[Message] = asyncio.Queue()
        if self.closed is not None:
            queue.put_nowait(self.closed)
        self._requests[rid] = queue
        return rid, queue

    async def send_request(self, rid: str, tag: str, payload: dict[str, Any]) -> None:
        """Start request ``rid`` in a task (``SyncWsRpc.*`` tags become ``SyncHttpRpc.*``)."""
        queue = self._requests.get(rid)
        if queue is None or self.closed is not None:
            return
        tag = _HTTP_TAGS.get(tag, tag)
        if tag == protocol.TAG_HTTP_PULL:
            self._spawn(rid, self._pull(rid, queue, payload))
        elif tag == protocol.TAG_HTTP_PUSH:
            self._spawn(rid, self._push(rid, queue, payload))
        else:
            self._spawn(rid, self._unary(rid, queue, tag, payload))

    async def ack(self, rid: str) -> None:
        """The consumer took a Chunk of ``rid``: a live pull polls again only once it took
        them all (its backpressure; an HTTP answer itself arrives whole)."""
        window = self._windows.get(rid)
        if window is not None:
            window.acked()

    async def interrupt(self, rid: str) -> None:
        """Stop request ``rid`` (a live pull stops polling) and forget it."""
        self._requests.pop(rid, None)
        task = self._tasks.pop(rid, None)
        if task is not None:
            task.cancel()

    def forget(self, rid: str) -> None:
        self._requests.pop(rid, None)

    async def close(self) -> None:
        """End the session: stop its requests and close its connections."""
        self._end(Closed(1000, "closed by the client"), None)
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    # -- requests --------------------------------------------------------------------------

    def _new_id(self) -> str:
        return str(next(self._ids))

    def _spawn(self, rid: str, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(self._run(coro))
        self._tasks[rid] = task

        def done(finished: asyncio.Task[None]) -> None:
            if self._tasks.get(rid) is finished:
                del self._tasks[rid]

        task.add_done_callback(done)

    async def _run(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run one request; a failure ends the session (the owner sees :class:`Closed`)."""
        try:
            await coro
        except _Lost as exc:
            self._end(exc.closed, None)
        except Refused as exc:
            self._end(_refusal_closed(exc), exc)
        except ClientError as exc:
            self._end(Closed(1002, type(exc).__name__), exc)
        except Exception as exc:  # a bug here: say so rather than retry forever
            self._end(Closed(1011, "client error"), ClientError(f"HTTP transport: {exc!r}"))

    async def _pull(self, rid: str, queue: asyncio.Queue[Message], payload: dict[str, Any]) -> None:
        live = payload.get("live") is True
        request = {key: value for key, value in payload.items() if key != "live"}
        window = self._windows[rid] = _Window()
        try:
            while True:
                *chunks, exit_ = await self._call(rid, protocol.TAG_HTTP_PULL, request)
                window.sent(len(chunks))
                for chunk in chunks:
                    queue.put_nowait(chunk)
                    request["cursor"] = _advance(request.get("cursor"), chunk)
                exit_value = exit_.get("exit")
                succeeded = isinstance(exit_value, dict) and exit_value.get("_tag") == "Success"
                if not live or not succeeded:
                    queue.put_nowait(exit_)
                    return
                # At the head: the one timed wait of the transport (see the module docstring).
                await asyncio.sleep(self.poll_interval)
                # A slow consumer is not buried: the next pull waits until it took this one.
                await window.drained.wait()
        finally:
            if self._windows.get(rid) is window:
                del self._windows[rid]

    async def _push(self, rid: str, queue: asyncio.Queue[Message], payload: dict[str, Any]) -> None:
        # One push at a time, in the order they were started (asyncio.Lock is FIFO; tasks
        # start in creation order): a later batch must not overtake the one it continues.
        async with self._push_lock:
            answer = await self._call(rid, protocol.TAG_HTTP_PUSH, payload, idempotent=False)
        for message in answer:
            queue.put_nowait(message)

    async def _unary(
        self, rid: str, queue: asyncio.Queue[Message], tag: str, payload: dict[str, Any]
    ) -> None:
        for message in await self._call(rid, tag, payload):
            queue.put_nowait(message)

    async def _call(
        self, rid: str, tag: str, payload: dict[str, Any], *, idempotent: bool = True
    ) -> list[dict[str, Any]]:
        """POST one request; the frames of its answer, its ``Exit`` last."""
        response = await self._exchange(frames.request_frame(rid, tag, payload), idempotent)
        status = response.status
        if status >= 500:
            code = response.body.partition(b":")[0][:50].decode("ascii", "replace")
            raise _Lost(Closed(1011, f"HTTP {status} {code}".rstrip()))
        if 400 <= status < 500:
            code, message = _refusal_body(response.body)
            raise Refused(status, code, message)
        if status != 200 or response.headers.get("content-length") is None:
            raise ProtocolViolation(f"the server answered HTTP {status} without a sized body")
        return _answer(rid, response.body)

    async def _exchange(self, body: bytes, idempotent: bool) -> Response:
        data = self._head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        while True:
            conn = self._take_idle()
            reused = conn is not None
            if conn is None:
                conn = await self._dial()
            self._busy.add(conn)
            try:
                response = await conn.exchange(data, PATIENCE)
            except (OSError, EOFError) as exc:
                conn.close()
                if reused and idempotent and not conn.answered and type(exc) is not TimeoutError:
                    continue  # the server closed the idle connection as we reused it
                raise _Lost(Closed(1006, f"HTTP connection lost ({type(exc).__name__})")) from None
            except BaseException:
                conn.close()
                raise
            finally:
                self._busy.discard(conn)
            if response.keep_alive and self.closed is None:
                conn.idle(response.headers)
                self._idle.append(conn)
            else:
                conn.close()
            return response

    def _take_idle(self) -> Http11 | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.reusable:
                return conn
            conn.close()
        return None

    async def _dial(self) -> Http11:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                reader, writer = await asyncio.open_connection(
                    self._host, self._port, ssl=self._ssl
                )
        except OSError as exc:  # TimeoutError and ssl.SSLError included
            raise _Lost(Closed(1006, f"cannot connect ({type(exc).__name__}: {exc})")) from None
        return Http11(reader, writer)

    def _end(self, closed: Closed, failure: ClientError | None) -> None:
        """End the session (once): every open request receives ``closed``."""
        if self.closed is not None:
            return
        self.closed = closed
        self.failure = failure
        for queue in self._requests.values():
            queue.put_nowait(closed)
        current = asyncio.current_task()
        for task in self._tasks.values():
            if task is not current:
                task.cancel()
        for conn in (*self._idle, *self._busy):
            conn.close()
        self._idle.clear()


def _refusal_closed(refused: Refused) -> Closed:
    """How a session refused mid-way ends: a token that expired as the WebSocket's 4001 (the
    owner may renew it), any other refusal as a protocol error."""
    if refused.status == 401 and refused.code == RefusalCode.TOKEN_EXPIRED:
        return Closed(TOKEN_EXPIRED, "token expired (HTTP 401 TOKEN_EXPIRED)")
    return Closed(1002, type(refused).__name__)


def _answer(rid: str, body: bytes) -> list[dict[str, Any]]:
    """The frames of one HTTP answer: Chunks of request ``rid``, then its Exit."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ProtocolViolation(f"the server's answer is not JSON: {body!r:.200}") from None
    if not isinstance(data, list):
        raise ProtocolViolation(f"the server's answer is not a JSON array: {body!r:.200}")
    answer: list[dict[str, Any]] = []
    for frame in data:
        if not isinstance(frame, dict):
            raise ProtocolViolation(
                f"the server sent a frame that is not an object: {frame!r:.200}"
            )
        tag = frame.get("_tag")
        if tag == "Defect":
            raise ProtocolViolation(f"the server sent a Defect: {frame.get('defect')!r}")
        if tag not in ("Chunk", "Exit"):
            continue
        if frame.get("requestId") != rid or (answer and answer[-1]["_tag"] == "Exit"):
            raise ProtocolViolation(f"unexpected frame in the answer to {rid}: {frame!r:.200}")
        answer.append(frame)
    if not answer or answer[-1]["_tag"] != "Exit":
        raise ProtocolViolation(f"the server's answer has no Exit: {body!r:.200}")
    return answer


def _advance(cursor: Any, chunk: dict[str, Any]) -> Any:
    """The Pull cursor after the events of ``chunk`` (unchanged when it has none)."""
    try:
        for value in chunk.get("values", ()):
            if value["batch"]:
                seq = value["batch"][-1]["eventEncoded"]["seqNum"]
                if type(seq) is not int:
                    raise TypeError("seqNum is not an integer")
                position = {"backendId": value["backendId"], "eventSequenceNumber": seq}
                cursor = {"_tag": "Some", "value": position}
    except (KeyError, TypeError, IndexError) as exc:
        raise ProtocolViolation(f"malformed PullResponse ({exc!r}): {chunk!r:.200}") from None
    return cursor
