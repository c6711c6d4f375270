"""Session bookkeeping: the open WebSocket sessions and what they share.

One line is logged when a session opens and one when it closes; counters of connections
per transport and of evictions live here. Timers that would otherwise exist per connection
are shared: one sweeper sends keepalive Pings (and closes sessions whose Pong is late), one
closes sessions whose credentials expired, from one-second buckets. After a reload,
:meth:`Sessions.recheck` closes the sessions the new policy refuses and
:meth:`Sessions.apply_limits` gives the open ones the new message size limit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from gateway import log
from gateway.admission import Admission, Admitted, PayloadContext
from gateway.config import LiveConfig
from gateway.engine import SyncEngine
from gateway.errors import CloseCode, Refusal, RefusalCode, RpcFailure
from gateway.metrics import SessionCounters
from gateway.peer import Peer
from gateway.protocol import PushRequest
from gateway.pushgate import Admitted as HasAdmission
from gateway.pushgate import PullGate
from gateway.store import Writer
from gateway.transport.ws import Session, WsConnection

logger = logging.getLogger("gateway.server")

# Request headers the auth gate reads again after a reload (token sources, client address).
CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "x-forwarded-for"})

# Seconds between sweeps for sessions whose credentials expired.
EXPIRY_SWEEP_INTERVAL = 1.0

PushGate = Callable[[HasAdmission, PushRequest], Awaitable[RpcFailure | None]]
Recheck = Callable[[PayloadContext], Awaitable[Refusal | Admission]]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SessionView:
    """One open session as an operator sees it (never its token)."""

    store_id: str
    subject: str
    instance_id: str | None
    reason: str
    transport: str
    remote_addr: str | None
    connected_at: float
    """Wall-clock time (seconds since the epoch) the session opened."""
    expires_at: float | None
    """When its credential stops being accepted (``exp`` + grace), if ever."""


class SessionInfo:
    """What a connection's handshake admitted, kept for its session and reload checks."""

    __slots__ = ("admission", "context", "expiry", "started")

    def __init__(self, admission: Admission, context: PayloadContext) -> None:
        self.admission = admission
        self.context = context
        # The expiry bucket (a whole second) the connection sits in, if any.
        self.expiry: int | None = None
        self.started = 0.0


def writer_of(admission: Admission) -> Writer:
    """Who a session's pushes are attributed to."""
    return Writer(admission.subject, admission.instance_id or "", admission.reason)


def _info(connection: WsConnection) -> SessionInfo:
    info = connection.admitted
    assert isinstance(info, SessionInfo)
    return info


