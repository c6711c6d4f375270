"""Every code and error gateway can answer with, defined once.

Pure: no I/O. Three vocabularies, one per layer a client can see:

- :class:`RefusalCode`: why an HTTP request (a WebSocket handshake before its 101, or an
  HTTP-transport request) is refused. Each code carries its HTTP status; the body is
  ``{"error": {"code": ..., "message": ...}}`` (:class:`Refusal`).
- :class:`CloseCode`: why an open WebSocket session is closed. Application codes follow
  centrifuge's ranges: 4000-4499 the client may reconnect, 4500-4999 terminal (none yet).
- :class:`RpcFailure`: the typed errors a Pull or Push request fails with, inside an RPC
  ``Exit`` (their wire form is :mod:`gateway.protocol`'s business).

The README's tables of HTTP statuses and close codes are checked against these enums
(``tests/unit/test_errors.py``), so the documentation cannot drift from the code.

Exceptions share one root::

    GatewayError
    ├── ConfigError          the configuration is invalid (the message names the key)
    ├── StoreError           a store backend failed; nothing of the operation was written
    │   ├── HeadMismatch     an append expected a head that is no longer current
    │   └── CommitUnknown    an append failed and whether it was written cannot be told
    ├── ProtocolError        a client sent something the wire protocol does not allow
    │   ├── FrameError       the frame itself is unusable: answered with a Defect frame
    │   └── PayloadError     a Request's payload fails the RPC schema: that request dies
    └── WireClosed           the connection closed while a send waited for it to drain
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from http import HTTPStatus
from typing import Self

import orjson

# ---------------------------------------------------------------------------------------------
# Exceptions


class GatewayError(Exception):
    """The root of every exception gateway raises on purpose."""


class ConfigError(GatewayError):
    """The configuration is invalid; the message names the offending key."""


class StoreError(GatewayError):
    """The backend failed; nothing of the failed operation was written."""


class HeadMismatch(StoreError):
    """An append expected a head that is no longer current; ``head`` is the real one."""

    def __init__(self, head: int) -> None:
        super().__init__(f"head is {head}")
        self.head = head


class CommitUnknown(StoreError):
    """An append failed where its outcome is unknown (the connection died around COMMIT) and
    the log could not be asked: the batch may or may not be stored. It must be neither
    acknowledged nor reported failed; the engine ends the request without an answer
    (1011 / 503) and re-reads the store's head."""


class ProtocolError(GatewayError):
    """A client sent something the sync protocol does not allow."""


class FrameError(ProtocolError):
    """A frame that cannot be interpreted at all; the connection answers with a Defect."""


class PayloadError(ProtocolError):
    """A request payload that fails the RPC schema; that request dies (Exit / Die)."""


class WireClosed(GatewayError):
    """The connection closed while a send was waiting for the socket to drain."""


# ---------------------------------------------------------------------------------------------
# HTTP refusals


