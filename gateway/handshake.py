"""Sync request targets: parsing the URL the client builds (spec §2), and refusals.

Pure: no I/O. Both transports use it, the WebSocket handshake (before the upgrade) and every
HTTP-transport POST, so a request is refused the same way whichever transport it came on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

import orjson

from gateway.protocol import loads

Transport = Literal["ws", "http"]

MISSING: Final = object()
"""The ``payload`` of a client that has no ``syncPayload`` (the URL has no parameter)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Refusal:
    """An HTTP answer instead of a sync session: status, stable code, human message."""

    status: int
    code: str
    message: str
    headers: tuple[tuple[str, str], ...] = ()

    def body(self) -> bytes:
        return orjson.dumps({"error": {"code": self.code, "message": self.message}})


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncTarget:
    """What a sync request asks for: a store, a transport, and the app's sync payload."""

    path: str
    store_id: str
    transport: Transport
    payload: object = MISSING
    # A token passed as the `token` query parameter (seed deployments use it).
    query_token: str | None = None


class NotSync:
    """A request without sync parameters (``GET /``, ``/healthz``...)."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


def parse_target(
    target: str, *, max_store_id_length: int, max_payload_bytes: int
) -> SyncTarget | NotSync | Refusal:
    """Parse a request target such as ``/sync?storeId=s&payload=…&transport=ws``.

    The path is not significant (spec §2.1). ``payload`` is JSON that was percent-encoded
    twice (spec §2.2): the query is form-decoded, then the value is unquoted once more.
    """
    split = urlsplit(target)
    try:
        params = parse_qsl(split.query, keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        return Refusal(status=400, code="BAD_REQUEST", message="query string is not valid UTF-8")
    values: dict[str, str] = {}
    for key, value in params:
        if key in values and key in ("storeId", "transport", "payload"):
            return Refusal(status=400, code="BAD_REQUEST", message=f"duplicate parameter {key}")
        values[key] = value
    if "storeId" not in values and "transport" not in values:
        return NotSync(split.path or "/")
    store_id = values.get("storeId")
    if store_id is None:
        return Refusal(status=400, code="MISSING_STORE_ID", message="storeId is required")
    if not store_id or len(store_id) > max_store_id_length:
        return Refusal(
            status=400,
            code="BAD_STORE_ID",
            message=f"storeId must have 1 to {max_store_id_length} characters",
        )
    transport: Transport
    match values.get("transport"):
        case "ws":
            transport = "ws"
        case "http":
            transport = "http"
        case _:
            return Refusal(status=400, code="BAD_TRANSPORT", message="transport must be ws or http")
    payload: object = MISSING
    raw = values.get("payload")
    if raw is not None:
        if len(raw) > 3 * max_payload_bytes:
            return Refusal(status=400, code="BAD_PAYLOAD", message="payload is too large")
        try:
            text = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            return Refusal(status=400, code="BAD_PAYLOAD", message="payload is not valid UTF-8")
        if len(text.encode()) > max_payload_bytes:
            return Refusal(status=400, code="BAD_PAYLOAD", message="payload is too large")
        try:
            payload = loads(text)
        except ValueError:
            return Refusal(status=400, code="BAD_PAYLOAD", message="payload is not valid JSON")
    return SyncTarget(
        path=split.path or "/",
        store_id=store_id,
        transport=transport,
        payload=payload,
        query_token=values.get("token") or None,
    )


def redact_target(target: str) -> str:
    """The request target for logs: the path only, never the query (it carries tokens)."""
    split = urlsplit(target)
    return split.path + ("?…" if split.query else "")


# ---------------------------------------------------------------------------------------------
# The validate_payload hook


@dataclass(frozen=True, slots=True, kw_only=True)
class PayloadContext:
    """What ``validate_payload`` sees: the decoded payload, the store and the headers."""

    store_id: str
    payload: object
    transport: Transport
    headers: Mapping[str, str]
    remote_addr: str | None = None
    query_token: str | None = None

    @property
    def has_payload(self) -> bool:
        """Whether the client sent a syncPayload at all (the URL had a payload parameter)."""
        return self.payload is not MISSING


@dataclass(frozen=True, slots=True, kw_only=True)
class Admission:
    """An accepted sync request: who it is (for logs and authorisation) and why."""

    subject: str = "anonymous"
    reason: str = "accepted"
    # Wall-clock time after which the session's credential is no longer acceptable.
    expires_at: float | None = None
    instance_id: str | None = None
    # A short hash of the token for logs; never the token.
    fingerprint: str | None = None
    # Whether pushes of this subject are rate-limited (JWT subjects are).
    rate_limited: bool = False


ValidatePayload = Callable[[PayloadContext], Awaitable[Admission | Refusal]]
