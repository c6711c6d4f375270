"""Group commit for the PostgreSQL backend: concurrent appends share one transaction.

Appends submitted while other groups are being written queue up; each group takes what is
queued (up to :data:`MAX_GROUP` appends) into one transaction on one pooled connection, in
ascending ``store_id`` order (every node locks store rows in the same order, so two groups
never deadlock), in one statement per round (the first append of every store, then the
second ones...: :mod:`gateway.store.pg_write`): a stale head (:class:`HeadMismatch`) writes
nothing. When a statement fails (a constraint, a statement timeout), the transaction is
rolled back and the group written again, each append in its own SAVEPOINT, so that the
failing one is undone alone (a savepoint is two round trips more per append: only then). One
``pg_notify`` per group lists every store written, its new head and, when they fit, the
events written (several notifications when they would exceed PostgreSQL's 8000-byte payload
limit; :mod:`gateway.store.pg_notice`); only appends that were written are announced, and
only at COMMIT (a notification is part of its transaction). Every append is answered after
COMMIT.

When the group as a whole fails (the connection lost mid-transaction or during COMMIT, a
cancelled task), the appends that did not get a verdict of their own are each asked of the
log (:meth:`PostgresStore._committed`): committed ones are acked, lost ones fail, and the
ones that cannot be told get :class:`CommitUnknown`, exactly as a lone append would.

Appends of one store keep the order they were submitted in (pipelining: a node may submit
a store's next append while the previous one is being written). An append whose store has an
earlier one still pending goes into a group only once that one committed, or into the same
group right after it; when the earlier one fails, every later one of the store fails too,
unwritten (after a stale head with the same :class:`HeadMismatch`, else a
:class:`StoreError`): nothing is ever written on top of an append that is not in the log.

Writer ids are resolved before the transaction, in their own statements (``writers`` rows are
never deleted, so one written for an append that then fails is harmless), so a group takes
no lock but its stores' rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gateway.errors import CommitUnknown, GatewayError, StoreError
from gateway.protocol import NewEvent
from gateway.store import Writer
from gateway.store.pg_notice import MAX_NOTICE
from gateway.store.pg_write import (
    Append,
    StatementFailed,
    inherited,
    notices,
    statements,
    store_error,
)

if TYPE_CHECKING:
    from gateway.store.postgres import PostgresStore

__all__ = ["MAX_GROUP", "MAX_NOTICE", "Append", "GroupCommitter", "notices"]

logger = logging.getLogger("gateway.store.postgres")

# Appends in one transaction at most (a larger group holds its rows' locks longer).
MAX_GROUP = 100


def _failed(job: Append) -> BaseException | None:
    """The failure of a decided append (its own verdict in a group counts at once)."""
    if job.failure is not None:
        return job.failure
    future = job.future
    if not future.done():
        return None
    if future.cancelled():
        return StoreError("cancelled")
    return future.exception()


class GroupCommitter:
    """Queues appends and writes them in groups, at most ``max_groups`` at a time."""

    def __init__(self, store: PostgresStore, *, max_groups: int) -> None:
        self.store = store
        self.max_groups = max(1, max_groups)
        self._queue: list[Append] = []
        self._running: set[asyncio.Task[None]] = set()
        # The last append submitted to each store, while it is pending.
        self._tails: dict[str, Append] = {}

    def submit(
        self,
        store_id: str,
        expected_head: int,
        events: Sequence[NewEvent],
        created_ms: int,
        writer: Writer | None,
        *,
        chained: bool = True,
    ) -> Append:
        """Queue an append; ``chained``: after the store's pending chained appends."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        job = Append(store_id, expected_head, events, created_ms, writer, future)
        self._queue.append(job)
        if not chained:
            self._start()
            return job
        before = self._tails.get(store_id)
        if before is not None and not before.future.done():
            if expected_head == before.events[-1].seq:
                job.before = before  # its continuation: written after it, or not at all
            else:
                # Not built on it (its parent is the log's, as another node wrote it): only
                # its turn comes after it (the log's head check decides both).
                job.after = before
        self._tails[store_id] = job
        future.add_done_callback(lambda _f: self._untail(job))
        self._start()
        return job

    def _untail(self, job: Append) -> None:
        if self._tails.get(job.store_id) is job:
            del self._tails[job.store_id]

    def abandon(self, job: Append) -> None:
        """Its caller was cancelled: drop it if still queued, and interrupt its group when it
        is alone in it (as a cancelled lone append always was); a shared group goes on."""
        job.future.add_done_callback(_consume)
        if job in self._queue:
            self._queue.remove(job)
            job.future.cancel()
            self._start()  # its store's later appends fail now
        elif job.alone and job.task is not None:
            job.task.cancel()

    def _take(self) -> list[Append]:
        """The next group, in submission order: an append whose store's earlier append is
        still pending elsewhere waits in the queue; one whose earlier append failed fails."""
        group: list[Append] = []
        held: list[Append] = []
        taken: set[int] = set()
        for job in self._queue:
            after = job.after
            if after is not None and id(after) not in taken and not after.future.done():
                held.append(job)
                continue
            before = job.before
            if before is not None and id(before) not in taken:
                failure = _failed(before)
                if failure is not None:
                    job.future.set_exception(inherited(job, failure))
                    continue
                if not before.future.done():
                    held.append(job)
                    continue
            if len(group) == MAX_GROUP:
                held.append(job)
                continue
            group.append(job)
            taken.add(id(job))
        self._queue = held
        return group

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue and len(self._running) < self.max_groups:
            group = self._take()
            if not group:
                return
            task = loop.create_task(self._run(group))
            for job in group:
                job.task, job.alone = task, len(group) == 1
            self._running.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if not self.store._closed:
            self._start()

    async def close(self) -> None:
        """Cancels the groups being written (their appends end unknown) and the queued ones."""
        for job in self._queue:
            if not job.future.done():
                job.future.set_exception(StoreError("store is closed"))
                job.future.exception()  # (its store's later appends may have no waiter)
        self._queue.clear()
        for task in list(self._running):
            task.cancel()
        for task in list(self._running):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, group: list[Append]) -> None:
        group.sort(key=lambda job: job.store_id)
        try:
            await self._write(group)
        except asyncio.CancelledError:
            for job in group:
                if not job.future.done():
                    job.future.set_exception(
                        CommitUnknown(f"postgres: an append to {job.store_id!r} was interrupted")
                    )
            raise
        except Exception as exc:
            # The failure may have come after COMMIT was sent: ask the log.
            await asyncio.gather(*(self._resolve(job, exc) for job in group))
            return
        for job in group:
            if job.future.done():
                continue
            if job.failure is not None:
                job.future.set_exception(job.failure)
            else:
                job.future.set_result(None)

    async def _resolve(self, job: Append, exc: Exception) -> None:
        if job.future.done():
            return
        if job.failure is not None:
            job.future.set_exception(job.failure)  # its own verdict: nothing written
            return
        if isinstance(exc, GatewayError):
            # No connection to write on (an exhausted pool, a closed store): nothing written.
            job.future.set_exception(exc)
            return
        committed = await self.store._committed(job.store_id, job.events[-1], job.created_ms)
        if job.future.done():
            return
        if committed is None:
            failure: BaseException = CommitUnknown(
                f"postgres: the outcome of an append to {job.store_id!r} is unknown: {exc}"
            )
        elif not committed:
            failure = exc if isinstance(exc, StoreError) else store_error(exc)
        else:
            logger.warning(
                "append to %r reported %s but committed; acknowledging", job.store_id, exc
            )
            job.future.set_result(None)
            return
        job.future.set_exception(failure)

    async def _write(self, group: list[Append]) -> None:
        store = self.store
        async with store._connection() as conn:
            writer_ids = [await store._writer_id(conn, job.writer) for job in group]
            try:
                # Every append in one statement, no savepoint (a stale head is no error: the
                # statement writes nothing).
                async with conn.transaction():
                    await statements(
                        conn, group, writer_ids, store.channel, store.node, isolated=False
                    )
                return
            except StatementFailed:
                pass  # rolled back: again, each append in its own savepoint
            for job in group:
                job.failure, job.backend_id = None, None
            async with conn.transaction():
                await statements(conn, group, writer_ids, store.channel, store.node, isolated=True)


def _consume(future: asyncio.Future[None]) -> None:
    """Marks the outcome of an abandoned append as retrieved (nobody waits for it)."""
    if not future.cancelled():
        future.exception()
