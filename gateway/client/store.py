"""The client of one store: follow its log (:meth:`StoreClient.events`) and write to it
(:meth:`StoreClient.commit`), over one session (a WebSocket, or the HTTP transport) that is
reopened when it drops."""

from __future__ import annotations

import asyncio
import functools
import secrets
import ssl as ssl_module
from collections.abc import AsyncGenerator, Iterable, Sequence
from contextlib import aclosing
from types import TracebackType
from typing import Any, Final, Literal, Self

from gateway.client.connection import (
    Backoff,
    Closed,
    Connection,
    Message,
    Opener,
    Session,
    retryable,
    sync_url,
)
from gateway.client.decode import (
    check_exit,
    decode_batch,
    failure,
    pull_payload,
    raise_failure,
)
from gateway.client.http import POLL_INTERVAL, HttpSession
from gateway.client.model import (
    BackendIdMismatch,
    Batch,
    ConnectionClosed,
    Cursor,
    ProtocolViolation,
)

TAG_PULL: Final = "SyncWsRpc.Pull"
TAG_PUSH: Final = "SyncWsRpc.Push"
MAX_PUSH_EVENTS: Final = 100
# A cursor no store has: the server answers with its real backendId (BackendIdMismatchError).
_PROBE_BACKEND: Final = "?"


