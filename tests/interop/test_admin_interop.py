"""An operator resets a store that a real LiveStore 0.4.0 app is syncing.

The app's session is closed (4004), it reconnects, its pull names the old backendId, and
LiveStore does what it does on ``BackendIdMismatchError`` (``onBackendIdMismatch: 'reset'``,
the default): it clears its local data and shuts the store down. An app started afterwards
syncs the new log from scratch, from seqNum 1.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers.daemon import run_cli
from tests.helpers.http_client import http_request
from tests.helpers.postgres import POSTGRES_DSN, drop_schema, fresh_schema, require_postgres
from tests.interop.test_interop import (
    ClientError,
    ClientFactory,
    GatewayProcess,
    _client_pool,
    _interop_prerequisites,  # noqa: F401 - the autouse skip/fail on missing node packages
    _store_id,  # noqa: F401 - the store_id fixture
    event_ids,
    ids,
    row_ids,
)

pytestmark = [pytest.mark.interop, pytest.mark.timeout(90)]

ADMIN_TOKEN = "interop-admin-token-0123456789abc"
ADMIN_LINE = re.compile(r"admin API listening on (?P<url>http://\S+)")


@pytest.fixture(name="admin_gateway")
async def _admin_gateway(tmp_path: Path) -> AsyncIterator[GatewayProcess]:
    gateway = GatewayProcess(
        tmp_path / "data",
        {"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN, "GATEWAY_ADMIN_LISTEN": "127.0.0.1:0"},
    )
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()
        print(f"gateway log tail:\n{gateway.log_tail(200)}")


@pytest.fixture(name="admin_clients")
async def _admin_clients(admin_gateway: GatewayProcess) -> AsyncIterator[ClientFactory]:
    async with _client_pool(admin_gateway) as factory:
        yield factory


async def admin_call(gateway: GatewayProcess, method: str, path: str) -> dict[str, object]:
    (line,) = gateway.log_lines(ADMIN_LINE.pattern)
    match = ADMIN_LINE.search(line)
    assert match is not None
    result = await http_request(
        method, match["url"] + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert result.status == 200, result.raw
    assert isinstance(result.body, dict)
    return result.body


async def test_a_store_reset_resets_the_real_client_and_it_syncs_again_from_scratch(
    admin_gateway: GatewayProcess, admin_clients: ClientFactory, store_id: str
) -> None:
    app = await admin_clients("app-a", store_id=store_id)
    await app.commit("A", 3)
    await app.wait_rows(3)
    before = await admin_call(admin_gateway, "GET", f"/v1/stores/{store_id}")
    assert before["head"] == 3

    reset = await admin_call(admin_gateway, "POST", f"/v1/stores/{store_id}/reset")
    assert reset["backendId"] != before["backendId"]
    # The app learns the new identity on its next pull and resets itself (LiveStore's
    # default): it clears its local data and its store shuts down.
    with pytest.raises(ClientError, match="backend-id-mismatch"):
        await app.cmd("wait", rows=99, timeout=30)
    await admin_gateway.wait_log(rf"closing store={store_id} .*: store reset")

    # A new app on the same store syncs the new log from seqNum 1.
    fresh = await admin_clients("app-b", store_id=store_id)
    await fresh.commit("B", 2)
    await fresh.wait_rows(2)
    dump = await fresh.dump()
    assert event_ids(dump) == ids("B", 1, 2)
    assert row_ids(dump) == ids("B", 1, 2)
    assert [event["seqNum"] for event in dump["events"]] == [1, 2]
    after = await admin_call(admin_gateway, "GET", f"/v1/stores/{store_id}")
    assert (after["backendId"], after["head"]) == (reset["backendId"], 2)


@pytest.mark.postgres
async def test_a_client_that_synced_on_sqlite_continues_on_postgres_after_migrate(
    tmp_path: Path, store_id: str
) -> None:
    """The app keeps running while its server is stopped, migrated and started again on
    PostgreSQL on the same port: it reconnects, its cursor's backendId is still the store's,
    so it does not reset, and its next commits land on top of the migrated log."""
    await require_postgres()
    schema = fresh_schema()
    gateway = GatewayProcess(tmp_path / "data")
    await gateway.start()
    try:
        async with _client_pool(gateway) as clients:
            app = await clients("app-m", store_id=store_id)
            await app.commit("M", 3)
            await app.wait_rows(3)
            port = gateway.port
            assert await gateway.stop() == 0
            status, out, err = await run_cli(
                "migrate",
                "--to",
                POSTGRES_DSN,
                "--data-dir",
                str(tmp_path / "data"),
                "--schema",
                schema,
            )
            assert status == 0, err
            assert "verified" in out
            gateway.data_dir = tmp_path / "pg-data"
            gateway.env.update(
                {
                    "GATEWAY_STORE_BACKEND": "postgres",
                    "GATEWAY_STORE_DSN": POSTGRES_DSN,
                    "GATEWAY_STORE_POSTGRES_SCHEMA": schema,
                }
            )
            await gateway.start(port=port)
            await app.commit("M", 2, start=4)
            await app.wait_rows(5)
            dump = await app.dump()
            assert event_ids(dump) == ids("M", 1, 5)
            assert [event["seqNum"] for event in dump["events"]] == [1, 2, 3, 4, 5]
            # A second app boots from the PostgreSQL log alone.
            other = await clients("app-n", store_id=store_id)
            await other.wait_rows(5)
            assert event_ids(await other.dump()) == ids("M", 1, 5)
    finally:
        await gateway.stop()
        await drop_schema(schema)
