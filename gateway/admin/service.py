"""The operator's actions on one node: list, show, reset and delete stores; list and
disconnect sessions. Transport-neutral: the admin API and the tests call it directly.

Reset and delete go through the engine (:meth:`gateway.lifecycle.StoreLifecycle.retire`):
a push in flight finishes first, the store's sessions are closed (4004) on every node, and
their clients learn the new backendId when they reconnect.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from gateway.engine import SyncEngine
from gateway.hub import Hub
from gateway.logfile import ImportedEvent, ImportReader, LineError
from gateway.revocation import Revocation
from gateway.store import EventStore, StoredEvent, StoreInfo, StoreMeta, new_backend_id
from gateway.transport.sessions import Sessions, SessionView

audit = logging.getLogger("gateway.audit")

T = TypeVar("T")

MAX_PAGE = 1000
# Events appended per write while importing.
IMPORT_BATCH = 1000
# Where an import builds its store until it is complete: never listed, never served, and
# removed at the next start if the server stopped half-way. A control character no app puts
# in a storeId starts it (not NUL, which PostgreSQL text refuses).
STAGING_PREFIX = "\x01gateway-import:"


class StoreExists(Exception):
    """An import into a store that exists already."""


@dataclass(frozen=True, slots=True)
class Imported:
    store_id: str
    backend_id: str
    head: int


def store_view(info: StoreInfo, live_subscribers: int) -> dict[str, Any]:
    """A store as the admin API shows it (camelCase, like the sync protocol)."""
    return {
        "storeId": info.store_id,
        "backendId": info.backend_id,
        "head": info.head,
        "bytes": info.bytes,
        "createdAt": info.created_ms,
        "lastWriteAt": info.last_write_ms,
        "liveSubscribers": live_subscribers,
    }


def session_view(view: SessionView) -> dict[str, Any]:
    data = asdict(view)
    return {
        "storeId": data["store_id"],
        "subject": data["subject"],
        "instanceId": data["instance_id"],
        "reason": data["reason"],
        "transport": data["transport"],
        "remoteAddr": data["remote_addr"],
        "connectedAt": round(data["connected_at"], 3),
        "expiresAt": data["expires_at"],
    }


class AdminService:
    """What an operator can do to this node (and, through the shared log, to the others)."""

    def __init__(
        self,
        store: EventStore,
        engine: SyncEngine,
        hub: Hub,
        sessions: Sessions,
        *,
        revoke: Callable[[Revocation], Awaitable[int]],
    ) -> None:
        """``revoke`` records an entry and closes the sessions it covers (the composition
        root's, which owns the auth gate)."""
        self._store = store
        self._engine = engine
        self._hub = hub
        self._sessions = sessions
        self._revoke = revoke

    async def stores(
        self, *, prefix: str = "", after: str = "", limit: int = 100
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of stores in storeId order (``limit`` capped at :data:`MAX_PAGE`), and the
        ``after`` of the next page (None after the last)."""
        limit = max(1, min(limit, MAX_PAGE))
        infos = await self._store.list_stores(prefix=prefix, after=after, limit=limit)
        page = [
            store_view(i, self._hub.subscriber_count(i.store_id))
            for i in infos
            if not i.store_id.startswith(STAGING_PREFIX)
        ]
        return page, infos[-1].store_id if len(infos) == limit else None

    async def drop_unfinished_imports(self) -> int:
        """Remove what imports interrupted by a stop left (at start); how many."""
        unfinished = await self._store.list_stores(prefix=STAGING_PREFIX, limit=MAX_PAGE)
        for info in unfinished:
            await self._store.delete_store(info.store_id)
        return len(unfinished)

    async def import_store(
        self,
        store_id: str,
        lines: AsyncIterator[bytes],
        *,
        backend_id: str | None,
        actor: str,
    ) -> Imported:
        """Create ``store_id`` from a JSON-lines log (:mod:`gateway.logfile`), all or nothing.

        The log is written to a hidden staging store while it is read and checked; only a
        complete, valid log is renamed into place, and nobody can load the store meanwhile.
        It keeps the given backendId (else the lines', else a new one), so clients that synced
        it elsewhere continue.

        Raises:
            StoreExists: the store exists (nothing written).
            LineError: a line is malformed or breaks the chain (nothing written).
        """
        staging = f"{STAGING_PREFIX}{store_id}:{secrets.token_hex(4)}"

        async def change() -> Imported:
            if await self._store.store_info(store_id) is not None:
                raise StoreExists(store_id)
            reader = ImportReader(backend_id, now_ms=int(time.time() * 1000))
            created = False
            try:
                batch: list[ImportedEvent] = []
                async for raw in lines:
                    item = reader.read(raw)
                    if item is None:
                        continue
                    if not created:
                        created = await self._create(staging, reader.backend_id)
                    if batch and (
                        (item.created_ms, item.writer) != (batch[0].created_ms, batch[0].writer)
                        or len(batch) >= IMPORT_BATCH
                    ):
                        await self._append(staging, batch)
                        batch = []
                    batch.append(item)
                if not created:
                    created = await self._create(staging, reader.backend_id)
                if batch:
                    await self._append(staging, batch)
                if not await self._store.rename_store(staging, store_id):
                    raise StoreExists(store_id)
            except BaseException:
                if created:
                    await self._store.delete_store(staging)
                raise
            meta = await self._store.ensure_store(store_id)
            return Imported(store_id, meta.backend_id, meta.head)

        try:
            imported = await self._engine.retire(store_id, "import", change)
        except (StoreExists, LineError) as exc:
            audit.info(
                "action=store.import store=%s actor=%s outcome=refused why=%s",
                store_id,
                actor,
                exc,
            )
            raise
        assert imported is not None
        audit.info(
            "action=store.import store=%s actor=%s outcome=done head=%d backend=%s",
            store_id,
            actor,
            imported.head,
            imported.backend_id,
        )
        return imported

    async def _create(self, staging: str, backend_id: str | None) -> bool:
        if not await self._store.create_store(staging, backend_id or new_backend_id()):
            raise StoreExists(staging)
        return True

    async def _append(self, staging: str, batch: list[ImportedEvent]) -> None:
        events = [item.event for item in batch]
        first = batch[0]
        await self._store.append(staging, events[0].parent, events, first.created_ms, first.writer)

    async def store(self, store_id: str) -> dict[str, Any] | None:
        info = await self._store.store_info(store_id)
        if info is None:
            return None
        return store_view(info, self._hub.subscriber_count(store_id))

    async def read(self, store_id: str, after: int, upto: int, limit: int) -> list[StoredEvent]:
        """Events ``after < seq <= upto`` of the store's log (an export's step)."""
        return await self._store.read(store_id, after, upto, limit, writers=True)

    async def reset(self, store_id: str, *, actor: str) -> StoreMeta | None:
        """Empty the store's log under a new backendId; None if there is no such store."""
        return await self._retire(
            store_id, "reset", lambda: self._store.reset_store(store_id), actor
        )

    async def delete(self, store_id: str, *, actor: str) -> bool:
        """Remove the store; False if there was none."""
        deleted = await self._retire(
            store_id, "delete", lambda: self._store.delete_store(store_id), actor
        )
        return bool(deleted)

    async def _retire(
        self, store_id: str, what: str, change: Callable[[], Awaitable[T]], actor: str
    ) -> T | None:
        done = await self._engine.retire(store_id, what, change)
        audit.info(
            "action=store.%s store=%s actor=%s outcome=%s",
            what,
            store_id,
            actor,
            "done" if done else "not_found",
        )
        return done

    async def revoke(self, entry: Revocation) -> int:
        """Record a revocation (durably, for every node) and close the sessions it covers on
        this node; the others close theirs when they hear of it. Returns how many closed."""
        closed = await self._revoke(entry)
        audit.info(
            "action=token.revoke subject=%s before=%s jti=%s expires=%.0f actor=%s closed=%d",
            entry.subject,
            entry.before,
            entry.token_id,
            entry.expires_at,
            entry.actor,
            closed,
        )
        return closed

    async def revocations(self, now: float) -> list[Revocation]:
        """The revocations in force."""
        return await self._store.list_revocations(now)

    def sessions(
        self,
        *,
        store_id: str | None = None,
        subject: str | None = None,
        instance_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """This node's open sessions matching every given filter."""
        return [
            session_view(view)
            for view in self._sessions.describe()
            if (store_id is None or view.store_id == store_id)
            and (subject is None or view.subject == subject)
            and (instance_id is None or view.instance_id == instance_id)
        ]

    async def disconnect(
        self,
        *,
        store_id: str | None = None,
        subject: str | None = None,
        instance_id: str | None = None,
        actor: str,
    ) -> int:
        """Close the sessions matching every given filter (4004) on this node, and ask the
        other nodes sharing the log to close theirs; how many closed here."""
        closed = self.disconnect_here(
            {"store": store_id, "subject": subject, "instance": instance_id}
        )
        announce = getattr(self._store, "announce_disconnect", None)
        if announce is not None:
            filters = {"store": store_id, "subject": subject, "instance": instance_id}
            await announce({k: v for k, v in filters.items() if v is not None})
        audit.info(
            "action=sessions.disconnect store=%s subject=%s instance=%s actor=%s closed=%d",
            store_id,
            subject,
            instance_id,
            actor,
            closed,
        )
        return closed

    def disconnect_here(self, filters: Mapping[str, str | None]) -> int:
        """Close this node's sessions matching ``filters`` (``store``, ``subject``,
        ``instance``); what another node's disconnect does here."""
        return self._sessions.disconnect(
            store_id=filters.get("store"),
            subject=filters.get("subject"),
            instance_id=filters.get("instance"),
            reason="disconnected by operator",
        )
