"""Consistent backups of the SQLite log while the server runs (``gateway backup``).

The copy is made with SQLite's online backup API in one step, inside one read transaction
of the source: it is the log as it was at one instant, with every push committed before that
instant and none of the pushes committed after it (WAL lets the server keep writing
meanwhile). A file copy of ``gateway.sqlite3`` is not a backup: it misses what is still in
the ``-wal`` file and can be torn.

The copy is written next to the target as ``<target>.partial``, checked with
``PRAGMA quick_check``, synced to disk and only then renamed to the target, so a target that
exists is always a complete backup.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import GatewayError
from gateway.store.sqlite import DATABASE_NAME

__all__ = ["DATABASE_NAME", "BackupError", "BackupReport", "backup"]


class BackupError(GatewayError):
    """The backup could not be made; nothing was written at the target."""


@dataclass(frozen=True, slots=True)
class BackupReport:
    """What a backup holds.

    Attributes:
        path: The backup file.
        stores: How many stores it holds.
        events: How many events, over all stores.
        size: Its size in bytes.
    """

    path: Path
    stores: int
    events: int
    size: int


def backup(source: Path, target: Path, *, overwrite: bool = False) -> BackupReport:
    """Copy the SQLite log ``source`` to ``target``, consistently, while a server may write.

    Args:
        source: The server's database file (``<data_dir>/gateway.sqlite3``).
        target: The backup file to create.
        overwrite: Replace ``target`` if it exists (else refuse).

    Returns:
        What the backup holds.

    Raises:
        BackupError: ``source`` is missing or unreadable, ``target`` exists (without
            ``overwrite``) or cannot be written, or the copy failed its integrity check.
    """
    if not source.is_file():
        raise BackupError(f"no database at {source}")
    if target.exists() and not overwrite:
        raise BackupError(f"{target} exists (use --force to replace it)")
    if target.resolve() == source.resolve():
        raise BackupError("the backup target is the database itself")
    partial = target.with_name(target.name + ".partial")
    try:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        stores, events = _copy(source, partial)
        _fsync(partial)
        os.replace(partial, target)
        _fsync(target.parent)
    except (OSError, sqlite3.Error) as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise BackupError(f"backup failed: {exc}") from None
    except BackupError:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
    return BackupReport(target, stores, events, target.stat().st_size)


def _copy(source: Path, target: Path) -> tuple[int, int]:
    """The copy itself; returns (stores, events) as read from the copy."""
    # Read-write (not mode=ro): a reader of a WAL database may need to create the -shm file
    # when no server has it open. query_only keeps this connection from writing anything.
    src = sqlite3.connect(source, timeout=30.0)
    try:
        src.execute("PRAGMA query_only = ON")
        src.execute("PRAGMA busy_timeout = 30000")
        dst = sqlite3.connect(target)
        try:
            # pages=-1: the whole database in one step, so one read transaction sees it all
            # (a step-wise copy restarts whenever the server commits, and may never finish).
            src.backup(dst, pages=-1)
            # A restored file must not expect a -wal beside it: switch the copy to a rollback
            # journal, so the backup is one self-contained file.
            dst.execute("PRAGMA journal_mode = DELETE")
            (verdict,) = dst.execute("PRAGMA quick_check").fetchone()
            if verdict != "ok":
                raise BackupError(f"the copy failed its integrity check: {verdict}")
            return _counts(dst)
        finally:
            dst.close()
    finally:
        src.close()


def _counts(conn: sqlite3.Connection) -> tuple[int, int]:
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not {"stores", "events"} <= tables:
        raise BackupError("the source is not a gateway database (no stores/events tables)")
    (stores,) = conn.execute("SELECT count(*) FROM stores").fetchone()
    (events,) = conn.execute("SELECT count(*) FROM events").fetchone()
    return int(stores), int(events)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
