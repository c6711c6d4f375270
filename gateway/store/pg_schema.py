"""The PostgreSQL backend's schema: versioned migrations, applied under an advisory lock."""

from __future__ import annotations

import asyncpg

from gateway.errors import StoreError

SCHEMA_VERSION = 4

MIGRATIONS: dict[int, str] = {
    1: """
        CREATE TABLE IF NOT EXISTS stores (
            store_id    text   PRIMARY KEY,
            backend_id  text   NOT NULL,
            head        bigint NOT NULL,
            created_ms  bigint NOT NULL
        );
        CREATE TABLE IF NOT EXISTS events (
            store_id    text   NOT NULL,
            seq         bigint NOT NULL,
            parent      bigint NOT NULL,
            created_ms  bigint NOT NULL,
            data        bytea  NOT NULL,
            PRIMARY KEY (store_id, seq)
        );
    """,
    # Per-store size and last write, kept by every append (the operator's catalog).
    2: """
        ALTER TABLE stores ADD COLUMN IF NOT EXISTS bytes bigint NOT NULL DEFAULT 0;
        ALTER TABLE stores ADD COLUMN IF NOT EXISTS last_ms bigint;
        UPDATE stores SET
            bytes = coalesce((SELECT sum(length(data)) FROM events e
                              WHERE e.store_id = stores.store_id), 0),
            last_ms = (SELECT max(created_ms) FROM events e WHERE e.store_id = stores.store_id);
    """,
    # Revoked tokens (gateway.revocation), kept until the tokens they cover expire.
    3: """
        CREATE TABLE IF NOT EXISTS revocations (
            id          bigserial PRIMARY KEY,
            subject     text,
            before_s    double precision,
            jti         text,
            expires_s   double precision NOT NULL,
            created_s   double precision NOT NULL,
            actor       text NOT NULL DEFAULT ''
        );
    """,
    # Attribution: who pushed each event (events stored before have writer 0: unknown).
    4: """
        CREATE TABLE IF NOT EXISTS writers (
            id          bigserial PRIMARY KEY,
            subject     text NOT NULL,
            instance_id text NOT NULL,
            reason      text NOT NULL,
            UNIQUE (subject, instance_id, reason)
        );
        ALTER TABLE events ADD COLUMN IF NOT EXISTS writer bigint NOT NULL DEFAULT 0;
    """,
}


async def migrate(conn: asyncpg.Connection, schema: str) -> None:
    """Create or upgrade ``schema`` to :data:`SCHEMA_VERSION`, one node at a time."""
    async with conn.transaction():
        # One migrator at a time across nodes.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", schema)
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(f'SET LOCAL search_path TO "{schema}"')
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version int NOT NULL)")
        current = await conn.fetchval("SELECT max(version) FROM schema_version") or 0
        if current > SCHEMA_VERSION:
            raise StoreError(f"schema {schema} is at version {current}, newer than this gateway")
        for version in range(current + 1, SCHEMA_VERSION + 1):
            await conn.execute(MIGRATIONS[version])
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
