"""The sync engine: push admission and pull catch-up over a store backend and the hub.

Transport-neutral: the WebSocket and HTTP glue both call it. Its guarantees (spec §5.5, §6.3):

- Pushes to one store are serialised by a per-store lock. Inside it: head check, durable
  append, head advance and publication to every live pull, with no await after the append,
  so each accepted batch is published before the next push is admitted.
- Admission runs in a task of its own, shielded from the pushing connection: a client that
  disconnects or interrupts mid-push cannot stop a written batch from being published.
- A live pull reads the head and registers its subscription without awaiting in between;
  its backlog is ``(cursor, head]`` and every later batch reaches its FIFO: no gap, no
  duplicate at the handoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from gateway import protocol
from gateway.hub import Hub, Subscription
from gateway.metrics import Metrics
from gateway.protocol import NewEvent, PullRequest, PushRequest
from gateway.store import EventStore, HeadMismatch, StoreError

logger = logging.getLogger(__name__)

# Rows fetched from the store per read during catch-up.
READ_BATCH = 1000

ErrorDict = dict[str, Any]


@dataclass(slots=True)
class StoreState:
    store_id: str
    backend_id: str
    backend_id_json: bytes
    head: int
    lock: asyncio.Lock


@dataclass(frozen=True, slots=True)
class Backlog:
    """What one pull must send before it is live: events with ``after < seq <= upto``."""

    state: StoreState
    after: int
    upto: int


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class SyncEngine:
    def __init__(self, store: EventStore, hub: Hub, metrics: Metrics | None = None) -> None:
        self.store = store
        self.hub = hub
        self.metrics = metrics or Metrics()
        self.counters = self.metrics.counters
        self._states: dict[str, StoreState] = {}
        self._loading: dict[str, asyncio.Future[StoreState]] = {}
        self._admissions: set[asyncio.Task[ErrorDict | None]] = set()

    @property
    def stores_loaded(self) -> int:
        return len(self._states)

    async def state(self, store_id: str) -> StoreState:
        """The in-memory state of a store, loading (or creating) it on first use."""
        state = self._states.get(store_id)
        if state is not None:
            return state
        loading = self._loading.get(store_id)
        if loading is None:
            loading = asyncio.get_running_loop().create_future()
            self._loading[store_id] = loading
            try:
                meta = await self.store.ensure_store(store_id)
            except BaseException as exc:
                del self._loading[store_id]
                loading.set_exception(exc)
                # Retrieve it so a loader that nobody else awaits logs no warning.
                loading.exception()
                raise
            state = StoreState(
                store_id=store_id,
                backend_id=meta.backend_id,
                backend_id_json=orjson.dumps(meta.backend_id),
                head=meta.head,
                lock=asyncio.Lock(),
            )
            self._states[store_id] = state
            del self._loading[store_id]
            loading.set_result(state)
            return state
        return await asyncio.shield(loading)

    # -- push -----------------------------------------------------------------------------

    async def push(self, request: PushRequest) -> ErrorDict | None:
        """Admit a pushed batch; None on success, else the typed error to fail with."""
        batch = request.batch
        if not batch:
            return None
        problem = protocol.chain_error(batch)
        if problem is not None:
            self.counters.pushes_rejected["invalid_batch"] += 1
            return protocol.unknown_error(problem, "invalid batch")
        try:
            state = await self.state(request.store_id)
        except StoreError:
            logger.exception("store %r could not be opened", request.store_id)
            self.counters.pushes_rejected["storage"] += 1
            return protocol.unknown_error("storage unavailable", "push")
        if request.backend_id is not None and request.backend_id != state.backend_id:
            self.counters.pushes_rejected["backend_mismatch"] += 1
            return protocol.backend_mismatch(state.backend_id, request.backend_id)
        task = asyncio.get_running_loop().create_task(self._admit(state, batch))
        self._admissions.add(task)
        task.add_done_callback(self._admissions.discard)
        return await asyncio.shield(task)

    async def _admit(self, state: StoreState, batch: list[NewEvent]) -> ErrorDict | None:
        async with state.lock:
            parent = batch[0].parent
            if parent != state.head:
                self.counters.pushes_rejected["server_ahead"] += 1
                return protocol.server_ahead(state.head, parent)
            created = now_ms()
            try:
                await self.store.append(state.store_id, state.head, batch, created)
            except HeadMismatch as exc:
                # Another writer (another node) moved the head: adopt it.
                state.head = exc.head
                self.counters.pushes_rejected["server_ahead"] += 1
                return protocol.server_ahead(exc.head, parent)
            except StoreError as exc:
                logger.error("append to store %r failed: %s", state.store_id, exc)
                self.counters.pushes_rejected["storage"] += 1
                return protocol.unknown_error("storage unavailable", "push")
            state.head = batch[-1].seq
            started = time.perf_counter()
            meta = protocol.metadata(created)
            entries = [protocol.event_entry(event.data, meta) for event in batch]
            sent = self.hub.publish(state.store_id, entries, state.backend_id_json)
            self.metrics.fanout_latency.observe(time.perf_counter() - started)
            counters = self.counters
            counters.frames_delivered += sent
            counters.pushes_accepted += 1
            counters.events_accepted += len(batch)
        return None

    async def drain(self) -> None:
        """Wait until every admitted push is written and published (for shutdown)."""
        while self._admissions:
            await asyncio.wait(tuple(self._admissions))

    # -- pull -----------------------------------------------------------------------------

    async def open_pull(
        self, request: PullRequest, subscription: Subscription | None = None
    ) -> Backlog | ErrorDict:
        """Check the cursor, fix the backlog and (for a live pull) subscribe, atomically."""
        state = await self.state(request.store_id)
        cursor = request.cursor
        if cursor is not None and cursor.backend_id != state.backend_id:
            return protocol.backend_mismatch(state.backend_id, cursor.backend_id)
        # No await between reading the head and subscribing: the handoff point.
        backlog = Backlog(state, cursor.seq if cursor is not None else 0, state.head)
        if subscription is not None:
            self.hub.subscribe(subscription)
        return backlog

    async def backlog_items(self, backlog: Backlog) -> AsyncIterator[bytes]:
        """The backlog as serialised ``PullResponse`` items; the last is always ``NoMore``."""
        state = backlog.state
        bid = state.backend_id_json
        after, upto = backlog.after, backlog.upto
        total = await self.store.count(state.store_id, after, upto) if after < upto else 0
        if total == 0:
            yield protocol.pull_item([], protocol.NO_MORE, bid)
            return
        sent = 0
        meta_cache: dict[int, bytes] = {}
        while after < upto and sent < total:
            rows = await self.store.read(state.store_id, after, upto, READ_BATCH)
            if not rows:
                break
            after = rows[-1].seq
            entries = []
            for row in rows:
                meta = meta_cache.get(row.created_ms)
                if meta is None:
                    if len(meta_cache) > 64:
                        meta_cache.clear()
                    meta = meta_cache[row.created_ms] = protocol.metadata(row.created_ms)
                entries.append(protocol.event_entry(row.data, meta))
            for page in protocol.split_pages(entries, bid):
                sent += len(page)
                remaining = total - sent
                info = protocol.more_known(remaining) if remaining > 0 else protocol.NO_MORE
                yield protocol.pull_item(page, info, bid)
        if sent < total:
            # The log held fewer rows than counted; never leave the client without NoMore.
            logger.error("store %r: backlog shorter than counted", state.store_id)
            yield protocol.pull_item([], protocol.NO_MORE, bid)
