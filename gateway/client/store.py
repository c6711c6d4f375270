"""The client of one store: follow its log (:meth:`StoreClient.events`) and write to it
(:meth:`StoreClient.commit`), over one session (a WebSocket, or the HTTP transport) that is
reopened when it drops."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from contextlib import aclosing
from types import TracebackType
from typing import Any, Final, Literal, Self

from gateway.client.backoff import Backoff, Unavailable
from gateway.client.connection import (
    TOKEN_EXPIRED,
    Closed,
    Connection,
    Opener,
    Session,
    retryable,
    sync_url,
)
from gateway.client.decode import check_exit, decode_batch, pull_payload
from gateway.client.model import (
    BackendIdMismatch,
    Batch,
    ConnectionClosed,
    Cursor,
    ProtocolViolation,
    Refused,
    Stats,
)
from gateway.client.writer import Writer

TAG_PULL: Final = "SyncWsRpc.Pull"
# A cursor no store has: the server answers with its real backendId (BackendIdMismatchError).
_PROBE_BACKEND: Final = "?"
# Handshake refusals a fresh token may cure (a token provider is asked again, once).
_CREDENTIAL_REFUSALS: Final = frozenset({401, 403})

TokenProvider = Callable[[], str | Awaitable[str]]
"""Returns a JWT, or an awaitable of one; see :func:`connect`."""


class StoreClient:
    """A client of one store; create it with :func:`connect` and use it as an async context
    manager. Every method may be called concurrently with the others, from any task of the
    event loop; commits are written in call order, batched (see :meth:`commit_many`).

    The constructor's arguments are :func:`connect`'s, but for ``opener``, which opens a
    session on a sync URL (:data:`~gateway.client.connection.Opener`: the transport, with its
    settings and, for a WebSocket, its keepalive bound), and ``stats``, the counters it shares.
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
        transport: Literal["ws", "http"] = "ws",
        instance_id: str = "python-client",
        bypass_token: str | None = None,
        auth_token: str | None = None,
        token_provider: TokenProvider | None = None,
        push_window: int = 1,
        stats: Stats | None = None,
    ) -> None:
        self.base_url = url
        """The server's base URL (the sync URL is built from it on every connect)."""
        self.store_id = store_id
        self.instance_id = instance_id
        self.transport = transport
        self._bypass_token = bypass_token
        self._auth_token = auth_token
        self._token_provider = token_provider
        self.url = self._sync_url(None if token_provider is not None else auth_token)
        """The sync URL of the latest session (with a provider's token once it connected)."""
        self.client_id = client_id
        self.session_id = session_id
        self._backoff = backoff
        self._open_session = opener
        self._conn: Session | None = None
        self._recorded: Session | None = None  # the last session whose close was counted
        self._conn_lock = asyncio.Lock()
        self._closing = False
        self.stats = stats if stats is not None else Stats()
        """What happened to this client so far (sessions, closes, pushes, ...)."""
        self._writer = Writer(self, window=push_window)
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
        await self._writer.close()
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
                    self._record_close(conn)
                    self._raise_if_terminal(conn)
                await asyncio.sleep(self._backoff.next_delay())
                try:
                    self._conn = await self._open()
                except Unavailable as exc:
                    self._backoff.failed(exc.retry_after)
                    continue
                except OSError:
                    self._backoff.failed()
                    continue
                self.stats.connections += 1
                return self._conn

    async def _open(self) -> Session:
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

    async def _open_with(self, token: str | None) -> Session:
        self.url = self._sync_url(token)
        return await self._open_session(self.url)

    def _sync_url(self, token: str | None) -> str:
        return sync_url(
            self.base_url,
            self.store_id,
            instance_id=self.instance_id,
            bypass_token=self._bypass_token,
            auth_token=token,
            transport=self.transport,
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

    def _raise_if_terminal(self, conn: Session) -> None:
        """Raise when reconnecting after ``conn`` closed cannot help."""
        closed = conn.closed
        if closed is not None and closed.code == TOKEN_EXPIRED:
            if self._token_provider is not None:
                return  # the provider's next token (an HTTP session's 401 too: its failure)
            # Without a provider the same token would be refused (or, on a server in
            # development mode, accepted as anonymous): only a new credential helps.
            raise conn.failure or ConnectionClosed(closed.code, closed.reason)
        if conn.failure is not None:
            raise conn.failure
        if closed is not None and not retryable(closed.code):
            raise ConnectionClosed(closed.code, closed.reason)

    def _record_close(self, conn: Session) -> None:
        """Count ``conn``'s close in :attr:`stats` (once)."""
        if self._recorded is not conn and conn.closed is not None:
            self._recorded = conn
            code = conn.closed.code
            self.stats.closes[code] = self.stats.closes.get(code, 0) + 1

    def _lost(self, conn: Session) -> None:
        """A request saw ``conn`` close: raise if that is terminal, else count a failure."""
        self._record_close(conn)
        self._raise_if_terminal(conn)
        if not conn.counted:
            conn.counted = True
            self._backoff.failed()

    def _learn(self, cursor: Cursor, *, force: bool = False) -> None:
        """Move :attr:`head` forward to ``cursor`` (or anywhere, with ``force``: the server
        said its head is behind what this client believed)."""
        if (
            force
            or self.head is None
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

        Raises:
            See :meth:`commit_many`.
        """
        (seq,) = await self.commit_many([(name, args)])
        return seq

    async def commit_many(self, events: Iterable[tuple[str, Any]]) -> list[int]:
        """Append events to the store, in order, after every event committed before.

        Calls may come from many tasks at once: their events join one queue, in call order,
        and a single writer pushes them (100 events or 900,000 bytes of JSON per push at most;
        with ``push_window`` > 1, several full pushes in flight; see
        :mod:`gateway.client.writer`). Events are numbered after
        the last event pushed; when the server is ahead (``ServerAheadError``), the events not
        written are renumbered on top of its head (rebase) and pushed again, in the same
        order. A push whose answer is lost with the connection is looked up in the log on the
        next session (clientId, sessionId, seqNum) or sent again unchanged, so nothing is
        written twice or lost. Cancelling the call does not withdraw its events.

        Args:
            events: ``(name, args)`` pairs; args any JSON value.

        Returns:
            The final seqNum of each event, once the server acknowledged all of them.

        Raises:
            TypeError: A name is not a str or args are not JSON (before anything is queued).
            ValueError: An event is too large for one push (likewise).
            RequestFailed: The server refused a push of these events (``UnknownError``). The
                commits queued behind it that were not written fail with it too; events of
                this call in earlier pushes (over 100 events) may be written.
            BackendIdMismatch: The store was reset since this client learnt its backendId
                (likewise for the commits behind it).
            Refused: A reconnect was refused.
            ConnectionClosed: The session closed for good, or the client was closed, before
                the events were acknowledged (their fate is then unknown).
        """
        future = self._writer.submit(events)
        return await asyncio.shield(future)

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
