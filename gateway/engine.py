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

import orjson

from gateway import frames, protocol
from gateway.errors import (
    BackendIdMismatch,
    CommitUnknown,
    HeadMismatch,
    RpcFailure,
    ServerAhead,
    StoreError,
    UnknownFailure,
)
from gateway.follow import READ_BATCH, Follower, StoreState
from gateway.hub import Hub, Subscription
from gateway.lifecycle import RetiredHook, StoreLifecycle
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline, now_ms
from gateway.protocol import NewEvent, PullRequest, PushRequest
from gateway.store import EventStore, PipelinedEventStore, SharedEventStore, Writer

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Backlog:
    """What one pull must send before it is live: events with ``after < seq <= upto``."""

    state: StoreState
    after: int
    upto: int


class SyncEngine(Follower, StoreLifecycle, Pipeline):
    """Push admission and pull catch-up of one node (commits of other nodes: Follower)."""

    def __init__(
        self,
        store: EventStore,
        hub: Hub,
        metrics: Metrics | None = None,
        *,
        reconcile_interval: float = 5.0,
    ) -> None:
        self.store = store
        self.hub = hub
        self.metrics = metrics or Metrics()
        self.counters = self.metrics.counters
        self._states: dict[str, StoreState] = {}
        self._loading: dict[str, asyncio.Future[StoreState]] = {}
        self._retiring: dict[str, asyncio.Future[None]] = {}
        self.on_retired: RetiredHook | None = None
        """Called after a store was reset or deleted (here or on another node)."""
        self._admissions: set[asyncio.Task[RpcFailure | None]] = set()
        self._background: set[asyncio.Task[None]] = set()
        # Commits announced while a store was loading (shared backends).
        self._heard: dict[str, int] = {}
        self._fenced: set[str] = set()
        self._reconcile_interval = reconcile_interval
        self.shared = hasattr(store, "set_commit_listener")
        # A backend that queues a store's appends in order: pushes are pipelined.
        self._pipelined: PipelinedEventStore | None = (
            store if hasattr(store, "enqueue") else None  # type: ignore[assignment]
        )
        if self.shared:
            shared: SharedEventStore = store  # type: ignore[assignment]
            shared.set_commit_listener(self.on_commit, self.on_reconnect, self.on_retired_elsewhere)
            on_group = getattr(store, "set_group_commit_listener", None)
            if on_group is not None:
                on_group(self.on_commits)
            on_own = getattr(store, "set_own_change_listener", None)
            if on_own is not None:
                on_own(self.on_own_change)

    @property
    def stores_loaded(self) -> int:
        return len(self._states)

    # -- memory ---------------------------------------------------------------------------

    def unload_idle(self, idle: float, now: float | None = None) -> int:
        """Forget stores unused for ``idle`` seconds with no live pull; returns how many.

        Everything a store's state holds can be read back from the log (head, backendId),
        so the next request simply loads it again. A store stays while a push holds or
        waits for its lock, or while any live pull (even one still catching up) is on it;
        every other use marks it used, and lasts far less than ``idle``.
        """
        if now is None:
            now = time.monotonic()
        stale = [
            state
            for state in self._states.values()
            if now - state.used >= idle
            and not state.lock.locked()
            and not state.in_flight
            and not self.hub.subscriber_count(state.store_id)
        ]
        for state in stale:
            del self._states[state.store_id]
            self.store.forget(state.store_id)
        if stale:
            self.counters.stores_unloaded += len(stale)
            logger.debug("unloaded %d idle stores", len(stale))
        return len(stale)

    async def state(self, store_id: str) -> StoreState:
        """The in-memory state of a store, loading (or creating) it on first use."""
        state = self._states.get(store_id)
        if state is not None:
            state.used = time.monotonic()
            return state
        if store_id in self._retiring:
            await self._await_retiring(store_id)
            return await self.state(store_id)
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
            state.empty_tail = frames.chunk_tail(
                frames.pull_item([], frames.NO_MORE, state.backend_id_json)
            )
            state.used = time.monotonic()
            self._states[store_id] = state
            del self._loading[store_id]
            heard = self._heard.pop(store_id, 0)
            if heard > state.head:
                self._spawn(self._catch_up(state, heard))
            loading.set_result(state)
            return state
        return await asyncio.shield(loading)

    # -- push -----------------------------------------------------------------------------

    async def push(
        self,
        request: PushRequest,
        writer: Writer | None = None,
        *,
        admitted: asyncio.Future[None] | None = None,
    ) -> RpcFailure | None:
        """Admit a pushed batch; None on success, else the typed error to fail with.

        ``admitted`` is set once the push has its turn at the store's lock (its admission
        task exists: pushes admitted later queue behind it), or is answered before that.

        Raises:
            StoreError: the store is unavailable (transient: nothing was written, or, for
                :class:`CommitUnknown`, maybe). Never an RPC failure: a LiveStore client
                treats ``UnknownError`` as final, and storage trouble is not.
        """
        started = time.perf_counter()
        try:
            return await self._push(request, writer, admitted)
        finally:
            self.metrics.push_latency.observe(time.perf_counter() - started)

    async def _push(
        self,
        request: PushRequest,
        writer: Writer | None,
        admitted: asyncio.Future[None] | None = None,
    ) -> RpcFailure | None:
        batch = request.batch
        if not batch:
            return None
        problem = protocol.chain_error(batch)
        if problem is not None:
            self.counters.pushes_rejected["invalid_batch"] += 1
            return UnknownFailure(problem, "invalid batch")
        try:
            state = await self.state(request.store_id)
        except StoreError:
            self.counters.pushes_rejected["storage"] += 1
            raise
        if request.backend_id is not None and request.backend_id != state.backend_id:
            self.counters.pushes_rejected["backend_mismatch"] += 1
            return BackendIdMismatch(state.backend_id, request.backend_id)
        task = asyncio.get_running_loop().create_task(self._admit(state, batch, writer))
        self._admissions.add(task)
        task.add_done_callback(self._admissions.discard)
        if admitted is not None and not admitted.done():
            admitted.set_result(None)  # tasks take the store's lock in the order created
        return await asyncio.shield(task)

    async def _admit(
        self, state: StoreState, batch: list[NewEvent], writer: Writer | None
    ) -> RpcFailure | None:
        if self._pipelined is not None:
            return await self._admit_pipelined(state, batch, writer)
        async with state.lock:
            if state.retired:
                # Reset or deleted while this push waited: the client's log is another's.
                fresh = await self.state(state.store_id)
                self.counters.pushes_rejected["backend_mismatch"] += 1
                return BackendIdMismatch(fresh.backend_id, state.backend_id)
            parent = batch[0].parent
            # The head never moves back, so an older parent is stale for sure. A newer one
            # may be right when other nodes wrote meanwhile: the log decides.
            if parent < state.head or (parent > state.head and not self.shared):
                self.counters.pushes_rejected["server_ahead"] += 1
                return ServerAhead(state.head, parent)
            created = now_ms()
            try:
                await self.store.append(state.store_id, parent, batch, created, writer)
            except CommitUnknown:
                # Maybe written, maybe not: neither ack nor fail (like any storage trouble, the
                # request ends without an answer: 1011 / 503). If it was written, the log's
                # head says so: publish it.
                self.counters.pushes_rejected["unknown_outcome"] += 1
                if self.shared:
                    self._spawn(self._resync(state))
                raise
            except HeadMismatch as exc:
                # Another node moved the head; its events reach us through on_commit.
                self.on_commit(state.store_id, exc.head)
                self.counters.pushes_rejected["server_ahead"] += 1
                return ServerAhead(exc.head, parent)
            except StoreError:
                self.counters.pushes_rejected["storage"] += 1
                raise
            await self._publish_own(state, batch, created, writer)
        return None

    async def _publish_own(
        self, state: StoreState, batch: list[NewEvent], created: int, writer: Writer | None
    ) -> None:
        """Publish a committed batch (called with ``state.lock`` held), after whatever the
        log holds before it that this node has not published yet."""
        parent, last = batch[0].parent, batch[-1].seq
        counters = self.counters
        counters.pushes_accepted += 1
        counters.events_accepted += len(batch)
        if state.head >= last:
            return  # a catch-up published it from the log already (a pipelined push)
        if state.head != parent:
            # Other nodes' events up to our parent go out first, in order (and ours with
            # them if the head is past our parent): from the log.
            try:
                await self._publish_range(state, parent if state.head < parent else last)
            except StoreError as exc:
                logger.error("store %r: publishing up to %d failed: %s", state.store_id, last, exc)
            if state.head != parent:
                if state.head < last:
                    # The next announcement or reconcile publishes the rest, without a gap.
                    logger.error("store %r: batch to %d not published yet", state.store_id, last)
                return
        if not state.retired:
            state.head = last
            started = time.perf_counter()
            meta = frames.metadata(created)
            entries = [frames.event_entry(event.data, meta) for event in batch]
            attributed = None
            if writer is not None and self.hub.wants_attribution(state.store_id):
                signed = frames.metadata(created, writer.encoded())
                attributed = [frames.event_entry(event.data, signed) for event in batch]
            sent = self.hub.publish(state.store_id, entries, state.backend_id_json, attributed)
            self.metrics.fanout_latency.observe(time.perf_counter() - started)
            counters.frames_delivered += sent

    async def drain(self) -> None:
        """Wait until every admitted push is written and published (for shutdown)."""
        while self._admissions:
            await asyncio.wait(tuple(self._admissions))

    async def close(self) -> None:
        for task in tuple(self._background):
            task.cancel()
        if self._background:
            await asyncio.wait(tuple(self._background))

    # -- pull -----------------------------------------------------------------------------

    def open_pull_now(
        self, request: PullRequest, subscription: Subscription | None = None
    ) -> Backlog | RpcFailure | None:
        """:meth:`open_pull` without awaiting, when it can be done so; else ``None``.

        It can when the store is loaded and the cursor is not ahead of what this node has
        published (which, on a shared backend, needs a read of the log first).
        """
        state = self._states.get(request.store_id)
        if state is None:
            return None
        state.used = time.monotonic()
        cursor = request.cursor
        if self.shared and cursor is not None and cursor.seq > state.head:
            return None
        return self._open(state, request, subscription)

    def _open(
        self, state: StoreState, request: PullRequest, subscription: Subscription | None
    ) -> Backlog | RpcFailure:
        cursor = request.cursor
        if cursor is not None and cursor.backend_id != state.backend_id:
            return BackendIdMismatch(state.backend_id, cursor.backend_id)
        # No await between reading the head and subscribing: the handoff point.
        backlog = Backlog(state, cursor.seq if cursor is not None else 0, state.head)
        if subscription is not None:
            self.hub.subscribe(subscription)
        return backlog

    async def open_pull(
        self, request: PullRequest, subscription: Subscription | None = None
    ) -> Backlog | RpcFailure:
        """Check the cursor, fix the backlog and (for a live pull) subscribe, atomically."""
        state = await self.state(request.store_id)
        cursor = request.cursor
        if cursor is not None and cursor.backend_id != state.backend_id:
            return BackendIdMismatch(state.backend_id, cursor.backend_id)
        if self.shared and cursor is not None and cursor.seq > state.head:
            # The client saw more than this node has published (it came from another node,
            # or our notification is late): catch up first, or the events between our head
            # and its cursor would reach it a second time.
            await self._catch_up_to_log(state)
        return self._open(state, request, subscription)

    async def backlog_items(
        self, backlog: Backlog, *, attributed: bool = False
    ) -> AsyncIterator[bytes]:
        """The backlog as serialised ``PullResponse`` items; the last is always ``NoMore``.
        ``attributed`` (a service's pull): each event's metadata names who pushed it."""
        state = backlog.state
        bid = state.backend_id_json
        after, upto = backlog.after, backlog.upto
        total = await self.store.count(state.store_id, after, upto) if after < upto else 0
        if total == 0:
            yield frames.pull_item([], frames.NO_MORE, bid)
            return
        sent = 0
        meta_cache: dict[int, bytes] = {}
        while after < upto and sent < total:
            rows = await self.store.read(
                state.store_id, after, upto, READ_BATCH, writers=attributed
            )
            if not rows:
                break
            after = rows[-1].seq
            entries = []
            for row in rows:
                if row.writer is not None:
                    signed = frames.metadata(row.created_ms, row.writer.encoded())
                    entries.append(frames.event_entry(row.data, signed))
                    continue
                meta = meta_cache.get(row.created_ms)
                if meta is None:
                    if len(meta_cache) > 64:
                        meta_cache.clear()
                    meta = meta_cache[row.created_ms] = frames.metadata(row.created_ms)
                entries.append(frames.event_entry(row.data, meta))
            for page in frames.split_pages(entries, bid):
                sent += len(page)
                remaining = total - sent
                info = frames.more_known(remaining) if remaining > 0 else frames.NO_MORE
                yield frames.pull_item(page, info, bid)
        if sent < total:
            # The log held fewer rows than counted; never leave the client without NoMore.
            logger.error("store %r: backlog shorter than counted", state.store_id)
            yield frames.pull_item([], frames.NO_MORE, bid)
