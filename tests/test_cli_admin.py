"""The operator's CLI on the admin API, run as a subprocess against a real daemon."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers.clients import RpcClient
from tests.helpers.daemon import Daemon, run_cli, write_toml, ws_url
from tests.helpers.wire import make_events

ADMIN_TOKEN = "cli-admin-token-0123456789abcdef"


class Admin:
    def __init__(self, daemon: Daemon, url: str) -> None:
        self.daemon = daemon
        self.url = url

    async def cli(
        self, *args: str, token: str | None = ADMIN_TOKEN, stdin: bytes | None = None
    ) -> tuple[int, str, str]:
        env = {} if token is None else {"GATEWAY_ADMIN_TOKEN": token}
        return await run_cli(*args, "--url", self.url, env=env, stdin=stdin)

    async def push(self, store_id: str, n: int) -> RpcClient:
        client = await RpcClient.open(ws_url(self.daemon.port, store_id), store_id)
        rid = await client.send_push(make_events(1, n), None)
        assert (await client.wait_exit(rid))["exit"]["_tag"] == "Success"
        return client


@pytest.fixture(name="admin")
async def _admin(tmp_path: Path) -> AsyncIterator[Admin]:
    daemon = await Daemon.with_admin(tmp_path, ADMIN_TOKEN)
    try:
        yield Admin(daemon, await daemon.admin_url())
    finally:
        await daemon.stop()


async def test_stores_show_reset_delete(admin: Admin) -> None:
    clients = [await admin.push(store_id, 3) for store_id in ("team-1", "team-2", "solo")]
    status, out, err = await admin.cli("stores", "--prefix", "team-")
    assert status == 0, err
    lines = out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["team-1", "team-2"]
    assert "head=3" in lines[0]

    status, out, _ = await admin.cli("store", "show", "solo")
    assert status == 0
    assert '"head": 3' in out

    # Destructive commands need --yes without a terminal, and do nothing otherwise.
    status, _, err = await admin.cli("store", "reset", "team-1")
    assert status == 2
    assert "--yes" in err
    status, out, err = await admin.cli("store", "reset", "team-1", "--yes")
    assert status == 0, err
    assert out.startswith("reset team-1: backendId=")
    status, out, err = await admin.cli("store", "delete", "team-2", "--yes")
    assert (status, out.strip()) == (0, "deleted team-2")
    status, out, _ = await admin.cli("stores")
    assert [line.split("\t")[0] for line in out.splitlines()] == ["solo", "team-1"]
    assert "head=0" in out.splitlines()[1]

    status, _, err = await admin.cli("store", "show", "team-2")
    assert status == 7
    assert "404 STORE_NOT_FOUND" in err
    for client in clients:
        await client.close()


async def test_sessions_and_disconnect(admin: Admin) -> None:
    client = await RpcClient.open(
        ws_url(admin.daemon.port, "s", payload={"instanceId": "svc-7"}), "s"
    )
    status, out, err = await admin.cli("sessions", "--store", "s")
    assert status == 0, err
    assert "store=s" in out
    assert "instance=svc-7" in out
    status, _, err = await admin.cli("disconnect")
    assert status == 2
    assert "needs --store" in err
    status, out, err = await admin.cli("disconnect", "--instance", "svc-7", "--yes")
    assert (status, out.strip()) == (0, "closed 1 sessions"), err
    await client.ws.wait_closed()
    assert client.ws.close_code == 4004


async def test_wrong_or_missing_token_and_unreachable_server(admin: Admin) -> None:
    wrong = "w" * 32
    status, out, err = await admin.cli("stores", token=wrong)
    assert status == 4
    assert "401 INVALID_TOKEN" in err
    assert wrong not in err + out
    status, _, err = await admin.cli("stores", token=None)
    assert status == 2
    assert "GATEWAY_ADMIN_TOKEN" in err
    status, _, err = await run_cli(
        "stores", "--url", "http://127.0.0.1:9", env={"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}
    )
    assert status == 5
    assert "cannot reach http://127.0.0.1:9" in err


async def test_url_and_token_come_from_the_configuration(admin: Admin, tmp_path: Path) -> None:
    token_file = tmp_path / "admin_token"
    token_file.write_text(ADMIN_TOKEN + "\n")
    listen = admin.url.removeprefix("http://")
    config = write_toml(
        tmp_path / "gateway.toml", {"admin": {"token_file": str(token_file), "listen": listen}}
    )
    client = await admin.push("configured", 1)
    status, out, err = await run_cli("stores", "--config", str(config))
    assert status == 0, err
    assert out.startswith("configured\t")
    await client.close()


async def test_revoke_and_list_revocations(admin: Admin) -> None:
    status, out, err = await admin.cli(
        "revoke", "--sub", "alice", "--before", "2026-12-01T00:00:00Z"
    )
    assert status == 0, err
    assert out.startswith("revoked subject alice before 2026-12-01T00:00:00Z; kept until ")
    assert out.rstrip().endswith("closed 0 sessions")
    status, out, err = await admin.cli("revoke", "--jti", "tok-9", "--expires", "1900000000")
    assert status == 0, err
    status, out, _ = await admin.cli("revocations")
    entries = [json.loads(line) for line in out.splitlines()]
    assert [(e["subject"], e["jti"]) for e in entries] == [("alice", None), (None, "tok-9")]
    assert entries[0]["before"] == 1_796_083_200.0  # 2026-12-01T00:00:00Z
    status, _, err = await admin.cli("revoke", "--sub", "x", "--expires", "5")
    assert status == 2
    assert "--expires goes with --jti" in err
    status, _, err = await admin.cli("revoke", "--sub", "x", "--before", "yesterday")
    assert status == 2
    assert "not a time" in err