class RefusalCode(enum.StrEnum):
    """Stable reason codes of HTTP refusals, each with its status (README, "HTTP status
    codes"). Logs and the ``gateway_auth_decisions_total`` metric use the same strings."""

    status: HTTPStatus

    def __new__(cls, code: str, status: HTTPStatus) -> Self:
        member = str.__new__(cls, code)
        member._value_ = code
        member.status = status
        return member

    # 400: the request itself is wrong
    BAD_REQUEST = "BAD_REQUEST", HTTPStatus.BAD_REQUEST
    MISSING_STORE_ID = "MISSING_STORE_ID", HTTPStatus.BAD_REQUEST
    BAD_STORE_ID = "BAD_STORE_ID", HTTPStatus.BAD_REQUEST
    BAD_TRANSPORT = "BAD_TRANSPORT", HTTPStatus.BAD_REQUEST
    BAD_PAYLOAD = "BAD_PAYLOAD", HTTPStatus.BAD_REQUEST
    TOKEN_TOO_LARGE = "TOKEN_TOO_LARGE", HTTPStatus.BAD_REQUEST
    # 401 / 403: credentials (the auth decision table)
    MISSING_TOKEN = "MISSING_TOKEN", HTTPStatus.UNAUTHORIZED
    INVALID_TOKEN = "INVALID_TOKEN", HTTPStatus.UNAUTHORIZED
    TOKEN_EXPIRED = "TOKEN_EXPIRED", HTTPStatus.UNAUTHORIZED
    TOKEN_REVOKED = "TOKEN_REVOKED", HTTPStatus.UNAUTHORIZED
    DEV_TOKEN_REJECTED = "DEV_TOKEN_REJECTED", HTTPStatus.FORBIDDEN
    BYPASS_REJECTED = "BYPASS_REJECTED", HTTPStatus.FORBIDDEN
    STORE_FORBIDDEN = "STORE_FORBIDDEN", HTTPStatus.FORBIDDEN
    FORBIDDEN = "FORBIDDEN", HTTPStatus.FORBIDDEN
    ORIGIN_FORBIDDEN = "ORIGIN_FORBIDDEN", HTTPStatus.FORBIDDEN
    # 404 and friends: the request does not fit an endpoint
    NOT_FOUND = "NOT_FOUND", HTTPStatus.NOT_FOUND
    STORE_NOT_FOUND = "STORE_NOT_FOUND", HTTPStatus.NOT_FOUND
    STORE_EXISTS = "STORE_EXISTS", HTTPStatus.CONFLICT
    TRANSPORT_DISABLED = "TRANSPORT_DISABLED", HTTPStatus.NOT_FOUND
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED", HTTPStatus.METHOD_NOT_ALLOWED
    LENGTH_REQUIRED = "LENGTH_REQUIRED", HTTPStatus.LENGTH_REQUIRED
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE", HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    URI_TOO_LONG = "URI_TOO_LONG", HTTPStatus.REQUEST_URI_TOO_LONG
    UPGRADE_REQUIRED = "UPGRADE_REQUIRED", HTTPStatus.UPGRADE_REQUIRED
    RATE_LIMITED = "RATE_LIMITED", HTTPStatus.TOO_MANY_REQUESTS
    HEADERS_TOO_LARGE = "HEADERS_TOO_LARGE", HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
    # 5xx: the server cannot serve it now
    INTERNAL_ERROR = "INTERNAL_ERROR", HTTPStatus.INTERNAL_SERVER_ERROR
    NOT_READY = "NOT_READY", HTTPStatus.SERVICE_UNAVAILABLE
    STORAGE_UNAVAILABLE = "STORAGE_UNAVAILABLE", HTTPStatus.SERVICE_UNAVAILABLE
    SHUTTING_DOWN = "SHUTTING_DOWN", HTTPStatus.SERVICE_UNAVAILABLE
    OVERLOADED = "OVERLOADED", HTTPStatus.SERVICE_UNAVAILABLE
    HTTP_VERSION = "HTTP_VERSION", HTTPStatus.HTTP_VERSION_NOT_SUPPORTED


@dataclass(frozen=True, slots=True, kw_only=True)
class Refusal:
    """An HTTP answer instead of a sync session: a stable code (which gives the status), a
    human message that never contains a credential, and extra headers."""

    code: RefusalCode
    message: str
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def status(self) -> int:
        return int(self.code.status)

    def body(self) -> bytes:
        return orjson.dumps({"error": {"code": self.code.name, "message": self.message}})


# ---------------------------------------------------------------------------------------------
# WebSocket close codes


class CloseCode(enum.IntEnum):
    """Close codes gateway sends on an open session (README, "WebSocket close codes").

    1000-1015 are RFC 6455's; 1002 and 1009 are sent by websockets' parser itself.
    4000-4499: the application closed the session and the client may reconnect.
    4500-4999: terminal (reserved; none is used yet).
    """

    GOING_AWAY = 1001
    """The server is shutting down."""
    PROTOCOL_ERROR = 1002
    """WebSocket framing error (websockets' parser)."""
    MESSAGE_TOO_BIG = 1009
    """A message over ``limits.max_message_bytes`` (websockets' parser)."""
    INTERNAL_ERROR = 1011
    """Storage failed during a pull, a keepalive Pong is late, or a bug (logged)."""
    TRY_AGAIN_LATER = 1013
    """Slow consumer: more than ``limits.send_buffer_limit`` bytes queued."""
    TOKEN_EXPIRED = 4001
    """The session's credential expired (``exp`` + grace passed)."""
    FORBIDDEN = 4003
    """After a reload, the session's credentials are no longer accepted."""
    OPERATOR = 4004
    """An operator closed the session: its store was reset or deleted, or it was
    disconnected (admin API). The client may reconnect."""


RECONNECT_RANGE = range(4000, 4500)
TERMINAL_RANGE = range(4500, 5000)


# ---------------------------------------------------------------------------------------------
# RPC failures (the error union of sync-cf's Pull and Push RPCs)


class RpcFailure:
    """A typed failure of one Pull or Push request (an ``Exit`` ``Fail``)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class ServerAhead(RpcFailure):
    """A push whose parent is not the store's head: the client must pull first."""

    minimum_expected: int
    provided: int


@dataclass(frozen=True, slots=True)
class BackendIdMismatch(RpcFailure):
    """The client's backendId is not the store's (the store was reset or is another)."""

    expected: str
    received: str


@dataclass(frozen=True, slots=True)
class UnknownFailure(RpcFailure):
    """Anything else (sync-cf's ``UnknownError``): a bad batch, a storage failure."""

    message: str
    note: str


def store_mismatch(store_id: str) -> UnknownFailure:
    """A request naming another store than its URL (the URL's storeId is authoritative)."""
    return UnknownFailure(
        f"storeId {store_id!r} does not match the URL's storeId", "store mismatch"
    )
