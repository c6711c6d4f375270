"""Event-log storage: one interface, several backends, one contract test suite.

A backend keeps, per ``storeId``, a totally ordered log of events keyed by ``seqNum``, the
store's ``backendId`` and its head. It enforces the head check itself (an append names the
head it expects and fails with :class:`HeadMismatch` otherwise), so correctness never depends
on the caller's locking alone. Live fan-out is not the store's business: see ``gateway.hub``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from gateway.errors import HeadMismatch, StoreError
from gateway.protocol import NewEvent
from gateway.revocation import Revocation

__all__ = [
    "EventStore",
    "HeadMismatch",
    "SharedEventStore",
    "StoreError",
    "StoreInfo",
    "StoreMeta",
    "StoredEvent",
    "Writer",
    "new_backend_id",
]


@dataclass(frozen=True, slots=True)
class Writer:
    """Who pushed an event (attribution): the session's subject, instanceId and the auth
    decision's reason (``jwt``, ``jwt_grace``, ``bypass``, ``dev_token``, ``anonymous``, ...).
    The time is the event's ``created_ms``, when the server accepted it."""

    subject: str
    instance_id: str
    reason: str

    def encoded(self) -> bytes:
        """As services see it in an event's metadata: ``{"subject", "instanceId", "reason"}``."""
        return orjson.dumps(
            {"subject": self.subject, "instanceId": self.instance_id, "reason": self.reason}
        )


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    parent: int
    created_ms: int
    data: bytes
    # Who pushed it (only when read with ``writers=True``; None for events stored before
    # attribution existed, or pushed without one).
    writer: Writer | None = None


@dataclass(frozen=True, slots=True)
class Carried:
    """A store's events carried by a shared backend's commit announcement (so a node need
    not read them): consecutive, ending at the announced head, in the log ``backend_id``."""

    backend_id: str
    events: list[StoredEvent]


@dataclass(frozen=True, slots=True)
class StoreMeta:
    backend_id: str
    head: int


@dataclass(frozen=True, slots=True)
class StoreInfo:
    """What the operator sees of a store (``gateway stores``, the admin API).

    Attributes:
        store_id: The store.
        backend_id: The identity of its log (changes on reset).
        head: The seqNum of its last event (0: empty).
        bytes: The size of its events as stored.
        created_ms: When it was created (or last reset), in ms since the epoch.
        last_write_ms: When its last event was written, None if it has none.
    """

    store_id: str
    backend_id: str
    head: int
    bytes: int
    created_ms: int
    last_write_ms: int | None


class EventStore(Protocol):
    """The storage contract every backend passes (``tests/store/test_contract.py``)."""

    async def open(self) -> None:
        """Create or migrate the schema and start background workers."""

    async def close(self) -> None:
        """Finish pending writes and release every resource."""

    async def ensure_store(self, store_id: str) -> StoreMeta:
        """Return the store's metadata, creating it with a fresh backendId on first use."""

    async def append(
        self,
        store_id: str,
        expected_head: int,
        events: Sequence[NewEvent],
        created_ms: int,
        writer: Writer | None = None,
    ) -> None:
        """Atomically check the head and append ``events`` (pushed by ``writer``); durable
        when it returns.

        Raises:
            HeadMismatch: the store's head is not ``expected_head``; nothing was written.
            StoreError: the write failed; nothing was written.
        """

    async def read(
        self, store_id: str, after: int, upto: int, limit: int, *, writers: bool = False
    ) -> list[StoredEvent]:
        """Events with ``after < seq <= upto`` in ascending order, at most ``limit``; with
        ``writers``, each with who pushed it (the sync path does not need it)."""

    async def count(self, store_id: str, after: int, upto: int) -> int:
        """How many events have ``after < seq <= upto``."""

    async def check(self) -> None:
        """Raise StoreError unless the backend can serve requests (readiness)."""

    def forget(self, store_id: str) -> None:
        """Drop what is cached in memory about ``store_id`` (the engine unloaded it)."""

    # -- the operator's catalog (gateway.admin) --------------------------------------------

    async def list_stores(
        self, *, prefix: str = "", after: str = "", limit: int = 100
    ) -> list[StoreInfo]:
        """Stores whose id starts with ``prefix`` and sorts after ``after`` (a page), in
        storeId order (byte order of the UTF-8 text), at most ``limit``."""

    async def store_info(self, store_id: str) -> StoreInfo | None:
        """One store, None if it does not exist (never creates it)."""

    async def reset_store(self, store_id: str) -> StoreMeta | None:
        """Empty the store's log and give it a new backendId, atomically; None if it does not
        exist. Appends that expected the old head fail from then on."""

    async def delete_store(self, store_id: str) -> bool:
        """Remove the store and its log; the next ``ensure_store`` creates a new one with a new
        backendId. False if it did not exist."""

    async def create_store(self, store_id: str, backend_id: str) -> bool:
        """Create an empty store with the given backendId; False if it exists already."""

    async def rename_store(self, store_id: str, new_id: str) -> bool:
        """Give a store (and its log) another storeId, atomically; False if ``new_id`` exists
        (nothing changes then)."""

    # -- revoked tokens (gateway.revocation) --------------------------------------------------

    async def add_revocation(self, entry: Revocation) -> None:
        """Record ``entry`` durably (and forget entries expired by its ``created_at``)."""

    async def list_revocations(self, now: float) -> list[Revocation]:
        """The entries still in force at ``now``."""


class SharedEventStore(EventStore, Protocol):
    """A backend that several nodes write to: it announces every commit."""

    def set_commit_listener(
        self,
        on_commit: Callable[[str, int], None],
        on_reconnect: Callable[[], None],
        on_retired: Callable[[str, str], None] | None = None,
    ) -> None:
        """Call ``on_commit(store_id, head)`` for commits of any node (in any order, maybe
        twice, maybe never: callers reconcile with :meth:`heads`), ``on_reconnect()`` when
        announcements may have been lost, and ``on_retired(store_id, "reset" | "delete")``
        when another node reset or deleted a store."""

    async def heads(self, store_ids: Sequence[str]) -> dict[str, int]:
        """The current heads of ``store_ids``."""


class PipelinedEventStore(Protocol):
    """A backend that takes a store's next append before the previous one committed."""

    def enqueue(
        self,
        store_id: str,
        expected_head: int,
        events: Sequence[NewEvent],
        created_ms: int,
        writer: Writer | None = None,
    ) -> Any:
        """Queue an append (written after the store's earlier ones, failing if they fail)."""

    async def settle(self, job: Any) -> None:
        """Wait for a queued append's outcome (as ``append`` reports it)."""


def new_backend_id() -> str:
    """A nanoid-like identity: 21 URL-safe characters, 126 bits of entropy (spec §8)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
    return "".join(secrets.choice(alphabet) for _ in range(21))