class Sessions:
    """The open WebSocket sessions of one gateway."""

    def __init__(
        self,
        settings: LiveConfig,
        engine: SyncEngine,
        push_gate: PushGate,
        pull_gate: PullGate | None = None,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._push_gate = push_gate
        self._pull_gate = pull_gate
        self.counters = SessionCounters()
        self._open: set[WsConnection] = set()
        self._expiries: dict[int, set[WsConnection]] = {}
        self._sweepers: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._sweepers.append(loop.create_task(self._sweep_expiries()))
        self._sweepers.append(loop.create_task(self._sweep_keepalive()))

    def stop(self) -> None:
        for sweeper in self._sweepers:
            sweeper.cancel()
        self._sweepers.clear()

    def sessions(self) -> list[WsConnection]:
        """Open WebSocket sessions."""
        return [c for c in self._open if c.open]

    def describe(self) -> list[SessionView]:
        """What an operator sees of each open session (``gateway sessions``)."""
        now, wall = time.monotonic(), time.time()
        views = []
        for connection in self.sessions():
            info = _info(connection)
            admission = info.admission
            views.append(
                SessionView(
                    store_id=info.context.store_id,
                    subject=admission.subject,
                    instance_id=admission.instance_id,
                    reason=admission.reason,
                    transport="ws",
                    remote_addr=info.context.remote_addr,
                    connected_at=wall - (now - info.started),
                    expires_at=admission.expires_at,
                )
            )
        return views

    def disconnect(
        self,
        *,
        store_id: str | None = None,
        subject: str | None = None,
        instance_id: str | None = None,
        reason: str,
    ) -> int:
        """Close the sessions matching every given filter with close code 4004; returns how
        many. At least one filter is required."""
        if store_id is None and subject is None and instance_id is None:
            raise ValueError("disconnect needs a store, a subject or an instance")
        closed = 0
        for connection in self.sessions():
            info = _info(connection)
            admission = info.admission
            if (
                (store_id is not None and info.context.store_id != store_id)
                or (subject is not None and admission.subject != subject)
                or (instance_id is not None and admission.instance_id != instance_id)
            ):
                continue
            logger.info(
                "closing store=%s subject=%s instance=%s: %s",
                info.context.store_id,
                admission.subject,
                admission.instance_id,
                reason,
            )
            connection.close(CloseCode.OPERATOR, reason)
            closed += 1
        return closed

    def by_store_and_subject(self) -> tuple[Counter[str], Counter[str]]:
        by_store: Counter[str] = Counter()
        by_subject: Counter[str] = Counter()
        for connection in self.sessions():
            info = _info(connection)
            by_store[info.context.store_id] += 1
            by_subject[info.admission.subject] += 1
        return by_store, by_subject

    # -- one session ----------------------------------------------------------------------

    def admitted(self, connection: WsConnection, admitted: Admitted) -> None:
        """Remember what the handshake admitted until the session opens (and after).

        Only the headers credentials come from (and ``server.forward_headers``) are kept, to
        re-check the session after a reload, so an idle connection does not hold every
        request header.
        """
        context = admitted.context
        forwarded = self._settings.current.server.forward_headers
        keep = (
            CREDENTIAL_HEADERS.union(name.lower() for name in forwarded)
            if forwarded
            else CREDENTIAL_HEADERS
        )
        kept = dataclasses.replace(
            context, headers={k: v for k, v in context.headers.items() if k in keep}
        )
        connection.admitted = SessionInfo(admitted.admission, kept)

    def open(self, connection: WsConnection) -> Peer:
        """The 101 is out: the session of ``connection`` starts."""
        info = _info(connection)
        store_id, admission = info.context.store_id, info.admission
        peer = Peer(
            connection,
            store_id,
            self._engine,
            settings=self._settings,
            counters=self.counters,
            # A partial, not a closure: one object per idle connection instead of three. It
            # reads the session's admission at each push: a re-check may have renewed it.
            before_push=functools.partial(self._push_gate, info),
            writer=writer_of(admission),
            pull_gate=self._pull_gate,
            session=info,
        )
        info.started = time.monotonic()
        log.later(
            logger,
            logging.INFO,
            "open transport=ws store=%s subject=%s instance=%s reason=%s token=%s remote=%s",
            store_id,
            admission.subject,
            admission.instance_id,
            admission.reason,
            admission.fingerprint,
            info.context.remote_addr,
        )
        self._schedule_expiry(connection, admission.expires_at)
        self._open.add(connection)
        self.counters.connections["ws"] += 1
        self.counters.connections_total["ws"] += 1
        return peer

    def closed(self, connection: WsConnection, session: Session | None) -> None:
        """The connection is gone; logs the session's end if it had one."""
        if not isinstance(session, Peer):
            return
        info = _info(connection)
        self._open.discard(connection)
        self.counters.connections["ws"] -= 1
        self._schedule_expiry(connection, None)
        log.later(
            logger,
            logging.INFO,
            "close transport=ws store=%s subject=%s instance=%s code=%s duration=%.1fs "
            "events_in=%d frames_out=%d remote=%s",
            info.context.store_id,
            info.admission.subject,
            info.admission.instance_id,
            connection.close_code,
            time.monotonic() - info.started,
            session.events_in,
            session.frames_out,
            info.context.remote_addr,
        )

    def http_opened(self) -> None:
        self.counters.connections["http"] += 1
        self.counters.connections_total["http"] += 1

    def http_closed(self) -> None:
        self.counters.connections["http"] -= 1

    # -- keepalive ------------------------------------------------------------------------

    async def _sweep_keepalive(self) -> None:
        """Keepalive for every open session from one task (see ``WsConnection.keepalive``).

        The settings are read on every tick, so a reload changes them for all sessions.
        """
        loop = asyncio.get_running_loop()
        while True:
            server_config = self._settings.current.server
            interval = server_config.ping_interval or 0.0
            timeout = server_config.ping_timeout or None
            tick = min(interval, timeout or interval) / 2 if interval else 1.0
            await asyncio.sleep(min(max(tick, 0.05), 5.0))
            if not interval:
                continue
            now = loop.time()
            for connection in tuple(self._open):
                connection.keepalive(now, interval, timeout)

    # -- credential expiry ----------------------------------------------------------------

    def _schedule_expiry(self, connection: WsConnection, expires_at: float | None) -> None:
        """The session lives while its credential would still be accepted.

        Expiries are kept in one-second buckets swept by a single task, instead of a timer
        handle per connection.
        """
        info = _info(connection)
        if info.expiry is not None:
            bucket = self._expiries.get(info.expiry)
            if bucket is not None:
                bucket.discard(connection)
                if not bucket:
                    del self._expiries[info.expiry]
            info.expiry = None
        if expires_at is not None:
            second = math.ceil(expires_at)
            self._expiries.setdefault(second, set()).add(connection)
            info.expiry = second

    async def _sweep_expiries(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_SWEEP_INTERVAL)
            now = time.time()
            for second in sorted(s for s in self._expiries if s <= now):
                for connection in self._expiries.pop(second):
                    info = _info(connection)
                    info.expiry = None
                    logger.info(
                        "closing store=%s subject=%s: token expired",
                        info.context.store_id,
                        info.admission.subject,
                    )
                    connection.close(CloseCode.TOKEN_EXPIRED, "token expired")

    # -- reload ---------------------------------------------------------------------------

    async def recheck(self, check: Recheck, *, why: str = "after reload") -> int:
        """After a reload (or a revocation): close sessions the policy now refuses; returns
        how many.

        The others get the expiry their credential has under the new policy, and the token
        claims the new push rules read.
        """
        closed = 0
        for connection in self.sessions():
            info = _info(connection)
            outcome = await check(info.context)
            if not connection.open:
                continue
            if isinstance(outcome, Refusal):
                expired = outcome.code is RefusalCode.TOKEN_EXPIRED
                code = CloseCode.TOKEN_EXPIRED if expired else CloseCode.FORBIDDEN
                logger.info(
                    "closing store=%s subject=%s %s: %s",
                    info.context.store_id,
                    info.admission.subject,
                    why,
                    outcome.code,
                )
                connection.close(code, outcome.code.lower())
                closed += 1
            else:
                if outcome.claims != info.admission.claims:
                    info.admission = dataclasses.replace(info.admission, claims=outcome.claims)
                self._schedule_expiry(connection, outcome.expires_at)
        return closed

    def apply_limits(self) -> None:
        """Give open sessions the current ``limits.max_message_bytes``."""
        max_size = self._settings.current.limits.max_message_bytes
        for connection in self._open:
            connection.set_max_size(max_size)
