"""Group commit for the PostgreSQL backend: concurrent appends share one transaction.

Appends submitted while other groups are being written queue up; each group takes what is
queued (up to :data:`MAX_GROUP` appends) into one transaction on one pooled connection, in
ascending ``store_id`` order (every node locks store rows in the same order, so two groups
never deadlock), each append in its own SAVEPOINT: a stale head (:class:`HeadMismatch`) or a
statement that fails (a constraint, a statement timeout) undoes that append alone. One
``pg_notify`` per group lists every store written and its new head (several when the list
would exceed PostgreSQL's 8000-byte payload limit). Every append is answered after COMMIT.

When the group as a whole fails (the connection lost mid-transaction or during COMMIT, a
cancelled task), the appends that did not get a verdict of their own are each asked of the
log (:meth:`PostgresStore._committed`): committed ones are acked, lost ones fail, and the
ones that cannot be told get :class:`CommitUnknown`, exactly as a lone append would.

Writer ids are resolved before the transaction, in their own statements (``writers`` rows are
never deleted, so one written for an append that then fails is harmless), so a group takes
no lock but its stores' rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import asyncpg
import orjson

from gateway.errors import CommitUnknown, GatewayError, HeadMismatch, StoreError
from gateway.protocol import NewEvent
from gateway.store import Writer

if TYPE_CHECKING:
    from gateway.store.postgres import Conn, PostgresStore

logger = logging.getLogger("gateway.store.postgres")

# Appends in one transaction at most (a larger group holds its rows' locks longer).
MAX_GROUP = 100

# Bytes of one notification payload at most (PostgreSQL refuses 8000 and more).
MAX_NOTICE = 7900

WRITE = (
    "WITH u AS (UPDATE stores SET head = $3, bytes = bytes + $4, last_ms = $5 "
    "WHERE store_id = $1 AND head = $2 RETURNING store_id) "
    "INSERT INTO events (store_id, seq, parent, created_ms, data, writer) "
    "SELECT u.store_id, t.s, t.p, $5, t.d, $9 FROM u, "
    "unnest($6::bigint[], $7::bigint[], $8::bytea[]) AS t(s, p, d)"
)


@dataclass(slots=True, eq=False)
class Append:
    store_id: str
    expected_head: int
    events: Sequence[NewEvent]
    created_ms: int
    writer: Writer | None
    future: asyncio.Future[None] = field(repr=False)
    # Its own verdict within the group (a stale head, a failed statement): nothing written.
    failure: BaseException | None = None
    # The task writing its group, and whether it is alone in it.
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    alone: bool = False


def notices(written: Sequence[Append]) -> list[str]:
    """The group's announcements: ``{"c": [[store_id, head], ...]}``, each under the limit."""
    out: list[str] = []
    parts: list[bytes] = []
    size = len(b'{"c":[]}')
    for job in written:
        part = orjson.dumps([job.store_id, job.events[-1].seq])
        if parts and size + len(part) + 1 > MAX_NOTICE:
            out.append('{"c":[' + b",".join(parts).decode() + "]}")
            parts, size = [], len(b'{"c":[]}')
        parts.append(part)
        size += len(part) + 1
    if parts:
        out.append('{"c":[' + b",".join(parts).decode() + "]}")
    return out


class GroupCommitter:
    """Queues appends and writes them in groups, at most ``max_groups`` at a time."""

    def __init__(self, store: PostgresStore, *, max_groups: int) -> None:
        self.store = store
        self.max_groups = max(1, max_groups)
        self._queue: list[Append] = []
        self._running: set[asyncio.Task[None]] = set()

    def submit(
        self,
        store_id: str,
        expected_head: int,
        events: Sequence[NewEvent],
        created_ms: int,
        writer: Writer | None,
    ) -> Append:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        job = Append(store_id, expected_head, events, created_ms, writer, future)
        self._queue.append(job)
        self._start()
        return job

    def abandon(self, job: Append) -> None:
        """Its caller was cancelled: drop it if still queued, and interrupt its group when it
        is alone in it (as a cancelled lone append always was); a shared group goes on."""
        job.future.add_done_callback(_consume)
        if job in self._queue:
            self._queue.remove(job)
            job.future.cancel()
        elif job.alone and job.task is not None:
            job.task.cancel()

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue and len(self._running) < self.max_groups:
            group, self._queue = self._queue[:MAX_GROUP], self._queue[MAX_GROUP:]
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
            failure = exc if isinstance(exc, StoreError) else _store_error(exc)
        else:
            logger.warning(
                "append to %r reported %s but committed; acknowledging", job.store_id, exc
            )
            job.future.set_result(None)
            return
        job.future.set_exception(failure)

    async def _write(self, group: list[Append]) -> None:
        store = self.store
        alone = len(group) == 1
        async with store._connection() as conn:
            writer_ids = [await store._writer_id(conn, job.writer) for job in group]
            async with conn.transaction():
                for job, writer_id in zip(group, writer_ids, strict=True):
                    if alone:
                        # No savepoint: a failed statement fails the group of one (and the
                        # log is asked); a stale head wrote nothing.
                        try:
                            await self._append(conn, job, writer_id)
                        except GatewayError as exc:
                            job.failure = exc
                        continue
                    await conn.execute("SAVEPOINT a")
                    try:
                        await self._append(conn, job, writer_id)
                    except GatewayError as exc:  # a stale head, a missing store
                        job.failure = exc
                    except asyncpg.PostgresError as exc:
                        # The statement failed, the connection lives: undo this append alone
                        # (if even that fails, the group fails, and the log is asked).
                        await conn.execute("ROLLBACK TO SAVEPOINT a")
                        job.failure = _store_error(exc)
                    await conn.execute("RELEASE SAVEPOINT a")
                written = [job for job in group if job.failure is None]
                for notice in notices(written):
                    await conn.execute("SELECT pg_notify($1, $2)", store.channel, notice)

    async def _append(self, conn: Conn, job: Append, writer_id: int) -> None:
        events = job.events
        status = await conn.execute(
            WRITE,
            job.store_id,
            job.expected_head,
            events[-1].seq,
            sum(len(e.data) for e in events),
            job.created_ms,
            [e.seq for e in events],
            [e.parent for e in events],
            [e.data for e in events],
            writer_id,
        )
        if status.rsplit(" ", 1)[-1] != "0":
            return
        head = await conn.fetchval("SELECT head FROM stores WHERE store_id = $1", job.store_id)
        if head is None:
            raise StoreError(f"store {job.store_id!r} does not exist")
        raise HeadMismatch(int(head))


def _consume(future: asyncio.Future[None]) -> None:
    """Marks the outcome of an abandoned append as retrieved (nobody waits for it)."""
    if not future.cancelled():
        future.exception()


def _store_error(exc: BaseException) -> StoreError:
    if isinstance(exc, StoreError):
        return exc
    return StoreError(f"postgres: {type(exc).__name__}: {exc}")
