"""Pipelined pushes: a store's next push is admitted while the previous one commits.

On a backend that queues appends in order (:class:`~gateway.store.PipelinedEventStore`:
PostgreSQL's group commit), a push does not hold its store's lock while its transaction
commits. Under the lock it is checked against the *pending* head (the head the pushes
admitted before it lead to) and queued; the lock is released while it commits, and taken
again to publish it, after every earlier push of the store finished, so batches are
published in the order they were admitted. The backend writes a store's appends in that
order, each only after the one before it committed (or in the same transaction), and fails
every later one when one fails: a push is acked only after its COMMIT, and never on top of
one that is not in the log. :class:`~gateway.engine.SyncEngine` is a Pipeline.
"""

from __future__ import annotations

import asyncio
import time

from gateway.errors import (
    BackendIdMismatch,
    CommitUnknown,
    HeadMismatch,
    RpcFailure,
    ServerAhead,
    StoreError,
)
from gateway.follow import StoreState
from gateway.metrics import EngineCounters
from gateway.protocol import NewEvent
from gateway.store import PipelinedEventStore, Writer


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Pipeline:
    """A mixin of the sync engine (which provides the state, publication and catch-up)."""

    counters: EngineCounters
    _pipelined: PipelinedEventStore | None

    async def state(self, store_id: str) -> StoreState:
        raise NotImplementedError

    def on_commit(self, store_id: str, head: int) -> None:
        raise NotImplementedError

    def _spawn(self, coro: object) -> None:
        raise NotImplementedError

    async def _resync(self, state: StoreState) -> None:
        raise NotImplementedError

    async def _publish_own(
        self, state: StoreState, batch: list[NewEvent], created: int, writer: Writer | None
    ) -> None:
        raise NotImplementedError

    async def _admit_pipelined(
        self, state: StoreState, batch: list[NewEvent], writer: Writer | None
    ) -> RpcFailure | None:
        store = self._pipelined
        assert store is not None
        async with state.lock:
            if state.retired:
                fresh = await self.state(state.store_id)
                self.counters.pushes_rejected["backend_mismatch"] += 1
                return BackendIdMismatch(fresh.backend_id, state.backend_id)
            parent = batch[0].parent
            pending = max(state.head, state.tail_head) if state.in_flight else state.head
            # An older parent is stale for sure; a newer one may be right when other nodes
            # wrote meanwhile: the log decides.
            if parent < pending:
                self.counters.pushes_rejected["server_ahead"] += 1
                return ServerAhead(pending, parent)
            created = now_ms()
            job = store.enqueue(state.store_id, parent, batch, created, writer)
            before = state.tail
            finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            state.tail, state.tail_head = finished, batch[-1].seq
        try:
            try:
                await store.settle(job)
            except CommitUnknown:
                # Neither ack nor fail; if it was written, the log's head says so.
                self.counters.pushes_rejected["unknown_outcome"] += 1
                self._spawn(self._resync(state))
                raise
            except HeadMismatch as exc:
                # Another node moved the head (or an earlier push of ours failed on it): the
                # pushes admitted after this one that continue it fail too, so the next
                # ones are checked against the log's head.
                if state.in_flight:
                    state.tail_head = max(state.head, exc.head)
                self.on_commit(state.store_id, exc.head)
                self.counters.pushes_rejected["server_ahead"] += 1
                return ServerAhead(exc.head, parent)
            except StoreError:
                self.counters.pushes_rejected["storage"] += 1
                raise
            if before is not None and not before.done():
                await asyncio.wait((before,))  # published in the order admitted
            async with state.lock:
                await self._publish_own(state, batch, created, writer)
            return None
        finally:
            finished.set_result(None)
