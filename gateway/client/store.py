"""The client of one store: follow its log (:meth:`StoreClient.events`) and write to it
(:meth:`StoreClient.commit`), over one WebSocket session that is reopened when it drops."""

from __future__ import annotations

import asyncio
import inspect
import secrets
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from contextlib import aclosing
from types import TracebackType
from typing import Any, Final, Self

from gateway.client.connection import Backoff, Closed, Connection, Message, retryable, sync_url
from gateway.client.decode import (
    check_exit,
    decode_batch,
    failure,
    pull_payload,
    raise_failure,
)
from gateway.client.model import (
    BackendIdMismatch,
    Batch,
    ConnectionClosed,
    Cursor,
    ProtocolViolation,
    Refused,
    Stats,
)

TAG_PULL: Final = "SyncWsRpc.Pull"
TAG_PUSH: Final = "SyncWsRpc.Push"
MAX_PUSH_EVENTS: Final = 100
# A cursor no store has: the server answers with its real backendId (BackendIdMismatchError).
_PROBE_BACKEND: Final = "?"
# The close code of a session whose token expired (gateway.errors.CloseCode.TOKEN_EXPIRED).
TOKEN_EXPIRED: Final = 4001
# Handshake refusals a fresh token may cure (a token provider is asked again, once).
_CREDENTIAL_REFUSALS: Final = frozenset({401, 403})

TokenProvider = Callable[[], str | Awaitable[str]]
"""Returns a JWT, or an awaitable of one; see :func:`connect`."""


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
        instance_id: str = "python-client",
        bypass_token: str | None = None,
        auth_token: str | None = None,
        token_provider: TokenProvider | None = None,
        ping_interval: float | None = 30.0,
        ping_timeout: float = 10.0,
    ) -> None:
        self.base_url = url
        """The server's base URL (the sync URL is built from it on every connect)."""
        self.store_id = store_id
        self.instance_id = instance_id
        self._bypass_token = bypass_token
        self._auth_token = auth_token
        self._token_provider = token_provider
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self.client_id = client_id
        self.session_id = session_id
        self._backoff = backoff
        self._conn: Connection | None = None
        self._recorded: Connection | None = None  # the last session whose close was counted
        self._conn_lock = asyncio.Lock()
        self._write_lock = asyncio.Lock()
        self._closing = False
        self.stats = Stats()
        """What happened to this client so far (sessions, closes, ...)."""
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

    async def _connection(self) -> Connection:
        """The open session, reconnecting (with backoff) when it closed."""
        async with self._conn_lock:
            while True:
                if self._closing:
                    raise ConnectionClosed(1000, "the client is closed")
                conn = self._conn
                if conn is not None and conn.alive:
                    return conn
                if conn is not None:
                    self._raise_if_terminal(conn)
                    if self._recorded is not conn:
                        self._recorded = conn
                        code = conn.closed.code if conn.closed is not None else 1006
                        self.stats.closes[code] = self.stats.closes.get(code, 0) + 1
                await asyncio.sleep(self._backoff.next_delay())
                try:
                    self._conn = await self._open()
                except OSError:
                    self._backoff.failed()
                    continue
                self.stats.connections += 1
                return self._conn

    async def _open(self) -> Connection:
        """Open a session with a fresh credential.

        The token provider (if any) is asked before every attempt. A 401/403 refusal of its
        token makes it asked once more and the handshake tried once more (it may have handed
        out a token that had just expired); a second refusal is raised.
        """
        token = await self._fresh_token()
        try:
            return await self._open_with(token)
        except Refused as exc:
            if self._token_provider is None or exc.status not in _CREDENTIAL_REFUSALS:
                raise
        return await self._open_with(await self._fresh_token())

    async def _open_with(self, token: str | None) -> Connection:
        url = sync_url(
            self.base_url,
            self.store_id,
            instance_id=self.instance_id,
            bypass_token=self._bypass_token,
            auth_token=token,
        )
        return await Connection.open(
            url,
            ping_interval=self._ping_interval,
            ping_timeout=self._ping_timeout,
            stats=self.stats,
        )

    async def _fresh_token(self) -> str | None:
        """The token for the next handshake: the provider's, else the fixed ``auth_token``."""
        provider = self._token_provider
        if provider is None:
            return self._auth_token
        self.stats.token_requests += 1
        token = provider()
        if inspect.isawaitable(token):
            token = await token
        if not isinstance(token, str):
            raise TypeError(f"the token provider returned {type(token).__name__}, not str")
        return token

    def _raise_if_terminal(self, conn: Connection) -> None:
        """Raise when reconnecting after ``conn`` closed cannot help."""
        if conn.failure is not None:
            raise conn.failure
        closed = conn.closed
        if closed is None:
            return
        if not retryable(closed.code) or (
            closed.code == TOKEN_EXPIRED and self._token_provider is None
        ):
            # 4001 without a provider: the same token would be refused (or, on a server in
            # development mode, accepted as anonymous): only a new credential helps.
            raise ConnectionClosed(closed.code, closed.reason)

    def _lost(self, conn: Connection) -> None:
        """A request saw ``conn`` close: raise if that is terminal, else count a failure."""
        self._raise_if_terminal(conn)
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


