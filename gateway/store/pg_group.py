"""Group commit for the PostgreSQL backend: concurrent appends share one transaction.

Appends submitted while other groups are being written queue up; each group takes what is
queued (up to :data:`MAX_GROUP` appends) into one transaction on one pooled connection, in
ascending ``store_id`` order (every node locks store rows in the same order, so two groups
never deadlock), one statement per append: a stale head (:class:`HeadMismatch`) writes
nothing. When a statement fails (a constraint, a statement timeout), the transaction is
rolled back and the group written again, each append in its own SAVEPOINT, so that the
failing one is undone alone (a savepoint is two round trips more per append: only then). One
``pg_notify`` per group lists every store written and its new head (several when the list
would exceed PostgreSQL's 8000-byte payload limit). Every append is answered after COMMIT.

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

# The appends of several stores (each store once) in one statement; returns the stores
# written (the others had another head, or do not exist).
WRITE_MANY = (
    "WITH j AS (SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], "
    "$5::bigint[]) AS j(s, expected, head, bytes, created_ms)), "
    "u AS (UPDATE stores SET head = j.head, bytes = stores.bytes + j.bytes, "
    "last_ms = j.created_ms FROM j WHERE stores.store_id = j.s AND stores.head = j.expected "
    "RETURNING stores.store_id), "
    "i AS (INSERT INTO events (store_id, seq, parent, created_ms, data, writer) "
    "SELECT e.s, e.seq, e.parent, e.created_ms, e.d, e.w FROM unnest($6::text[], "
    "$7::bigint[], $8::bigint[], $9::bigint[], $10::bytea[], $11::bigint[]) "
    "AS e(s, seq, parent, created_ms, d, w) WHERE e.s IN (SELECT store_id FROM u)) "
    "SELECT store_id FROM u"
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
    # The store's previous append, pending when this one was submitted, that this one
    # continues (written first; when it fails, this one fails too)...
    before: Append | None = field(default=None, repr=False)
    # ...or that this one does not continue (written first all the same).
    after: Append | None = field(default=None, repr=False)


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


def _inherited(job: Append, failure: BaseException) -> StoreError:
    """What an append fails with when an earlier one of its store failed: nothing written."""
    if isinstance(failure, HeadMismatch):
        return HeadMismatch(failure.head)
    return StoreError(
        f"postgres: an earlier append to {job.store_id!r} failed; this one was not written"
    )


def notices(written: Sequence[Append]) -> list[str]:
    """The group's announcements: ``{"c": [[store_id, head], ...]}``, each under the limit
    (a store written more than once in the group: its last head)."""
    out: list[str] = []
    parts: list[bytes] = []
    size = len(b'{"c":[]}')
    heads = {job.store_id: job.events[-1].seq for job in written}
    for store_id, head in heads.items():
        part = orjson.dumps([store_id, head])
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
                    job.future.set_exception(_inherited(job, failure))
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
        async with store._connection() as conn:
            writer_ids = [await store._writer_id(conn, job.writer) for job in group]
            try:
                # Every append in one statement, no savepoint (a stale head is no error: the
                # statement writes nothing).
                async with conn.transaction():
                    await self._statements(conn, group, writer_ids, isolated=False)
                return
            except _StatementFailed:
                pass  # rolled back: again, each append in its own savepoint
            for job in group:
                job.failure = None
            async with conn.transaction():
                await self._statements(conn, group, writer_ids, isolated=True)

    async def _statements(
        self, conn: Conn, group: list[Append], writer_ids: list[int], *, isolated: bool
    ) -> None:
        """The group's statements; ``isolated``: each append in a SAVEPOINT, so that a failed
        statement undoes it alone. Not isolated, a failed statement of a group of several
        raises :class:`_StatementFailed` (the caller rolls back and tries isolated); of a
        group of one, it fails the group (and the log is asked)."""
        several = len(group) > 1
        if several and not isolated:
            await self._rounds(conn, group, writer_ids)
            return
        for job, writer_id in zip(group, writer_ids, strict=True):
            if job.before is not None:
                # Its store's earlier append is in this group, written just before.
                failure = job.before.failure
                if failure is not None:
                    job.failure = _inherited(job, failure)
                    continue
            if not isolated:
                try:
                    await self._append(conn, job, writer_id)
                except GatewayError as exc:  # a stale head, a missing store
                    job.failure = exc
                except asyncpg.PostgresError as exc:
                    if several and not conn.is_closed():
                        raise _StatementFailed from exc
                    raise
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
            await conn.execute("SELECT pg_notify($1, $2)", self.store.channel, notice)

    async def _rounds(self, conn: Conn, group: list[Append], writer_ids: list[int]) -> None:
        """The group in as few statements as it has appends of one store: the first append
        of every store in one statement, the second ones in the next, and so on."""
        rounds: list[list[tuple[Append, int]]] = []
        depth: dict[str, int] = {}
        for job, writer_id in zip(group, writer_ids, strict=True):
            k = depth.get(job.store_id, 0)
            depth[job.store_id] = k + 1
            if k == len(rounds):
                rounds.append([])
            rounds[k].append((job, writer_id))
        for round_ in rounds:
            todo: list[tuple[Append, int]] = []
            for job, writer_id in round_:
                failure = job.before.failure if job.before is not None else None
                if failure is not None:
                    job.failure = _inherited(job, failure)
                else:
                    todo.append((job, writer_id))
            if todo:
                try:
                    await self._write_many(conn, todo)
                except asyncpg.PostgresError as exc:
                    if conn.is_closed():
                        raise
                    raise _StatementFailed from exc
        written = [job for job in group if job.failure is None]
        for notice in notices(written):
            await conn.execute("SELECT pg_notify($1, $2)", self.store.channel, notice)

    async def _write_many(self, conn: Conn, todo: list[tuple[Append, int]]) -> None:
        jobs = [job for job, _ in todo]
        events = [(job, e, w) for job, w in todo for e in job.events]
        rows = await conn.fetch(
            WRITE_MANY,
            [job.store_id for job in jobs],
            [job.expected_head for job in jobs],
            [job.events[-1].seq for job in jobs],
            [sum(len(e.data) for e in job.events) for job in jobs],
            [job.created_ms for job in jobs],
            [job.store_id for job, _, _ in events],
            [e.seq for _, e, _ in events],
            [e.parent for _, e, _ in events],
            [job.created_ms for job, _, _ in events],
            [e.data for _, e, _ in events],
            [w for _, _, w in events],
        )
        written = {row[0] for row in rows}
        refused = [job for job in jobs if job.store_id not in written]
        if not refused:
            return
        heads = {
            row[0]: int(row[1])
            for row in await conn.fetch(
                "SELECT store_id, head FROM stores WHERE store_id = ANY($1::text[])",
                [job.store_id for job in refused],
            )
        }
        for job in refused:
            head = heads.get(job.store_id)
            job.failure = (
                StoreError(f"store {job.store_id!r} does not exist")
                if head is None
                else HeadMismatch(head)
            )

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


class _StatementFailed(Exception):
    """A statement of a group written without savepoints failed (the connection lives)."""


def _consume(future: asyncio.Future[None]) -> None:
    """Marks the outcome of an abandoned append as retrieved (nobody waits for it)."""
    if not future.cancelled():
        future.exception()


def _store_error(exc: BaseException) -> StoreError:
    if isinstance(exc, StoreError):
        return exc
    return StoreError(f"postgres: {type(exc).__name__}: {exc}")
