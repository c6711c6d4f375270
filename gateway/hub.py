"""Live fan-out: the live pull subscriptions of each store, and publication to them.

A published batch is encoded once: its ``PullResponse`` items are shared by every
subscriber, and only the few bytes naming the request id differ per subscriber.

A subscription starts in catch-up mode, while its pull still streams the backlog: frames
published meanwhile wait in its own FIFO (bounded; overflow evicts the connection). When the
backlog is sent, :meth:`Subscription.go_live` flushes the FIFO and later frames go straight to
the connection. Everything here runs on the event loop thread, without awaiting, so a
publication reaches all subscribers before the next push of that store is admitted.
"""

from __future__ import annotations

from typing import Protocol

from gateway import frames


class Outbox(Protocol):
    """The writing side of one connection, as the hub needs it."""

    @property
    def send_limit(self) -> int:
        """Bytes that may wait for this connection before it counts as a slow consumer."""

    def write(self, frame: bytes) -> None:
        """Queue ``frame`` for sending, without waiting; evicts the peer if it is too slow."""

    def evict(self, reason: str) -> None:
        """Close the connection because it cannot keep up."""


class Subscription:
    """One live pull: (connection, request id) on one store."""

    __slots__ = (
        "_pending",
        "_pending_bytes",
        "attributed",
        "closed",
        "outbox",
        "prefix",
        "store_id",
    )

    def __init__(
        self, outbox: Outbox, store_id: str, rid_json: bytes, *, attributed: bool = False
    ) -> None:
        self.outbox = outbox
        self.store_id = store_id
        self.prefix = frames.chunk_prefix(rid_json)
        self._pending: list[bytes] | None = []
        self._pending_bytes = 0
        self.closed = False
        self.attributed = attributed
        """A service's pull: its events carry who pushed them."""

    def deliver(self, tail: bytes) -> None:
        if self.closed:
            return
        frame = self.prefix + tail
        if self._pending is None:
            self.outbox.write(frame)
            return
        self._pending.append(frame)
        self._pending_bytes += len(frame)
        if self._pending_bytes > self.outbox.send_limit:
            self.closed = True
            self._pending = []
            self.outbox.evict("slow consumer")

    def go_live(self) -> None:
        """The backlog is sent: flush what was published meanwhile, then send directly."""
        pending, self._pending = self._pending, None
        if pending and not self.closed:
            for frame in pending:
                self.outbox.write(frame)


class Hub:
    """Subscriptions per store on this node."""

    def __init__(self) -> None:
        self._stores: dict[str, set[Subscription]] = {}
        # Attributed subscriptions per store (most stores have none).
        self._attributed: dict[str, int] = {}

    def subscribe(self, sub: Subscription) -> None:
        subs = self._stores.setdefault(sub.store_id, set())
        if sub not in subs and sub.attributed:
            self._attributed[sub.store_id] = self._attributed.get(sub.store_id, 0) + 1
        subs.add(sub)

    def unsubscribe(self, sub: Subscription) -> None:
        sub.closed = True
        subs = self._stores.get(sub.store_id)
        if subs is not None and sub in subs:
            subs.discard(sub)
            if sub.attributed:
                left = self._attributed[sub.store_id] - 1
                if left:
                    self._attributed[sub.store_id] = left
                else:
                    del self._attributed[sub.store_id]
            if not subs:
                del self._stores[sub.store_id]

    def wants_attribution(self, store_id: str) -> bool:
        """Whether a live pull of ``store_id`` wants to know who pushed each event."""
        return store_id in self._attributed

    def subscriber_count(self, store_id: str | None = None) -> int:
        if store_id is not None:
            return len(self._stores.get(store_id, ()))
        return sum(len(subs) for subs in self._stores.values())

    def publish(
        self,
        store_id: str,
        entries: list[bytes],
        backend_id_json: bytes,
        attributed: list[bytes] | None = None,
    ) -> int:
        """Send one accepted batch to every live pull of ``store_id``; returns the frames sent.

        Args:
            entries: the batch's ``PullResponse`` entries, already encoded.
            backend_id_json: the store's backendId as a JSON string.
            attributed: the same entries with their writer in the metadata, for the
                attributed pulls (services); None when there are none.
        """
        subs = self._stores.get(store_id)
        if not subs or not entries:
            return 0
        tails = _tails(entries, backend_id_json)
        served = _tails(attributed, backend_id_json) if attributed is not None else tails
        sent = 0
        # Copy: delivering may evict a subscriber, which unsubscribes it.
        for sub in tuple(subs):
            chosen = served if sub.attributed else tails
            for tail in chosen:
                sub.deliver(tail)
            sent += len(chosen)
        return sent


def _tails(entries: list[bytes], backend_id_json: bytes) -> list[bytes]:
    return [
        frames.chunk_tail(frames.pull_item(page, frames.NO_MORE, backend_id_json))
        for page in frames.split_pages(entries, backend_id_json)
    ]
