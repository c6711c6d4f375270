"""The SQLite backend's schema: versioned migrations, recorded in ``PRAGMA user_version``.

Each migration runs in its own ``BEGIN IMMEDIATE`` transaction with the version bump, so a
database is always at one version or the next, never between. A database written by a newer
gateway is refused rather than guessed at.
"""

from __future__ import annotations

import sqlite3

from gateway.errors import StoreError

SCHEMA_VERSION = 4

MIGRATIONS: dict[int, str] = {
    1: """
        CREATE TABLE IF NOT EXISTS stores (
            id          INTEGER PRIMARY KEY,
            store_id    TEXT    NOT NULL UNIQUE,
            backend_id  TEXT    NOT NULL,
            head        INTEGER NOT NULL,
            created_ms  INTEGER NOT NULL
        );
        CREATE TABLE IF NOT EXISTS events (
            sid         INTEGER NOT NULL,
            seq         INTEGER NOT NULL,
            parent      INTEGER NOT NULL,
            created_ms  INTEGER NOT NULL,
            data        BLOB    NOT NULL,
            PRIMARY KEY (sid, seq)
        ) WITHOUT ROWID;
    """,
    # Per-store size and last write (kept by every append), and the log ids of reset or
    # deleted stores whose events are still being removed.
    2: """
        ALTER TABLE stores ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE stores ADD COLUMN last_ms INTEGER;
        UPDATE stores SET
            bytes = coalesce((SELECT sum(length(data)) FROM events WHERE sid = stores.id), 0),
            last_ms = (SELECT max(created_ms) FROM events WHERE sid = stores.id);
        CREATE TABLE IF NOT EXISTS purge (sid INTEGER PRIMARY KEY);
    """,
    # Revoked tokens (gateway.revocation), kept until the tokens they cover expire.
    3: """
        CREATE TABLE IF NOT EXISTS revocations (
            id          INTEGER PRIMARY KEY,
            subject     TEXT,
            before_s    REAL,
            jti         TEXT,
            expires_s   REAL    NOT NULL,
            created_s   REAL    NOT NULL,
            actor       TEXT    NOT NULL DEFAULT ''
        );
    """,
    # Attribution: who pushed each event (events stored before have writer 0: unknown).
    4: """
        CREATE TABLE IF NOT EXISTS writers (
            id          INTEGER PRIMARY KEY,
            subject     TEXT    NOT NULL,
            instance_id TEXT    NOT NULL,
            reason      TEXT    NOT NULL,
            UNIQUE (subject, instance_id, reason)
        );
        ALTER TABLE events ADD COLUMN writer INTEGER NOT NULL DEFAULT 0;
    """,
}


def migrate(conn: sqlite3.Connection, path: object) -> None:
    """Bring the database on ``conn`` (autocommit mode) to :data:`SCHEMA_VERSION`.

    Raises:
        StoreError: the database is newer than this gateway, or a migration failed (the
            database is left at the last version that completed).
    """
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path}: schema version {version} is newer than this gateway ({SCHEMA_VERSION})"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        try:
            conn.execute("BEGIN IMMEDIATE")
            for statement in _statements(MIGRATIONS[target]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {target}")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"{path}: migration to schema version {target} failed: {exc}") from exc


def _statements(script: str) -> list[str]:
    """The statements of a migration script (none of ours holds a ';' inside a literal)."""
    return [part.strip() for part in script.split(";") if part.strip()]