class StoreClient:
    """A client of one store; create it with :func:`connect` and use it as an async context
    manager. Every method may be called concurrently with the others; commits are serialised.
    """

    def __init__(
        self,
        url: str,
        store_id: str,
        *,
        client_id: str,
        session_id: str,
        backoff: Backoff,
        opener: Opener = Connection.open,
    ) -> None:
        self.url = url
        self.store_id = store_id
        self.client_id = client_id
        self.session_id = session_id
        self._backoff = backoff
        self._open = opener
        self._conn: Session | None = None
        self._conn_lock = asyncio.Lock()
        self._write_lock = asyncio.Lock()
        self._closing = False
        self.head: Cursor | None = None
        """The newest position this client has seen (from a pull or its own commits)."""

    async def __aenter__(self) -> Self:
        await self._connection()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session; iterators and commits in progress fail."""
        self._closing = True
        if self._conn is not None:
            await self._conn.close()

    # -----------------------------------------------------------------------------------------
    # Connection

    async def _connection(self) -> Session:
        """The open session, reconnecting (with backoff) when it closed."""
        async with self._conn_lock:
            while True:
                if self._closing:
                    raise ConnectionClosed(1000, "the client is closed")
                conn = self._conn
                if conn is not None and conn.alive:
                    return conn
                if conn is not None:
                    _raise_if_terminal(conn)
                await asyncio.sleep(self._backoff.next_delay())
                try:
                    self._conn = await self._open(self.url)
                except OSError:
                    self._backoff.failed()
                    continue
                return self._conn

    def _lost(self, conn: Session) -> None:
        """A request saw ``conn`` close: raise if that is terminal, else count a failure."""
        _raise_if_terminal(conn)
        if not conn.counted:
            conn.counted = True
            self._backoff.failed()

    def _learn(self, cursor: Cursor) -> None:
        if (
            self.head is None
            or self.head.backend_id != cursor.backend_id
            or cursor.seq > self.head.seq
        ):
            self.head = cursor

    # -----------------------------------------------------------------------------------------
    # Reading

    async def events(
        self, after: Cursor | None = None, live: bool = True
    ) -> AsyncGenerator[Batch, None]:
        """The store's events after ``after``, in batches: the catch-up, then live ones.

        Reconnects (with backoff) when the session drops and pulls again from the last cursor
        yielded, so the stream never has a gap or a duplicate.

        Args:
            after: Resume after this position (a cursor from an earlier batch); None starts
                from the beginning.
            live: Follow new events after the catch-up; False stops at the head.

        Yields:
            Batches of at least one event, each with the cursor after its last event.

        Raises:
            BackendIdMismatch: ``after`` belongs to another backendId (the store was reset).
            Refused: The server refused the credentials.
            ConnectionClosed: The server closed the session for good.
            ProtocolViolation: The server broke the protocol (a gap, a malformed frame).
        """
        cursor = after
        while True:
            conn = await self._connection()
            rid, queue = conn.request()
            done = False
            try:
                await conn.send_request(
                    rid, TAG_PULL, pull_payload(self.store_id, cursor, live=live)
                )
                while True:
                    message = await queue.get()
                    if isinstance(message, Closed):
                        self._lost(conn)
                        break
                    if message["_tag"] == "Exit":
                        done = True
                        check_exit(message)
                        return
                    await conn.ack(rid)
                    self._backoff.succeeded()
                    for value in message.get("values", ()):
                        batch = decode_batch(value, cursor)
                        cursor = batch.cursor
                        self._learn(cursor)
                        if batch.events:
                            yield batch
            finally:
                if not done and conn.alive:
                    await conn.interrupt(rid)
                conn.forget(rid)

    # -----------------------------------------------------------------------------------------
    # Writing

    async def commit(self, name: str, args: Any = None) -> int:
        """Append one event to the store.

        Args:
            name: The event's name (``todoCreated-v1``).
            args: Its arguments (any JSON value).

        Returns:
            Its final seqNum, once the server acknowledged it.
        """
        (seq,) = await self.commit_many([(name, args)])
        return seq

    async def commit_many(self, events: Iterable[tuple[str, Any]]) -> list[int]:
        """Append events to the store, in order, atomically per 100 events.

        They are numbered after the client's known head; when the server is ahead
        (``ServerAheadError``), they are renumbered on top of its head (rebase) and pushed
        again. A push whose answer is lost with the connection is recognised on the next
        pull by its clientId, sessionId and seqNums, so nothing is written twice.

        Args:
            events: ``(name, args)`` pairs.

        Returns:
            The final seqNum of each event, once the server acknowledged them.

        Raises:
            BackendIdMismatch: The store was reset since this client learnt its backendId.
            RequestFailed: The server rejected the events (``UnknownError``).
        """
        pending = list(events)
        seqs: list[int] = []
        async with self._write_lock:
            for start in range(0, len(pending), MAX_PUSH_EVENTS):
                seqs += await self._push(pending[start : start + MAX_PUSH_EVENTS])
        return seqs

    async def _push(self, events: Sequence[tuple[str, Any]]) -> list[int]:
        if not events:
            return []
        head = self.head or await self._probe_backend()
        while True:
            batch = [
                {
                    "name": name,
                    "args": args,
                    "seqNum": head.seq + 1 + i,
                    "parentSeqNum": head.seq + i,
                    "clientId": self.client_id,
                    "sessionId": self.session_id,
                }
                for i, (name, args) in enumerate(events)
            ]
            seqs = [head.seq + 1 + i for i in range(len(events))]
            payload = {
                "storeId": self.store_id,
                "batch": batch,
                "backendId": {"_tag": "Some", "value": head.backend_id},
            }
            conn = await self._connection()
            rid, queue = conn.request()
            try:
                await conn.send_request(rid, TAG_PUSH, payload)
                message = await _exit_of(queue)
            finally:
                conn.forget(rid)
            if isinstance(message, Closed):
                self._lost(conn)
                # The answer is lost: the push may have been written. Read the log after head.
                if await self._written(head, seqs):
                    self._learn(Cursor(head.backend_id, seqs[-1]))
                    return seqs
                head = self.head or head
                continue
            error = failure(message)
            if error is None:
                self._backoff.succeeded()
                self._learn(Cursor(head.backend_id, seqs[-1]))
                return seqs
            if error.get("_tag") == "ServerAheadError":
                # The server's head (minimumExpectedNum): rebase the batch on top of it.
                head = Cursor(head.backend_id, int(error["minimumExpectedNum"]))
                self._learn(head)
                continue
            raise_failure(error)

    async def _probe_backend(self) -> Cursor:
        """Learn the store's backendId without reading its log (the head is learnt on push)."""
        try:
            async with aclosing(self.events(Cursor(_PROBE_BACKEND, 0), live=False)) as stream:
                async for _ in stream:
                    break
        except BackendIdMismatch as exc:
            return Cursor(exc.expected, 0)
        if self.head is None:
            raise ProtocolViolation("the server accepted a cursor with an unknown backendId")
        return self.head

    async def _written(self, head: Cursor, seqs: list[int]) -> bool:
        """Whether events ``seqs`` after ``head`` are this client's (a push acked while the
        connection dropped)."""
        async with aclosing(self.events(head, live=False)) as stream:
            async for batch in stream:
                for event in batch.events:
                    if event.seq_num == seqs[0]:
                        return (event.client_id, event.session_id) == (
                            self.client_id,
                            self.session_id,
                        )
                if batch.cursor.seq >= seqs[0]:
                    break
        return False


