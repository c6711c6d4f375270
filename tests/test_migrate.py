"""``gateway migrate``: SQLite to PostgreSQL, verified, idempotent, resumable, and refusing
conflicts before it writes anything."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from tests.helpers.clients import RpcClient
from tests.helpers.daemon import Daemon, run_cli, ws_url
from tests.helpers.http_client import http_request
from tests.helpers.postgres import POSTGRES_DSN, drop_schema, fresh_schema, require_postgres
from tests.helpers.wire import cursor, events_of, make_events

pytestmark = pytest.mark.postgres

ADMIN_TOKEN = "migrate-admin-token-0123456789ab"
ADMIN_ENV = {"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN, "GATEWAY_ADMIN_LISTEN": "127.0.0.1:0"}
DONE = re.compile(r"stores=(\d+) events=(\d+) copied=(\d+) revocations=(\d+); verified")


@pytest.fixture(name="schema")
async def _schema() -> AsyncIterator[str]:
    await require_postgres()
    schema = fresh_schema()
    yield schema
    await drop_schema(schema)


async def push(port: int, store_id: str, start: int, n: int, backend: str | None = None) -> None:
    client = await RpcClient.open(ws_url(port, store_id), store_id)
    for first in range(start, start + n, 100):
        rid = await client.send_push(make_events(first, min(100, start + n - first)), backend)
        assert (await client.wait_exit(rid))["exit"]["_tag"] == "Success"
    await client.close()


async def log_of(port: int, store_id: str) -> tuple[str, list[dict[str, object]]]:
    client = await RpcClient.open(ws_url(port, store_id), store_id)
    items = await client.pull()
    await client.close()
    return items[0]["backendId"], events_of(items)


async def migrate_cli(data: Path, schema: str) -> tuple[int, str, str]:
    return await run_cli(
        "migrate", "--to", POSTGRES_DSN, "--data-dir", str(data), "--schema", schema
    )


def counts(out: str) -> tuple[int, ...]:
    match = DONE.search(out)
    assert match is not None, out
    return tuple(int(group) for group in match.groups())


async def test_migrate_copies_verifies_and_resumes(tmp_path: Path, schema: str) -> None:
    data = tmp_path / "data"
    sqlite = await Daemon.start("--port", "0", "--data-dir", str(data), env=ADMIN_ENV)
    try:
        await push(sqlite.port, "alpha", 1, 250)
        await push(sqlite.port, "beta", 1, 1)
        await log_of(sqlite.port, "empty")
        admin = await sqlite.admin_url()
        revoked = await http_request(
            "POST",
            f"{admin}/v1/revocations",
            body=b'{"subject": "mallory"}',
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert revoked.status == 200
        before = {s: await log_of(sqlite.port, s) for s in ("alpha", "beta", "empty")}
    finally:
        await sqlite.stop()

    status, out, err = await migrate_cli(data, schema)
    assert status == 0, err
    assert counts(out) == (3, 251, 251, 1)
    assert POSTGRES_DSN not in out + err
    # Idempotent: nothing is copied twice.
    status, out, err = await migrate_cli(data, schema)
    assert (status, counts(out)) == (0, (3, 251, 0, 0)), err

    # Resumable: what SQLite took since is copied on the next run.
    sqlite = await Daemon.start("--port", "0", "--data-dir", str(data))
    try:
        await push(sqlite.port, "alpha", 251, 5, before["alpha"][0])
    finally:
        await sqlite.stop()
    status, out, err = await migrate_cli(data, schema)
    assert (status, counts(out)) == (0, (3, 256, 5, 0)), err

    env = {
        "GATEWAY_STORE_BACKEND": "postgres",
        "GATEWAY_STORE_DSN": POSTGRES_DSN,
        "GATEWAY_STORE_POSTGRES_SCHEMA": schema,
        **ADMIN_ENV,
    }
    postgres = await Daemon.start("--port", "0", "--data-dir", str(tmp_path / "pg"), env=env)
    try:
        for store_id in ("beta", "empty"):
            assert await log_of(postgres.port, store_id) == before[store_id]
        backend, alpha = await log_of(postgres.port, "alpha")
        assert backend == before["alpha"][0]
        assert alpha[:250] == before["alpha"][1]
        assert [e["seqNum"] for e in alpha] == list(range(1, 256))
        # A client that synced alpha on SQLite continues on PostgreSQL from its cursor.
        client = await RpcClient.open(ws_url(postgres.port, "alpha"), "alpha")
        assert events_of(await client.pull(cursor(backend, 255))) == []
        await client.close()
        listed = await http_request(
            "GET",
            f"{await postgres.admin_url()}/v1/revocations",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert [r["subject"] for r in listed.body["revocations"]] == ["mallory"]
    finally:
        await postgres.stop()


async def test_conflicting_stores_stop_the_migration_before_any_copy(
    tmp_path: Path, schema: str
) -> None:
    data = tmp_path / "data"
    sqlite = await Daemon.start("--port", "0", "--data-dir", str(data))
    try:
        await push(sqlite.port, "clash", 1, 3)
        await push(sqlite.port, "other", 1, 3)
    finally:
        await sqlite.stop()
    status, _, err = await migrate_cli(data, schema)  # creates the schema and copies
    assert status == 0, err
    conn = await asyncpg.connect(POSTGRES_DSN, server_settings={"search_path": schema})
    try:
        await conn.execute(
            "UPDATE stores SET backend_id = $1 WHERE store_id = $2", "someone-else", "clash"
        )
        await conn.execute("DELETE FROM events WHERE store_id = $1", "other")
        await conn.execute("DELETE FROM stores WHERE store_id = $1", "other")
        status, _, err = await migrate_cli(data, schema)
        assert status == 1
        assert "conflicting stores, nothing copied" in err
        assert "clash: PostgreSQL has backendId someone-else" in err
        # "other" was not copied again: the conflict stopped everything first.
        count = await conn.fetchval("SELECT count(*) FROM stores")
        assert count == 1
    finally:
        await conn.close()


async def test_migrate_without_a_database(tmp_path: Path, schema: str) -> None:
    status, _, err = await migrate_cli(tmp_path, schema)
    assert status == 1
    assert "no database at" in err
