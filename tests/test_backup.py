"""``gateway backup``: a consistent copy of the SQLite log taken while the server pushes.

The backup is restored the way the README says (the file as ``gateway.sqlite3`` in a new data
directory) and served by a real daemon: it must hold every event acked before the backup
began, as a gapless chain with the source's backendId and bytes.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path
from typing import Any

from tests.helpers.clients import RpcClient
from tests.helpers.daemon import Daemon, run_cli, write_toml, ws_url
from tests.helpers.wire import events_of, make_events

STORE = "backup-store"
MAX_PUSHES = 3000


async def pusher(port: int, acked: list[int], enough: asyncio.Event, stop: asyncio.Event) -> None:
    """Push single events back to back until ``stop`` (at most MAX_PUSHES), recording acks."""
    client = await RpcClient.open(ws_url(port, STORE), STORE)
    try:
        for seq in range(1, MAX_PUSHES + 1):
            if stop.is_set():
                return
            rid = await client.send_push(make_events(seq, 1), None)
            frame = await client.wait_exit(rid)
            assert frame["exit"]["_tag"] == "Success", frame
            acked.append(seq)
            if seq >= 100:
                enough.set()
    finally:
        await client.close()


async def read_log(port: int) -> tuple[str, list[dict[str, Any]]]:
    client = await RpcClient.open(ws_url(port, STORE), STORE)
    try:
        items = await client.pull()
        return items[0]["backendId"], events_of(items)
    finally:
        await client.close()


async def test_backup_under_push_load_restores_every_acked_event(tmp_path: Path) -> None:
    data = tmp_path / "data"
    target = tmp_path / "backups" / "gateway-backup.sqlite3"
    target.parent.mkdir()
    daemon = await Daemon.start("--port", "0", "--data-dir", str(data))
    acked: list[int] = []
    enough, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(pusher(daemon.port, acked, enough, stop))
    try:
        async with asyncio.timeout(30):
            await enough.wait()
        acked_before = len(acked)
        status, out, err = await run_cli("backup", "--to", str(target), "--data-dir", str(data))
        acked_after = len(acked)
        stop.set()
        await task
        assert status == 0, err
        assert f"backup written to {target}: stores=1 events=" in out
        source_backend, source_events = await read_log(daemon.port)
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        await daemon.stop()

    # One self-contained file: no -wal to carry along.
    assert not target.with_name(target.name + "-wal").exists()
    assert not target.with_name(target.name + ".partial").exists()

    restored = tmp_path / "restored"
    restored.mkdir()
    shutil.copy(target, restored / "gateway.sqlite3")
    daemon = await Daemon.start("--port", "0", "--data-dir", str(restored))
    try:
        backend, events = await read_log(daemon.port)
    finally:
        await daemon.stop()
    seqs = [event["seqNum"] for event in events]
    assert seqs == list(range(1, len(seqs) + 1)), "a gapless chain"
    # Every event acked before the backup began; nothing that was not yet pushed after it.
    assert acked_before <= len(seqs) <= acked_after + 1
    assert backend == source_backend
    assert events == source_events[: len(events)]


async def test_backup_refuses_to_replace_a_file_unless_forced(tmp_path: Path) -> None:
    data = tmp_path / "data"
    daemon = await Daemon.start("--port", "0", "--data-dir", str(data))
    try:
        await read_log(daemon.port)  # creates the store
    finally:
        await daemon.stop()
    target = tmp_path / "b.sqlite3"
    target.write_bytes(b"an earlier backup")

    status, _, err = await run_cli("backup", "--to", str(target), "--data-dir", str(data))
    assert status == 1
    assert "exists (use --force" in err
    assert target.read_bytes() == b"an earlier backup", "nothing written"

    status, _, err = await run_cli(
        "backup", "--to", str(target), "--data-dir", str(data), "--force"
    )
    assert status == 0, err
    with sqlite3.connect(target) as conn:
        assert conn.execute("SELECT store_id FROM stores").fetchall() == [(STORE,)]


async def test_backup_of_what_is_not_a_gateway_database_fails_cleanly(tmp_path: Path) -> None:
    target = tmp_path / "b.sqlite3"
    status, _, err = await run_cli("backup", "--to", str(target), "--data-dir", str(tmp_path))
    assert status == 1
    assert "no database at" in err

    (tmp_path / "gateway.sqlite3").write_bytes(b"not sqlite at all" * 100)
    status, _, err = await run_cli("backup", "--to", str(target), "--data-dir", str(tmp_path))
    assert status == 1
    assert "backup failed" in err

    other = tmp_path / "other"
    other.mkdir()
    with sqlite3.connect(other / "gateway.sqlite3") as conn:
        conn.execute("CREATE TABLE t (x)")
    status, _, err = await run_cli("backup", "--to", str(target), "--data-dir", str(other))
    assert status == 1
    assert "not a gateway database" in err
    assert not target.exists()
    assert not target.with_name(target.name + ".partial").exists()


async def test_backup_with_the_postgres_backend_points_at_pg_dump(tmp_path: Path) -> None:
    config = write_toml(
        tmp_path / "gateway.toml", {"store": {"backend": "postgres", "dsn": "postgresql://x/y"}}
    )
    status, _, err = await run_cli("backup", "--to", str(tmp_path / "b"), "--config", str(config))
    assert status == 2
    assert "pg_dump" in err
    assert "postgresql://x/y" not in err, "the DSN may hold a password"
