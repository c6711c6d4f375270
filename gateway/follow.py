"""Commits of other nodes (shared backends): bringing what this node published up to the log.

A shared store (PostgreSQL) announces every commit of any node; :class:`Follower` publishes
the events this node has not published yet, in order, under the store's lock: from the
announcement itself when it carries them and they continue exactly what the node published
(in the same log: same backendId), else read from the log. Late, duplicated, reordered or
lost announcements cannot cause a gap or a duplicate (lost ones are found by
:meth:`Follower.reconcile`). :class:`~gateway.engine.SyncEngine`
is a Follower; this module holds the part of it that only shared backends use.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway import frames
from gateway.errors import StoreError
from gateway.hub import Hub
from gateway.metrics import EngineCounters
from gateway.store import Carried, EventStore, SharedEventStore, StoredEvent

logger = logging.getLogger("gateway.engine")

# Rows fetched from the store per read during catch-up.
READ_BATCH = 1000

# A group's announced stores are read in one query when each is at most this far behind.
GROUP_READ_SPAN = 100


@dataclass(slots=True)
class StoreState:
    store_id: str
    backend_id: str
    backend_id_json: bytes
    head: int
    lock: asyncio.Lock
    # The Chunk tail of an empty, complete backlog (a pull that is up to date).
    empty_tail: bytes = b""
    # time.monotonic() of the last use: unloading waits until a store has been idle.
    used: float = 0.0
    # Reset or deleted by an operator: whoever still holds this state must let go of it.
    retired: bool = False
    # Pipelined pushes (gateway.pipeline): done when the last one admitted is answered and
    # published (each finishes after the one before it), and the head it leads to.
    tail: asyncio.Future[None] | None = None
    tail_head: int = 0

    @property
    def in_flight(self) -> bool:
        """Whether a pipelined push is admitted and not yet finished."""
        return self.tail is not None and not self.tail.done()

    async def settled(self) -> None:
        """Wait until the pipelined pushes admitted so far are finished."""
        while (tail := self.tail) is not None and not tail.done():
            await asyncio.wait((tail,))


class Follower:
    """The shared-backend half of the sync engine (a mixin: the engine owns the state)."""

    store: EventStore
    hub: Hub
    counters: EngineCounters
    shared: bool
    _states: dict[str, StoreState]
    _loading: dict[str, asyncio.Future[StoreState]]
    _heard: dict[str, int]
    # Stores this node reset or deleted itself whose announcement it has not heard yet: an
    # announcement committed before the change may still be on its way, and its events
    # could match a log imported since under the old backendId. Read from the log instead.
    _fenced: set[str]
    _reconcile_interval: float
    _background: set[asyncio.Task[None]]

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def on_commit(self, store_id: str, head: int) -> None:
        """A commit of ``store_id`` up to ``head`` was announced (by any node)."""
        state = self._states.get(store_id)
        if state is None:
            if store_id in self._loading:
                # Its head was read before this commit: catch up once it is loaded.
                self._heard[store_id] = max(head, self._heard.get(store_id, 0))
            return
        if head > state.head:
            self._spawn(self._catch_up(state, head))

    def on_commits(
        self, commits: list[tuple[str, int]], carried: Mapping[str, Carried] | None = None
    ) -> None:
        """A group's commits were announced (by another node). A store whose announced
        events (``carried``) continue exactly what this node published, in the log it
        loaded, is published from them at once; the stores this node is behind on otherwise
        are read together (one query), the others as :meth:`on_commit` does."""
        behind: list[tuple[StoreState, int]] = []
        latest: dict[str, int] = {}
        for store_id, head in commits:  # a store may be listed more than once: its last head
            latest[store_id] = max(head, latest.get(store_id, head))
        for store_id, head in latest.items():
            state = self._states.get(store_id)
            if (
                state is None
                or state.lock.locked()  # most likely this node's own push, about to publish
                or state.in_flight
                or self.hub.wants_attribution(store_id)
            ):
                self.on_commit(store_id, head)
            elif head <= state.head or (
                carried and self._publish_carried(state, head, carried.get(store_id))
            ):
                continue
            elif head - state.head > GROUP_READ_SPAN:
                self.on_commit(store_id, head)
            else:
                behind.append((state, head))
        if len(behind) == 1:
            self._spawn(self._catch_up(*behind[0]))
        elif behind:
            self._spawn(self._catch_up_group(behind))

    def _publish_carried(self, state: StoreState, head: int, carried: Carried | None) -> bool:
        """Publish a store's announced events, up to ``head``, when they continue exactly
        what this node published (``state.head + 1`` on, in the log it loaded: same
        backendId); False when they do not (the log is read instead).

        Called with the lock free and nobody holding it (checked by the caller): publishing
        without awaiting anything is publishing under the lock, as nothing else runs
        meanwhile; whoever takes the lock next sees the new head.
        """
        if (
            carried is None
            or carried.backend_id != state.backend_id
            or state.retired
            or state.store_id in self._fenced
        ):
            return False
        events = carried.events  # consecutive (checked when decoded)
        if events[-1].seq != head:
            return False
        skip = state.head + 1 - events[0].seq  # already published (a late duplicate)
        if skip < 0 or skip >= len(events):
            return False  # a gap (an announcement missed or late): the log tells
        try:
            self._publish_rows(state, events[skip:] if skip else events)
        except Exception:
            logger.exception("store %r: publishing announced events failed", state.store_id)
        return True

    async def _catch_up_group(self, behind: list[tuple[StoreState, int]]) -> None:
        """Read the new events of several stores at once, then publish each store's under its
        lock: only rows that continue what it published (it may have moved meanwhile); the
        rest, if any, the usual way (:meth:`_publish_range`)."""
        read_ranges = getattr(self.store, "read_ranges", None)
        rows: dict[str, list[StoredEvent]] = {}
        if read_ranges is not None:
            try:
                rows = await read_ranges([(s.store_id, s.head, head) for s, head in behind])
            except StoreError as exc:
                logger.info("reading a group's commits failed (%s); one store at a time", exc)
        await asyncio.gather(*(self._publish_read(state, head, rows) for state, head in behind))

    async def _publish_read(
        self, state: StoreState, head: int, rows: dict[str, list[StoredEvent]]
    ) -> None:
        async with state.lock:
            try:
                fresh = [r for r in rows.get(state.store_id, ()) if r.seq > state.head]
                if (
                    fresh
                    and fresh[0].seq == state.head + 1
                    and fresh[-1].seq - fresh[0].seq == len(fresh) - 1
                    and not state.retired
                    and not self.hub.wants_attribution(state.store_id)
                ):
                    self._publish_rows(state, fresh)
                await self._publish_range(state, head)
            except StoreError as exc:
                logger.warning("store %r: catching up to %d failed: %s", state.store_id, head, exc)
            except Exception:
                logger.exception("store %r: catching up to %d failed", state.store_id, head)

    def on_reconnect(self) -> None:
        """Notifications may have been lost: compare every loaded store with the log. (The
        ones committed before the listening connection came back are gone: no fence holds.)"""
        self._fenced.clear()
        self._spawn(self.reconcile())

    def on_own_change(self, store_id: str) -> None:
        """This node's own reset or delete of ``store_id`` was announced back to it."""
        self._fenced.discard(store_id)

    async def reconcile(self) -> None:
        if not self._states or not self.shared:
            return
        shared: SharedEventStore = self.store  # type: ignore[assignment]
        try:
            heads = await shared.heads(tuple(self._states))
        except StoreError as exc:
            logger.warning("reconcile failed: %s", exc)
            return
        for store_id, head in heads.items():
            self.on_commit(store_id, head)

    async def reconcile_forever(self) -> None:
        """Catch commits whose notification never came (shared backends)."""
        while True:
            await asyncio.sleep(self._reconcile_interval)
            await self.reconcile()

    async def _catch_up_to_log(self, state: StoreState) -> None:
        shared: SharedEventStore = self.store  # type: ignore[assignment]
        heads = await shared.heads((state.store_id,))
        async with state.lock:
            await self._publish_range(state, heads.get(state.store_id, state.head))

    async def _resync(self, state: StoreState) -> None:
        """Publish whatever the log holds beyond this node's head (after an append whose
        outcome was unknown); the periodic reconcile retries if the log cannot be read."""
        shared: SharedEventStore = self.store  # type: ignore[assignment]
        try:
            heads = await shared.heads((state.store_id,))
        except StoreError as exc:
            logger.warning("store %r: resync failed: %s", state.store_id, exc)
            return
        await self._catch_up(state, heads.get(state.store_id, state.head))

    async def _catch_up(self, state: StoreState, target: int) -> None:
        if state.in_flight:
            # Most likely this node's own pushes, which publish their events themselves.
            tail = state.tail
            assert tail is not None
            await asyncio.wait((tail,))
        async with state.lock:
            try:
                await self._publish_range(state, target)
            except StoreError as exc:
                # The next notification or reconcile retries; nothing was published twice.
                logger.warning(
                    "store %r: catching up to %d failed: %s", state.store_id, target, exc
                )
            except Exception:
                logger.exception("store %r: catching up to %d failed", state.store_id, target)

    async def _publish_range(self, state: StoreState, target: int) -> None:
        """Publish committed events ``(state.head, target]`` read from the log, in order.

        Called with ``state.lock`` held; advances ``state.head`` as it goes.
        """
        while state.head < target and not state.retired:
            attributing = self.hub.wants_attribution(state.store_id)
            rows = await self.store.read(
                state.store_id, state.head, target, READ_BATCH, writers=attributing
            )
            if not rows:
                # The head moved but no row is visible yet; a later notification retries.
                return
            self._publish_rows(state, rows, attributing)

    def _publish_rows(
        self, state: StoreState, rows: list[StoredEvent], attributing: bool = False
    ) -> None:
        """Publish ``rows`` (consecutive, from ``state.head + 1``, read with their writers
        when ``attributing``); advances ``state.head``."""
        entries = []
        meta_cache: dict[int, bytes] = {}
        for row in rows:
            meta = meta_cache.get(row.created_ms)
            if meta is None:
                meta = meta_cache[row.created_ms] = frames.metadata(row.created_ms)
            entries.append(frames.event_entry(row.data, meta))
        attributed = None
        if attributing:
            attributed = [
                frames.event_entry(
                    row.data,
                    frames.metadata(
                        row.created_ms, None if row.writer is None else row.writer.encoded()
                    ),
                )
                for row in rows
            ]
        self.counters.frames_delivered += self.hub.publish(
            state.store_id, entries, state.backend_id_json, attributed
        )
        state.head = rows[-1].seq
