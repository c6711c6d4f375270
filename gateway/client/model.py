"""The values and exceptions of :mod:`gateway.client`: cursors, events, batches, errors.

Pure: no I/O. A :class:`Cursor` is what a service persists to resume a stream after its own
restart (``str(cursor)`` and :meth:`Cursor.parse` round-trip).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_SEPARATOR = ":"


@dataclass(frozen=True, slots=True)
class Cursor:
    """A position in one store's log: after the event ``seq`` of the backend ``backend_id``.

    Attributes:
        backend_id: The identity of the store's log; it changes when the store is reset.
        seq: The seqNum of the last event before this position (0: the start).
    """

    backend_id: str
    seq: int

    def __str__(self) -> str:
        return f"{self.seq}{_SEPARATOR}{self.backend_id}"

    @classmethod
    def parse(cls, text: str) -> Cursor:
        """Read back a cursor written by ``str(cursor)``.

        Args:
            text: ``"<seq>:<backendId>"``.

        Returns:
            The cursor.

        Raises:
            ValueError: ``text`` is not a cursor.
        """
        seq, sep, backend_id = text.partition(_SEPARATOR)
        if not sep or not backend_id or not seq.isdigit():
            raise ValueError(f"not a cursor: {text!r}")
        return cls(backend_id, int(seq))


@dataclass(frozen=True, slots=True)
class Writer:
    """Who pushed an event, as the server recorded it (shown to services only).

    Attributes:
        subject: The pushing session's subject (a JWT's subject, ``server`` for the bypass
            token, ``dev``, ``anonymous``).
        instance_id: Its instanceId.
        reason: How it was admitted (``jwt``, ``jwt_grace``, ``bypass``, ...).
    """

    subject: str
    instance_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a store's log, as the server stored it.

    Attributes:
        name: The event's name (``todoCreated-v1``).
        args: Its arguments (any JSON value; ``None`` when absent).
        seq_num: Its global sequence number.
        parent_seq_num: The sequence number of the event before it.
        client_id: The client that committed it.
        session_id: The session of that client.
        created_at: When the server accepted it (ISO 8601), if the server said.
        writer: Who pushed it: gateway tells a client connected with the bypass token (a
            service); None for other clients, and for events stored before gateway recorded it.
    """

    name: str
    args: Any
    seq_num: int
    parent_seq_num: int
    client_id: str
    session_id: str
    created_at: str | None = None
    writer: Writer | None = None


@dataclass(frozen=True, slots=True)
class Batch:
    """Consecutive events and the cursor after the last one.

    Attributes:
        events: The events, in ascending ``seq_num`` order, never empty.
        cursor: The position after the last event: persist it and pass it back as
            ``events(after=...)`` to resume.
    """

    events: list[Event]
    cursor: Cursor


@dataclass(slots=True)
class Stats:
    """Counters of one client's life (``StoreClient.stats``), for a service's metrics and for
    tests. Read them; the client updates them.

    Attributes:
        connections: Sessions opened (the first one and every reconnect).
        closes: Sessions lost, by WebSocket close code (1006: the connection dropped without
            a close, which includes a keepalive Ping left unanswered).
        token_requests: Calls of the token provider.
        pings: Keepalive Pings sent.
        pongs: Pongs received.
        ping_timeouts: Sessions aborted because nothing answered a Ping in time.
        pushes: Pushes sent (a push sent again counts again).
        most_in_flight: The most pushes that were in flight at once.
        rebases: Times pending events were numbered again on top of the server's head.
        reordered: Events that were written after events of this client committed later
            (see :mod:`gateway.client.writer`); 0 unless pipelined pushes met another
            writer's events ending exactly at their parent.
    """

    connections: int = 0
    closes: dict[int, int] = field(default_factory=dict)
    token_requests: int = 0
    pings: int = 0
    pongs: int = 0
    ping_timeouts: int = 0
    pushes: int = 0
    most_in_flight: int = 0
    rebases: int = 0
    reordered: int = 0


class ClientError(Exception):
    """The root of every exception :mod:`gateway.client` raises."""


class Refused(ClientError):
    """The server refused the handshake (an HTTP status instead of the upgrade).

    Terminal: retrying with the same credential cannot help.

    Attributes:
        status: The HTTP status (401, 403, 429, ...).
        code: The server's code from the body (``INVALID_TOKEN``), or ``""``.
    """

    def __init__(self, status: int, code: str, message: str = "") -> None:
        super().__init__(f"refused with HTTP {status} {code}: {message}".rstrip(": "))
        self.status = status
        self.code = code


class BackendIdMismatch(ClientError):
    """The store's backendId is not the cursor's: the store was reset (or is another).

    The service should rebuild its projection from the start.

    Attributes:
        expected: The server's backendId.
        received: The one the client sent.
    """

    def __init__(self, expected: str, received: str) -> None:
        super().__init__(f"backendId mismatch: server has {expected!r}, client sent {received!r}")
        self.expected = expected
        self.received = received


class RequestFailed(ClientError):
    """A request failed in a way retrying on this connection cannot fix (an ``UnknownError``,
    a defect)."""


class ProtocolViolation(ClientError):
    """The server sent something the protocol does not allow (not JSON, a gap, ...)."""


class ConnectionClosed(ClientError):
    """The connection closed with a code that says not to reconnect.

    Attributes:
        code: The WebSocket close code.
    """

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"connection closed with {code} {reason}".rstrip())
        self.code = code
