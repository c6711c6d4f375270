"""Admission: one sync request in, an admitted session context or a refusal out.

Both transports call :func:`admit`, the WebSocket handshake before its 101 and every
HTTP-transport POST, so a request is refused the same way whichever transport it came on.
The steps, in order: the method fits the transport; the URL the client builds (spec §2)
parses; its ``transport`` parameter matches; the server is not shutting down; then the
``validate_payload`` hook (the auth policy, :class:`gateway.auth.gate.AuthGate`) decides.

No sockets and no clock: the hook is injected, and what the server's state says (shutting
down) is asked through a callable.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from gateway.errors import Refusal, RefusalCode
from gateway.protocol import loads

# Refusals are logged where the WebSocket handshake always logged them (a stable name).
logger = logging.getLogger("gateway.server")

Transport = Literal["ws", "http"]

MISSING: Final = object()
"""The ``payload`` of a client that has no ``syncPayload`` (the URL has no parameter)."""


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
        return Refusal(code=RefusalCode.BAD_REQUEST, message="query string is not valid UTF-8")
    values: dict[str, str] = {}
    for key, value in params:
        if key in values and key in ("storeId", "transport", "payload"):
            return Refusal(code=RefusalCode.BAD_REQUEST, message=f"duplicate parameter {key}")
        values[key] = value
    if "storeId" not in values and "transport" not in values:
        return NotSync(split.path or "/")
    store_id = values.get("storeId")
    if store_id is None:
        return Refusal(code=RefusalCode.MISSING_STORE_ID, message="storeId is required")
    if not store_id or len(store_id) > max_store_id_length:
        return Refusal(
            code=RefusalCode.BAD_STORE_ID,
            message=f"storeId must have 1 to {max_store_id_length} characters",
        )
    transport: Transport
    match values.get("transport"):
        case "ws":
            transport = "ws"
        case "http":
            transport = "http"
        case _:
            return Refusal(code=RefusalCode.BAD_TRANSPORT, message="transport must be ws or http")
    payload: object = MISSING
    raw = values.get("payload")
    if raw is not None:
        if len(raw) > 3 * max_payload_bytes:
            return Refusal(code=RefusalCode.BAD_PAYLOAD, message="payload is too large")
        try:
            text = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            return Refusal(code=RefusalCode.BAD_PAYLOAD, message="payload is not valid UTF-8")
        if len(text.encode()) > max_payload_bytes:
            return Refusal(code=RefusalCode.BAD_PAYLOAD, message="payload is too large")
        try:
            payload = loads(text)
        except ValueError:
            return Refusal(code=RefusalCode.BAD_PAYLOAD, message="payload is not valid JSON")
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
    # The verified token's claims the push rules read (None: none, or no token); only those,
    # so that an idle session keeps no more than the rules need.
    claims: Mapping[str, object] | None = None


ValidatePayload = Callable[[PayloadContext], Awaitable[Admission | Refusal]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Incoming:
    """One request as its transport read it."""

    method: str
    target: str
    # Lower-case names; a repeated header's values joined with ", " (RFC 9110 §5.3).
    headers: Mapping[str, str]
    remote_addr: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Admitted:
    """A request the server takes: what it asked for, what the hook saw, what it decided."""

    target: SyncTarget
    context: PayloadContext
    admission: Admission


def origin_allowed(origin: str | None, patterns: tuple[str, ...]) -> bool:
    """Whether a browser ``Origin`` may use the sync endpoints (``server.allowed_origins``).

    No patterns: no check. No ``Origin`` header: a non-browser client, allowed. A pattern is
    ``*``, an exact origin (``https://app.example.com``, ``http://localhost:5173``), a host
    (``app.example.com``: any scheme and port) or a host pattern (``*.example.com``, optionally
    with a scheme: ``https://*.example.com``), which matches subdomains only.
    """
    if not patterns or origin is None:
        return True
    try:
        split = urlsplit(origin.strip().lower())
        host, port = split.hostname, split.port
    except ValueError:
        return False
    if not split.scheme or not host:
        return False  # "null" (sandboxed frames, file://) and garbage
    port = port or {"http": 80, "https": 443}.get(split.scheme)
    for pattern in patterns:
        pattern = pattern.lower()
        if pattern == "*":
            return True
        scheme, sep, rest = pattern.partition("://")
        if not sep:
            scheme, rest = "", pattern
        if scheme and scheme != split.scheme:
            continue
        if rest.startswith("*."):
            if host.endswith(rest[1:]):
                return True
            continue
        want_host, _, want_port = rest.partition(":")
        if want_host != host:
            continue
        if not scheme and not want_port:
            return True
        default = {"http": 80, "https": 443}.get(scheme or split.scheme)
        if (int(want_port) if want_port.isdigit() else default) == port:
            return True
    return False


def cors_headers(
    origin: str | None, allow_origin: str, patterns: tuple[str, ...]
) -> tuple[tuple[str, str], ...]:
    """The CORS headers of an HTTP-transport answer to a request from ``origin``.

    ``allow_origin`` is ``server.cors_allow_origin``: empty sends none; ``*`` goes out as is;
    so does a named origin, except with an allowlist (``server.allowed_origins``): then a
    request whose ``Origin`` the allowlist admits gets that origin back, so every allowed origin
    can use the HTTP transport from a browser, not only the named one. Those answers depend on
    the request's ``Origin``, hence ``Vary: Origin``.
    """
    if not allow_origin:
        return ()
    if allow_origin == "*" or not patterns:
        return (("Access-Control-Allow-Origin", allow_origin),)
    if origin is not None and origin_allowed(origin, patterns):
        allow_origin = origin
    return (("Access-Control-Allow-Origin", allow_origin), ("Vary", "Origin"))


def _wants_websocket(headers: Mapping[str, str]) -> bool:
    value = headers.get("upgrade", "")
    return any(token.strip().lower() == "websocket" for token in value.split(","))


_SHUTTING_DOWN: Final = Refusal(code=RefusalCode.SHUTTING_DOWN, message="server is shutting down")


async def admit(
    request: Incoming,
    *,
    via: Transport,
    max_store_id_length: int,
    max_payload_bytes: int,
    transports: tuple[str, ...] = ("ws", "http"),
    allowed_origins: tuple[str, ...] = (),
    closing: Callable[[], bool],
    validate_payload: ValidatePayload,
) -> Admitted | Refusal | NotSync:
    """Decide whether ``request``, which arrived on transport ``via``, opens a sync session.

    Returns:
        :class:`Admitted` for a sync request the hook accepted; :class:`NotSync` for a
        WebSocket-path request without sync parameters (the caller serves its endpoints,
        ``/healthz`` and friends); else the :class:`Refusal` to answer with.
    """
    if via == "http" and request.method != "POST":
        return Refusal(
            code=RefusalCode.METHOD_NOT_ALLOWED,
            message=f"{request.method} is not supported",
            headers=(("Allow", "GET, POST, OPTIONS"),),
        )
    target = parse_target(
        request.target,
        max_store_id_length=max_store_id_length,
        max_payload_bytes=max_payload_bytes,
    )
    if isinstance(target, NotSync):
        if via == "ws":
            return target
        return Refusal(code=RefusalCode.NOT_FOUND, message="no such endpoint")
    if isinstance(target, Refusal):
        return target
    if target.transport != via:
        if via == "ws":
            return Refusal(
                code=RefusalCode.METHOD_NOT_ALLOWED,
                message="the http transport uses POST",
                headers=(("Allow", "POST, OPTIONS"),),
            )
        return Refusal(code=RefusalCode.BAD_TRANSPORT, message="POST requests use transport=http")
    if not origin_allowed(request.headers.get("origin"), allowed_origins):
        # Before any credential is read: a cookie a browser attached on another site's
        # behalf (cross-site WebSocket hijacking) never reaches the auth decision. Logged,
        # so that an operator can see which origin a too narrow allowlist shuts out.
        logger.info(
            "refused %s store=%s origin=%s code=%s remote=%s",
            via,
            target.store_id,
            request.headers.get("origin"),
            RefusalCode.ORIGIN_FORBIDDEN,
            request.remote_addr,
        )
        return Refusal(
            code=RefusalCode.ORIGIN_FORBIDDEN, message="this origin may not use this server"
        )
    if via not in transports:
        return Refusal(
            code=RefusalCode.TRANSPORT_DISABLED,
            message=f"the {via} transport is not enabled on this server",
        )
    if via == "ws" and not _wants_websocket(request.headers):
        return Refusal(
            code=RefusalCode.UPGRADE_REQUIRED,
            message="transport=ws expects Upgrade: websocket",
            headers=(("Upgrade", "websocket"),),
        )
    if closing():
        return _SHUTTING_DOWN
    context = PayloadContext(
        store_id=target.store_id,
        payload=target.payload,
        transport=via,
        headers=request.headers,
        remote_addr=request.remote_addr,
        query_token=target.query_token,
    )
    decision = await validate_payload(context)
    if isinstance(decision, Refusal):
        logger.info(
            "refused %s store=%s path=%s code=%s remote=%s",
            via,
            target.store_id,
            redact_target(request.target),
            decision.code,
            request.remote_addr,
        )
        return decision
    if closing():
        # The server began stopping while the hook decided.
        return _SHUTTING_DOWN
    return Admitted(target=target, context=context, admission=decision)
