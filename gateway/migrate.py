"""``gateway migrate``: copy every store from the SQLite log to PostgreSQL, keeping seqNums,
times and backendIds, so clients that synced on SQLite continue on PostgreSQL without a reset.

Idempotent and resumable: a store already in PostgreSQL with the same backendId is continued
from its head there (nothing is copied twice); one with another backendId, or ahead of the
source, is a conflict that stops the migration before anything is written to that store.
When every store is copied, each is verified: the same head, the same number of events and
the same SHA-256 over every event's (seqNum, parentSeqNum, createdAt, bytes). Run it with the
server stopped (or with its clients paused): events pushed to SQLite after a store was
copied are picked up by running it again.
"""

from __future__ import annotations

import hashlib
import sqlite3
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TextIO

from gateway.errors import GatewayError
from gateway.protocol import NewEvent
from gateway.revocation import Revocation
from gateway.store import EventStore, StoredEvent, Writer

# Events read and appended per step.
BATCH: Final = 1000


class MigrationError(GatewayError):
    """The migration cannot go on (a conflict, a failed verification); the message says why."""


@dataclass(slots=True)
class MigrationReport:
    stores: int = 0
    events: int = 0
    copied: int = 0
    revocations: int = 0
    conflicts: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Source:
    sid: int
    store_id: str
    backend_id: str
    head: int


