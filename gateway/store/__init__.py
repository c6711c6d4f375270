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
from typing import Protocol

from gateway.errors import HeadMismatch, StoreError
from gateway.protocol import NewEvent

__all__ = [
    "EventStore",
    "HeadMismatch",
    "SharedEventStore",
    "StoreError",
    "StoreMeta",
    "StoredEvent",
    "new_backend_id",
]


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    parent: int
    created_ms: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StoreMeta:
    backend_id: str
    head: int


class EventStore(Protocol):
    """The storage contract every backend passes (``tests/store/test_contract.py``)."""

    async def open(self) -> None:
        """Create or migrate the schema and start background workers."""

    async def close(self) -> None:
        """Finish pending writes and release every resource."""

    async def ensure_store(self, store_id: str) -> StoreMeta:
        """Return the store's metadata, creating it with a fresh backendId on first use."""

    async def append(
        self, store_id: str, expected_head: int, events: Sequence[NewEvent], created_ms: int
    ) -> None:
        """Atomically check the head and append ``events``; durable when it returns.

        Raises:
            HeadMismatch: the store's head is not ``expected_head``; nothing was written.
            StoreError: the write failed; nothing was written.
        """

    async def read(self, store_id: str, after: int, upto: int, limit: int) -> list[StoredEvent]:
        """Events with ``after < seq <= upto`` in ascending order, at most ``limit``."""

    async def count(self, store_id: str, after: int, upto: int) -> int:
        """How many events have ``after < seq <= upto``."""

    async def check(self) -> None:
        """Raise StoreError unless the backend can serve requests (readiness)."""

    def forget(self, store_id: str) -> None:
        """Drop what is cached in memory about ``store_id`` (the engine unloaded it)."""


class SharedEventStore(EventStore, Protocol):
    """A backend that several nodes write to: it announces every commit."""

    def set_commit_listener(
        self, on_commit: Callable[[str, int], None], on_reconnect: Callable[[], None]
    ) -> None:
        """Call ``on_commit(store_id, head)`` for commits of any node (in any order, maybe
        twice, maybe never: callers reconcile with :meth:`heads`)."""

    async def heads(self, store_ids: Sequence[str]) -> dict[str, int]:
        """The current heads of ``store_ids``."""


def new_backend_id() -> str:
    """A nanoid-like identity: 21 URL-safe characters, 126 bits of entropy (spec §8)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
    return "".join(secrets.choice(alphabet) for _ in range(21))
