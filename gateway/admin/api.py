"""The admin API: JSON over HTTP on the operator's own listener (README, "Administration").

Routing, authentication and the mapping of outcomes to statuses; no sockets (the listener,
:mod:`gateway.admin.server`, reads requests and writes responses). Every request needs the
admin token as a Bearer token, compared in constant time; a wrong or missing one is refused
(401) and counted towards the client address's lockout (shared with the sync endpoints), and
a locked-out address is answered 429 unless its token is right. Every action is logged on
``gateway.audit``; the token never is.

=========  ===============================  ===========================================
method     path                             answer
=========  ===============================  ===========================================
GET        /v1/stores?prefix=&after=&limit  ``{"stores": [...], "next": storeId|null}``
GET        /v1/stores/{storeId}             one store; 404 ``STORE_NOT_FOUND``
GET        /v1/stores/{storeId}/events      the log as JSON lines (``?from=N``: after N)
POST       /v1/stores/{storeId}/reset       ``{"storeId", "backendId", "head": 0}``
DELETE     /v1/stores/{storeId}             ``{"storeId", "deleted": true}``
GET        /v1/sessions?store=&subject=&instance=  ``{"sessions": [...]}``
POST       /v1/sessions/disconnect          body ``{"store"?, "subject"?, "instance"?}``
GET        /v1/revocations                  ``{"revocations": [...]}`` (those in force)
POST       /v1/revocations                  ``{"subject", "before"?}`` / ``{"jti", "expiresAt"?}``
=========  ===============================  ===========================================
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qsl, unquote

import orjson

from gateway.admin.service import MAX_PAGE, AdminService, StoreExists
from gateway.auth.limits import FailureTracker
from gateway.auth.policy import fingerprint
from gateway.config import LiveConfig
from gateway.errors import Refusal, RefusalCode, StoreError
from gateway.logfile import LineError, export_line
from gateway.revocation import requested

logger = logging.getLogger("gateway.admin")
security = logging.getLogger("gateway.security")

JSON: Final = "application/json"
NDJSON: Final = "application/x-ndjson"
# Events read from the store per step of an export (memory stays bounded by this).
EXPORT_BATCH: Final = 1000
# Largest request body (the disconnect filter).
MAX_BODY: Final = 64 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminRequest:
    """One request as the listener read it."""

    method: str
    path: str
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    remote_addr: str | None = None
    lines: AsyncIterator[bytes] | None = None
    """A large body (an import), read line by line as it arrives instead of into ``body``."""


@dataclass(frozen=True, slots=True)
class AdminResponse:
    """Status, body (bytes, or chunks streamed as they come) and extra headers."""

    status: int
    body: bytes | AsyncIterator[bytes] = b""
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, data: object, status: int = 200) -> AdminResponse:
        return cls(status, orjson.dumps(data))

    @classmethod
    def refusal(cls, refusal: Refusal) -> AdminResponse:
        return cls(refusal.status, refusal.body(), JSON, refusal.headers)


def _refuse(code: RefusalCode, message: str, *headers: tuple[str, str]) -> AdminResponse:
    return AdminResponse.refusal(Refusal(code=code, message=message, headers=tuple(headers)))


def _not_found(store_id: str) -> AdminResponse:
    return _refuse(RefusalCode.STORE_NOT_FOUND, f"no store {store_id!r}")


@functools.lru_cache(maxsize=16)
def _networks(cidrs: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def _in_networks(ip: str, cidrs: tuple[str, ...]) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in network for network in _networks(cidrs))


def _ip(remote: str | None) -> str:
    return remote.rsplit(":", 1)[0].strip("[]") if remote else "unknown"


@dataclass(frozen=True, slots=True)
class _Target:
    store_id: str
    actor: str


Handler = Callable[[AdminRequest, _Target], Awaitable[AdminResponse]]


class AdminApi:
    """Answers admin requests for one node (see the module docstring)."""

    def __init__(
        self,
        settings: LiveConfig,
        service: AdminService,
        failures: FailureTracker,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``failures`` is the auth gate's tracker, and ``clock`` must be its clock."""
        self._settings = settings
        self._service = service
        self._failures = failures
        self._clock = clock

    async def handle(self, request: AdminRequest) -> AdminResponse:
        """The answer to ``request``; never raises."""
        denied = self._authenticate(request)
        if denied is not None:
            return denied
        actor = f"admin@{_ip(request.remote_addr)}"
        try:
            return await self._route(request, actor)
        except StoreError as exc:
            logger.warning("admin %s %s: store unavailable: %s", request.method, request.path, exc)
            return _refuse(
                RefusalCode.STORAGE_UNAVAILABLE, "the store is unavailable", ("Retry-After", "1")
            )
        except Exception:
            logger.exception("admin %s %s failed", request.method, request.path)
            return _refuse(RefusalCode.INTERNAL_ERROR, "the request failed; see the server log")

    # -- authentication -----------------------------------------------------------------------

    def _authenticate(self, request: AdminRequest) -> AdminResponse | None:
        admin = self._settings.current.admin
        token = admin.token
        if not token:
            return _refuse(RefusalCode.FORBIDDEN, "the admin API is disabled (no admin token)")
        if admin.allowed_networks and not _in_networks(
            _ip(request.remote_addr), admin.allowed_networks
        ):
            security.warning(
                "refused admin %s %s ip=%s: not in admin.allowed_networks",
                request.method,
                request.path,
                _ip(request.remote_addr),
            )
            return _refuse(RefusalCode.FORBIDDEN, "the admin API does not answer this address")
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        presented = presented.strip() if scheme.lower() == "bearer" else ""
        if presented and hmac.compare_digest(
            hashlib.sha256(presented.encode()).digest(), hashlib.sha256(token.encode()).digest()
        ):
            return None
        ip, now = _ip(request.remote_addr), self._clock()
        retry_after = self._failures.retry_after(ip, now)
        if retry_after is not None:
            return _refuse(
                RefusalCode.RATE_LIMITED,
                "too many failed attempts; try again later",
                ("Retry-After", str(max(1, round(retry_after)))),
            )
        tag = fingerprint(presented) if presented else "<missing>"
        self._failures.record_failure(ip, now, tag)
        code = RefusalCode.INVALID_TOKEN if presented else RefusalCode.MISSING_TOKEN
        security.warning(
            "refused code=%s admin %s %s token=%s ip=%s",
            code,
            request.method,
            request.path,
            tag if presented else None,
            ip,
        )
        return _refuse(code, "the admin API needs Authorization: Bearer <admin token>")

    # -- routing ------------------------------------------------------------------------------

    async def _route(self, request: AdminRequest, actor: str) -> AdminResponse:
        parts = [unquote(part) for part in request.path.split("/")[1:]]
        if parts[:1] != ["v1"]:
            return _refuse(RefusalCode.NOT_FOUND, "no such endpoint")
        store_id = ""
        routes: dict[str, Handler]
        match parts[1:]:
            case ["stores"]:
                routes = {"GET": self._stores}
            case ["stores", store_id]:
                routes = {"GET": self._store, "DELETE": self._delete}
            case ["stores", store_id, "events"]:
                routes = {"GET": self._export}
            case ["stores", store_id, "reset"]:
                routes = {"POST": self._reset}
            case ["stores", store_id, "import"]:
                routes = {"POST": self._import}
            case ["sessions"]:
                routes = {"GET": self._sessions}
            case ["sessions", "disconnect"]:
                routes = {"POST": self._disconnect}
            case ["revocations"]:
                routes = {"GET": self._revocations, "POST": self._revoke}
            case _:
                return _refuse(RefusalCode.NOT_FOUND, "no such endpoint")
        handler = routes.get(request.method)
        if handler is None:
            return _refuse(
                RefusalCode.METHOD_NOT_ALLOWED,
                f"{request.method} is not allowed here",
                ("Allow", ", ".join(routes)),
            )
        if parts[1] == "stores" and len(parts) > 2 and not store_id:
            return _refuse(RefusalCode.BAD_STORE_ID, "the storeId is empty")
        return await handler(request, _Target(store_id, actor))

    # -- stores -------------------------------------------------------------------------------

    async def _stores(self, request: AdminRequest, _target: _Target) -> AdminResponse:
        limit = _int_param(request.query, "limit", 100, 1, MAX_PAGE)
        if isinstance(limit, AdminResponse):
            return limit
        stores, following = await self._service.stores(
            prefix=request.query.get("prefix", ""),
            after=request.query.get("after", ""),
            limit=limit,
        )
        return AdminResponse.json({"stores": stores, "next": following})

    async def _store(self, _request: AdminRequest, target: _Target) -> AdminResponse:
        found = await self._service.store(target.store_id)
        return AdminResponse.json(found) if found is not None else _not_found(target.store_id)

    async def _reset(self, _request: AdminRequest, target: _Target) -> AdminResponse:
        meta = await self._service.reset(target.store_id, actor=target.actor)
        if meta is None:
            return _not_found(target.store_id)
        return AdminResponse.json(
            {"storeId": target.store_id, "backendId": meta.backend_id, "head": meta.head}
        )

    async def _delete(self, _request: AdminRequest, target: _Target) -> AdminResponse:
        if not await self._service.delete(target.store_id, actor=target.actor):
            return _not_found(target.store_id)
        return AdminResponse.json({"storeId": target.store_id, "deleted": True})

    async def _export(self, request: AdminRequest, target: _Target) -> AdminResponse:
        store_id = target.store_id
        after = _int_param(request.query, "from", 0, 0, 2**63 - 1)
        if isinstance(after, AdminResponse):
            return after
        info = await self._service.store(store_id)
        if info is None:
            return _not_found(store_id)
        logger.info("admin export store=%s from=%d head=%d", store_id, after, info["head"])
        lines = self._lines(store_id, str(info["backendId"]), after, int(info["head"]))
        return AdminResponse(200, lines, NDJSON)

    async def _import(self, request: AdminRequest, target: _Target) -> AdminResponse:
        backend_id = request.query.get("backendId") or None
        lines = request.lines if request.lines is not None else _split(request.body)
        try:
            imported = await self._service.import_store(
                target.store_id, lines, backend_id=backend_id, actor=target.actor
            )
        except StoreExists:
            return _refuse(
                RefusalCode.STORE_EXISTS,
                f"store {target.store_id!r} exists: import only creates new stores",
            )
        except LineError as exc:
            return _refuse(RefusalCode.BAD_REQUEST, f"nothing imported: {exc}")
        except (EOFError, TimeoutError):
            return _refuse(RefusalCode.BAD_REQUEST, "nothing imported: the body ended early")
        return AdminResponse.json(
            {
                "storeId": imported.store_id,
                "backendId": imported.backend_id,
                "head": imported.head,
            }
        )

    async def _lines(
        self, store_id: str, backend_id: str, after: int, upto: int
    ) -> AsyncIterator[bytes]:
        """The events ``(after, upto]`` as JSON lines, read a batch at a time."""
        while after < upto:
            rows = await self._service.read(store_id, after, upto, EXPORT_BATCH)
            if not rows:
                return
            out = bytearray()
            for row in rows:
                out += export_line(row.data, row.created_ms, backend_id, row.writer)
            after = rows[-1].seq
            yield bytes(out)

    # -- revocations --------------------------------------------------------------------------

    async def _revocations(self, _request: AdminRequest, _target: _Target) -> AdminResponse:
        entries = await self._service.revocations(self._clock())
        return AdminResponse.json({"revocations": [entry.as_json() for entry in entries]})

    async def _revoke(self, request: AdminRequest, target: _Target) -> AdminResponse:
        try:
            body = orjson.loads(request.body or b"null")
        except orjson.JSONDecodeError:
            body = None
        auth = self._settings.current.auth
        entry = requested(
            body,
            now=self._clock(),
            max_token_lifetime=auth.max_token_lifetime,
            grace_period=auth.grace_period,
            actor=target.actor,
        )
        if isinstance(entry, str):
            return _refuse(RefusalCode.BAD_REQUEST, entry)
        closed = await self._service.revoke(entry)
        return AdminResponse.json({"revocation": entry.as_json(), "closed": closed})

    # -- sessions -----------------------------------------------------------------------------

    async def _sessions(self, request: AdminRequest, _target: _Target) -> AdminResponse:
        query = request.query
        sessions = self._service.sessions(
            store_id=query.get("store"),
            subject=query.get("subject"),
            instance_id=query.get("instance"),
        )
        return AdminResponse.json({"sessions": sessions})

    async def _disconnect(self, request: AdminRequest, target: _Target) -> AdminResponse:
        try:
            body = orjson.loads(request.body or b"{}")
        except orjson.JSONDecodeError:
            return _refuse(RefusalCode.BAD_REQUEST, "the body must be a JSON object")
        filters: dict[str, str] = {}
        if isinstance(body, dict):
            for key in ("store", "subject", "instance"):
                value = body.get(key)
                if value is not None and not isinstance(value, str):
                    return _refuse(RefusalCode.BAD_REQUEST, f"{key} must be a string")
                if value is not None:
                    filters[key] = value
        if not isinstance(body, dict) or not filters:
            return _refuse(
                RefusalCode.BAD_REQUEST, 'give at least one of "store", "subject", "instance"'
            )
        closed = await self._service.disconnect(
            store_id=filters.get("store"),
            subject=filters.get("subject"),
            instance_id=filters.get("instance"),
            actor=target.actor,
        )
        return AdminResponse.json({"closed": closed})


async def _split(body: bytes) -> AsyncIterator[bytes]:
    for line in body.split(b"\n"):
        yield line


def _int_param(
    query: Mapping[str, str], name: str, default: int, low: int, high: int
) -> int | AdminResponse:
    text = query.get(name)
    if text is None:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        return _refuse(RefusalCode.BAD_REQUEST, f"{name} must be an integer in {low}..{high}")
    return int(text)


def query_of(text: str) -> dict[str, str] | None:
    """The query string's parameters (the last of repeated ones); None if not UTF-8."""
    try:
        return dict(parse_qsl(text, keep_blank_values=True, errors="strict"))
    except (UnicodeDecodeError, ValueError):
        return None