class SqliteSource:
    """The SQLite log, read directly (read-only; the server need not run)."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise MigrationError(f"no database at {path}")
        self._conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master")}
        if not {"stores", "events"} <= tables:
            raise MigrationError(f"{path} is not a gateway database")
        self._revocations = "revocations" in tables
        self._writers = "writers" in tables

    def close(self) -> None:
        self._conn.close()

    def stores(self) -> list[_Source]:
        rows = self._conn.execute(
            "SELECT id, store_id, backend_id, head FROM stores ORDER BY store_id"
        ).fetchall()
        return [_Source(int(r[0]), r[1], r[2], int(r[3])) for r in rows]

    def events(self, sid: int, after: int) -> Iterator[list[StoredEvent]]:
        """The events of log ``sid`` after ``after``, with who pushed them, a batch at a time."""
        query = (
            "SELECT e.seq, e.parent, e.created_ms, e.data, w.subject, w.instance_id, w.reason "
            "FROM events e LEFT JOIN writers w ON w.id = e.writer "
            "WHERE e.sid = ? AND e.seq > ? ORDER BY e.seq LIMIT ?"
            if self._writers
            else "SELECT seq, parent, created_ms, data, NULL, NULL, NULL FROM events "
            "WHERE sid = ? AND seq > ? ORDER BY seq LIMIT ?"
        )
        while True:
            rows = self._conn.execute(query, (sid, after, BATCH)).fetchall()
            if not rows:
                return
            yield [
                StoredEvent(
                    int(r[0]),
                    int(r[1]),
                    int(r[2]),
                    bytes(r[3]),
                    None if r[4] is None else Writer(r[4], r[5], r[6]),
                )
                for r in rows
            ]
            after = int(rows[-1][0])

    def revocations(self, now: float) -> list[Revocation]:
        if not self._revocations:
            return []
        rows = self._conn.execute(
            "SELECT subject, before_s, jti, expires_s, created_s, actor FROM revocations "
            "WHERE expires_s > ? ORDER BY id",
            (now,),
        ).fetchall()
        return [Revocation.from_row(*row) for row in rows]


def _digest(hasher: hashlib._Hash, rows: list[StoredEvent]) -> None:
    for row in rows:
        hasher.update(f"{row.seq}:{row.parent}:{row.created_ms}:{len(row.data)}:".encode())
        hasher.update(row.data)
        hasher.update(repr(row.writer).encode())


class Progress:
    """A one-line progress bar on a terminal, a line per store otherwise."""

    def __init__(self, total: int, out: TextIO = sys.stderr) -> None:
        self.total = max(total, 1)
        self.done = 0
        self._out = out
        self._tty = out.isatty()

    def advance(self, events: int, store_id: str) -> None:
        self.done += events
        if not self._tty:
            return
        filled = 30 * self.done // self.total
        self._out.write(
            f"\r[{'#' * filled}{'-' * (30 - filled)}] {100 * self.done // self.total:3d}% "
            f"{self.done:,}/{self.total:,} events  {store_id[:40]:<40}"
        )
        self._out.flush()

    def store_done(self, store_id: str, copied: int) -> None:
        if self._tty:
            return
        print(f"copied {store_id}: {copied} events", file=self._out, flush=True)

    def finish(self) -> None:
        if self._tty:
            self._out.write("\n")


async def migrate(
    source: SqliteSource,
    target: EventStore,
    *,
    now: float,
    progress: Callable[[int], Progress] = Progress,
) -> MigrationReport:
    """Copy ``source`` into ``target`` (an open PostgreSQL store) and verify it.

    Raises:
        MigrationError: a store conflicts (listed), or a copied store fails verification.
    """
    report = MigrationReport()
    stores = source.stores()
    plans: list[tuple[_Source, int]] = []
    for store in stores:
        info = await target.store_info(store.store_id)
        if info is None:
            plans.append((store, 0))
        elif info.backend_id != store.backend_id:
            report.conflicts.append(
                f"{store.store_id}: PostgreSQL has backendId {info.backend_id}, SQLite "
                f"{store.backend_id}"
            )
        elif info.head > store.head:
            report.conflicts.append(
                f"{store.store_id}: PostgreSQL is at seqNum {info.head}, ahead of SQLite's "
                f"{store.head}"
            )
        else:
            plans.append((store, info.head))
    if report.conflicts:
        raise MigrationError(
            "conflicting stores, nothing copied:\n  " + "\n  ".join(report.conflicts)
        )
    bar = progress(sum(store.head - start for store, start in plans))
    for store, start in plans:
        if start == 0 and await target.store_info(store.store_id) is None:
            await target.create_store(store.store_id, store.backend_id)
        copied = 0
        for rows in source.events(store.sid, start):
            await _append_runs(target, store.store_id, rows)
            copied += len(rows)
            bar.advance(len(rows), store.store_id)
        bar.store_done(store.store_id, copied)
        report.copied += copied
    bar.finish()
    for entry in source.revocations(now):
        if entry not in await target.list_revocations(now):
            await target.add_revocation(entry)
            report.revocations += 1
    for store in stores:
        await _verify(source, target, store)
        report.stores += 1
        report.events += store.head
    return report


async def _append_runs(target: EventStore, store_id: str, rows: list[StoredEvent]) -> None:
    """Append ``rows`` in runs that share a creation time (one append per run)."""
    run: list[StoredEvent] = []
    for row in rows:
        if run and (row.created_ms, row.writer) != (run[0].created_ms, run[0].writer):
            await _append(target, store_id, run)
            run = []
        run.append(row)
    if run:
        await _append(target, store_id, run)


async def _append(target: EventStore, store_id: str, run: list[StoredEvent]) -> None:
    events = [NewEvent(row.seq, row.parent, row.data) for row in run]
    await target.append(store_id, run[0].parent, events, run[0].created_ms, run[0].writer)


async def _verify(source: SqliteSource, target: EventStore, store: _Source) -> None:
    info = await target.store_info(store.store_id)
    if info is None or (info.backend_id, info.head) != (store.backend_id, store.head):
        raise MigrationError(f"{store.store_id}: PostgreSQL differs after the copy ({info})")
    mine, theirs = hashlib.sha256(), hashlib.sha256()
    count_mine = count_theirs = 0
    for rows in source.events(store.sid, 0):
        _digest(mine, rows)
        count_mine += len(rows)
    after = 0
    while True:
        rows = await target.read(store.store_id, after, store.head, BATCH, writers=True)
        if not rows:
            break
        _digest(theirs, rows)
        count_theirs += len(rows)
        after = rows[-1].seq
    if (count_mine, mine.digest()) != (count_theirs, theirs.digest()):
        raise MigrationError(
            f"{store.store_id}: verification failed ({count_mine} events in SQLite, "
            f"{count_theirs} in PostgreSQL, checksums differ)"
        )
