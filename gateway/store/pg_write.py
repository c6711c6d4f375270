"""The statements of a PostgreSQL group commit (:mod:`gateway.store.pg_group` runs them).

A group's appends are written without savepoints, one statement per round (the first append
of every store together, then the second ones...): a stale head writes nothing and is read
back; when a statement fails, the caller rolls back and writes the group again isolated,
each append in its own SAVEPOINT (two round trips more per append: only then).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import asyncpg

from gateway.errors import GatewayError, HeadMismatch, StoreError
from gateway.protocol import NewEvent
from gateway.store import Writer
from gateway.store.pg_notice import Written, encode

if TYPE_CHECKING:
    from gateway.store.postgres import Conn

# One append; returns the store's backendId when written (none: another head, or no store).
WRITE = (
    "WITH u AS (UPDATE stores SET head = $3, bytes = bytes + $4, last_ms = $5 "
    "WHERE store_id = $1 AND head = $2 RETURNING store_id, backend_id), "
    "i AS (INSERT INTO events (store_id, seq, parent, created_ms, data, writer) "
    "SELECT u.store_id, t.s, t.p, $5, t.d, $9 FROM u, "
    "unnest($6::bigint[], $7::bigint[], $8::bytea[]) AS t(s, p, d)) "
    "SELECT backend_id FROM u"
)

# The appends of several stores (each store once) in one statement; returns the stores
# written and their backendIds (the others had another head, or do not exist).
WRITE_MANY = (
    "WITH j AS (SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], "
    "$5::bigint[]) AS j(s, expected, head, bytes, created_ms)), "
    "u AS (UPDATE stores SET head = j.head, bytes = stores.bytes + j.bytes, "
    "last_ms = j.created_ms FROM j WHERE stores.store_id = j.s AND stores.head = j.expected "
    "RETURNING stores.store_id, stores.backend_id), "
    "i AS (INSERT INTO events (store_id, seq, parent, created_ms, data, writer) "
    "SELECT e.s, e.seq, e.parent, e.created_ms, e.d, e.w FROM unnest($6::text[], "
    "$7::bigint[], $8::bigint[], $9::bigint[], $10::bytea[], $11::bigint[]) "
    "AS e(s, seq, parent, created_ms, d, w) WHERE e.s IN (SELECT store_id FROM u)) "
    "SELECT store_id, backend_id FROM u"
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
    # Its store's backendId, read back when it was written (announced with its events).
    backend_id: str | None = None
    # The task writing its group, and whether it is alone in it.
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    alone: bool = False
    # The store's previous append, pending when this one was submitted, that this one
    # continues (written first; when it fails, this one fails too)...
    before: Append | None = field(default=None, repr=False)
    # ...or that this one does not continue (written first all the same).
    after: Append | None = field(default=None, repr=False)


def inherited(job: Append, failure: BaseException) -> StoreError:
    """What an append fails with when an earlier one of its store failed: nothing written."""
    if isinstance(failure, HeadMismatch):
        return HeadMismatch(failure.head)
    return StoreError(
        f"postgres: an earlier append to {job.store_id!r} failed; this one was not written"
    )


def notices(node: str, written: Sequence[Append]) -> list[str]:
    """The group's announcements (:mod:`gateway.store.pg_notice`): every store written, its
    last head and, when they fit, its events (a store written more than once in the group:
    its appends in order, which continue one another, as the log's head check made them)."""
    stores: dict[str, Written] = {}
    for job in written:
        entry = stores.get(job.store_id)
        if entry is None:
            entry = stores[job.store_id] = Written(job.store_id, job.backend_id)
        elif job.backend_id is None:
            entry.backend_id = None
        entry.batches.append((job.created_ms, job.events))
    return encode(node, list(stores.values()))


class StatementFailed(Exception):
    """A statement of a group written without savepoints failed (the connection lives)."""


async def statements(
    conn: Conn,
    group: list[Append],
    writer_ids: list[int],
    channel: str,
    node: str,
    *,
    isolated: bool,
) -> None:
    """The group's statements; ``isolated``: each append in a SAVEPOINT, so that a failed
    statement undoes it alone. Not isolated, a failed statement of a group of several
    raises :class:`StatementFailed` (the caller rolls back and tries isolated); of a
    group of one, it fails the group (and the log is asked)."""
    several = len(group) > 1
    if several and not isolated:
        await _rounds(conn, group, writer_ids, channel, node)
        return
    for job, writer_id in zip(group, writer_ids, strict=True):
        if job.before is not None:
            # Its store's earlier append is in this group, written just before.
            failure = job.before.failure
            if failure is not None:
                job.failure = inherited(job, failure)
                continue
        if not isolated:
            try:
                await _append(conn, job, writer_id)
            except GatewayError as exc:  # a stale head, a missing store
                job.failure = exc
            except asyncpg.PostgresError as exc:
                if several and not conn.is_closed():
                    raise StatementFailed from exc
                raise
            continue
        await conn.execute("SAVEPOINT a")
        try:
            await _append(conn, job, writer_id)
        except GatewayError as exc:  # a stale head, a missing store
            job.failure = exc
        except asyncpg.PostgresError as exc:
            # The statement failed, the connection lives: undo this append alone
            # (if even that fails, the group fails, and the log is asked).
            await conn.execute("ROLLBACK TO SAVEPOINT a")
            job.failure = store_error(exc)
        await conn.execute("RELEASE SAVEPOINT a")
    written = [job for job in group if job.failure is None]
    for notice in notices(node, written):
        await conn.execute("SELECT pg_notify($1, $2)", channel, notice)


async def _rounds(
    conn: Conn, group: list[Append], writer_ids: list[int], channel: str, node: str
) -> None:
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
                job.failure = inherited(job, failure)
            else:
                todo.append((job, writer_id))
        if todo:
            try:
                await _write_many(conn, todo)
            except asyncpg.PostgresError as exc:
                if conn.is_closed():
                    raise
                raise StatementFailed from exc
    written = [job for job in group if job.failure is None]
    for notice in notices(node, written):
        await conn.execute("SELECT pg_notify($1, $2)", channel, notice)


async def _write_many(conn: Conn, todo: list[tuple[Append, int]]) -> None:
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
    written = {row[0]: row[1] for row in rows}
    refused: list[Append] = []
    for job in jobs:
        backend_id = written.get(job.store_id)
        if backend_id is None:
            refused.append(job)
        else:
            job.backend_id = backend_id
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


async def _append(conn: Conn, job: Append, writer_id: int) -> None:
    events = job.events
    backend_id = await conn.fetchval(
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
    if backend_id is not None:
        job.backend_id = backend_id
        return
    head = await conn.fetchval("SELECT head FROM stores WHERE store_id = $1", job.store_id)
    if head is None:
        raise StoreError(f"store {job.store_id!r} does not exist")
    raise HeadMismatch(int(head))


def store_error(exc: BaseException) -> StoreError:
    if isinstance(exc, StoreError):
        return exc
    return StoreError(f"postgres: {type(exc).__name__}: {exc}")