async def _exit_of(queue: asyncio.Queue[Message]) -> Message:
    while True:
        message = await queue.get()
        if isinstance(message, Closed) or message.get("_tag") == "Exit":
            return message


def _raise_if_terminal(conn: Session) -> None:
    if conn.failure is not None:
        raise conn.failure
    if conn.closed is not None and not retryable(conn.closed.code):
        raise ConnectionClosed(conn.closed.code, conn.closed.reason)


def connect(
    url: str,
    store_id: str,
    *,
    bypass_token: str | None = None,
    auth_token: str | None = None,
    instance_id: str = "python-client",
    client_id: str | None = None,
    session_id: str | None = None,
    backoff_base: float = 1.0,
    backoff_cap: float = 30.0,
    transport: Literal["ws", "http"] = "ws",
    poll_interval: float = POLL_INTERVAL,
    ssl: ssl_module.SSLContext | None = None,
) -> StoreClient:
    """A client of one store; use it as ``async with connect(...) as store:``.

    Args:
        url: The server's base URL (``ws://host:port``, ``wss://…``, ``http(s)://…``).
        store_id: The store.
        bypass_token: The server bypass token (internal services).
        auth_token: A JWT (instead of the bypass token).
        instance_id: Names this process in the server's logs and metrics.
        client_id: The clientId of the events this client commits (default: random).
        session_id: Their sessionId (default: random).
        backoff_base: The first reconnect delay in seconds; it doubles on each failure.
        backoff_cap: The longest reconnect delay.
        transport: ``"ws"`` (a WebSocket) or ``"http"`` (one POST per request; a live
            ``events()`` polls, see :mod:`gateway.client.http`).
        poll_interval: Over HTTP, the wait between two pulls of a live ``events()`` at the
            head: the latency of new events, and one request per interval while idle.
        ssl: The TLS context for ``wss://`` / ``https://`` (default: the system's CAs).

    Returns:
        The client; entering it opens the session.

    Raises:
        ValueError: ``transport`` is neither ``"ws"`` nor ``"http"``.
    """
    if transport == "http":
        opener = HttpSession.opener(store_id, ssl=ssl, poll_interval=poll_interval)
    elif transport == "ws":
        opener = functools.partial(Connection.open, ssl=ssl)
    else:
        raise ValueError(f'transport must be "ws" or "http", not {transport!r}')
    return StoreClient(
        sync_url(
            url,
            store_id,
            instance_id=instance_id,
            bypass_token=bypass_token,
            auth_token=auth_token,
            transport=transport,
        ),
        store_id,
        client_id=client_id or f"py-{secrets.token_urlsafe(6)}",
        session_id=session_id or secrets.token_urlsafe(6),
        backoff=Backoff(backoff_base, backoff_cap),
        opener=opener,
    )