def connect(
    url: str,
    store_id: str,
    *,
    bypass_token: str | None = None,
    auth_token: str | None = None,
    token_provider: TokenProvider | None = None,
    instance_id: str = "python-client",
    client_id: str | None = None,
    session_id: str | None = None,
    backoff_base: float = 1.0,
    backoff_cap: float = 30.0,
    ping_interval: float | None = 30.0,
    ping_timeout: float = 10.0,
) -> StoreClient:
    """A client of one store; use it as ``async with connect(...) as store:``.

    Credentials: one of ``bypass_token`` (internal services), ``auth_token`` (a fixed JWT)
    or ``token_provider`` (a JWT that is refreshed).

    Args:
        url: The server's base URL (``ws://host:port``, ``wss://…``, ``http(s)://…``).
        store_id: The store.
        bypass_token: The server bypass token (internal services).
        auth_token: A JWT (instead of the bypass token).
        token_provider: A callable returning a JWT (``str``) or an awaitable of one. It is
            called before every connect and reconnect, and its token is sent as the sync
            payload's ``authToken``. A session the server closes with 4001 (token expired)
            reconnects with the provider's next token; a handshake refused with 401 or 403
            calls the provider once more and tries once more, then raises
            :class:`Refused`. Whatever the provider raises propagates to the call that was
            connecting (an ``events()`` iteration, a commit). Without a provider, a 401/403
            is raised at once and a 4001 close raises :class:`ConnectionClosed`.
        instance_id: Names this process in the server's logs and metrics.
        client_id: The clientId of the events this client commits (default: random).
        session_id: Their sessionId (default: random).
        backoff_base: The first reconnect delay in seconds; it doubles on each failure.
        backoff_cap: The longest reconnect delay.
        ping_interval: Seconds between keepalive Pings on a session (idle or not); None
            sends none.
        ping_timeout: When no frame arrives within this many seconds of a Ping, the
            session is dropped as lost: the client reconnects with backoff and streams and
            pending commits carry on from where they were.

    Returns:
        The client; entering it opens the session.

    Raises:
        ValueError: ``token_provider`` together with ``auth_token`` or ``bypass_token``; a
            URL with a query string or an unknown scheme; a ping interval or timeout that is
            not positive.
    """
    if ping_interval is not None and ping_interval <= 0:
        raise ValueError("ping_interval must be positive (None disables the keepalive)")
    if ping_timeout <= 0:
        raise ValueError("ping_timeout must be positive")
    if token_provider is not None and (auth_token is not None or bypass_token is not None):
        raise ValueError("token_provider excludes auth_token and bypass_token")
    # Checks the URL now; the real sync URL is built on each connect (a provider's token).
    sync_url(url, store_id, instance_id=instance_id)
    return StoreClient(
        url,
        store_id,
        client_id=client_id or f"py-{secrets.token_urlsafe(6)}",
        session_id=session_id or secrets.token_urlsafe(6),
        backoff=Backoff(backoff_base, backoff_cap),
        instance_id=instance_id,
        bypass_token=bypass_token,
        auth_token=auth_token,
        token_provider=token_provider,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
    )
