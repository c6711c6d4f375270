"""Importing a JSON-lines log through the admin API and ``gateway store import``: all or
nothing, keeping the backendId so clients that synced it elsewhere continue."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest

from gateway.admin.service import STAGING_PREFIX
from tests.helpers.clients import RpcClient
from tests.helpers.daemon import Daemon, run_cli, ws_url
from tests.helpers.harness import GatewayHarness, MakeGateway
from tests.helpers.http_client import HttpResult, assert_error_body, http_request
from tests.helpers.wire import cursor, events_of, make_events

ADMIN_TOKEN = "import-admin-token-0123456789abc"


@pytest.fixture(name="admin_gateway")
async def _admin_gateway(make_gateway: MakeGateway) -> GatewayHarness:
    return await make_gateway(token=ADMIN_TOKEN, listen="127.0.0.1:0")


async def call(
    gateway: GatewayHarness, method: str, path: str, body: bytes | None = None
) -> HttpResult:
    server = gateway.gw.admin_server
    assert server is not None
    return await http_request(
        method,
        f"{server.url}{path}",
        body=body,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )


async def fill(gateway: GatewayHarness, store_id: str, n: int, args_size: int = 0) -> RpcClient:
    client = await RpcClient.open(gateway.ws_url(store_id), store_id)
    for start in range(1, n + 1, 100):
        batch = make_events(start, min(100, n - start + 1), args_size=args_size)
        rid = await client.send_push(batch, None)
        assert (await client.wait_exit(rid))["exit"]["_tag"] == "Success"
    return client


def lines_of(raw: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in raw.splitlines()]


async def test_export_then_import_is_the_same_log_and_clients_continue(
    admin_gateway: GatewayHarness,
) -> None:
    source = await fill(admin_gateway, "source", 2500, args_size=200)
    exported = await call(admin_gateway, "GET", "/v1/stores/source/events")
    assert exported.status == 200
    result = await call(admin_gateway, "POST", "/v1/stores/copy/import", exported.raw)
    assert result.status == 200, result.raw
    backend = lines_of(exported.raw)[0]["backendId"]
    assert result.body == {"storeId": "copy", "backendId": backend, "head": 2500}

    again = await call(admin_gateway, "GET", "/v1/stores/copy/events")
    assert again.raw == exported.raw, "the same events, times and backendId"
    # A client that synced "source" up to 2500 continues on "copy" without a reset.
    client = await RpcClient.open(admin_gateway.ws_url("copy"), "copy")
    items = await client.pull(cursor(backend, 2500))
    assert events_of(items) == []
    rid = await client.send_push(make_events(2501, 1), backend)
    assert (await client.wait_exit(rid))["exit"]["_tag"] == "Success"
    for c in (client, source):
        await c.close()


async def test_import_refuses_an_existing_store_and_bad_logs_writing_nothing(
    admin_gateway: GatewayHarness,
) -> None:
    taken = await fill(admin_gateway, "taken", 3)
    exported = (await call(admin_gateway, "GET", "/v1/stores/taken/events")).raw
    result = await call(admin_gateway, "POST", "/v1/stores/taken/import", exported)
    assert_error_body(result, 409, "STORE_EXISTS")
    assert (await call(admin_gateway, "GET", "/v1/stores/taken")).body["head"] == 3
    # Refused before its body is read, a large import still gets its answer (not a reset).
    big = exported * 20_000
    assert len(big) > 8_000_000
    assert_error_body(
        await call(admin_gateway, "POST", "/v1/stores/taken/import", big), 409, "STORE_EXISTS"
    )

    good = exported.splitlines()
    gap = lines_of(exported)[2] | {"seqNum": 5, "parentSeqNum": 4}
    cases = {
        b"\n".join([*good[:2], orjson.dumps(gap)]): "line 3: seqNum 5 (parent 4) does not follow 2",
        b"\n".join([good[0], b"{not json"]): "line 2: not JSON",
        good[1]: "line 1: seqNum 2 (parent 1) does not follow 0",
        b"\n".join([good[0], orjson.dumps(lines_of(good[1])[0] | {"backendId": "other"})]): (
            "line 2: backendId 'other'"
        ),
        orjson.dumps({k: v for k, v in lines_of(good[0])[0].items() if k != "args"}): (
            "line 1: args is missing"
        ),
        orjson.dumps(lines_of(good[0])[0] | {"createdAt": "yesterday"}): "is not ISO 8601",
    }
    for body, why in cases.items():
        result = await call(admin_gateway, "POST", "/v1/stores/fresh/import", body)
        assert_error_body(result, 400, "BAD_REQUEST")
        assert why in result.body["error"]["message"], result.body
        assert_error_body(
            await call(admin_gateway, "GET", "/v1/stores/fresh"), 404, "STORE_NOT_FOUND"
        )
    # No half-built staging store is left behind either.
    assert await admin_gateway.gw.store.list_stores(prefix=STAGING_PREFIX) == []
    await taken.close()


async def test_an_empty_import_creates_an_empty_store_with_the_given_backend_id(
    admin_gateway: GatewayHarness,
) -> None:
    result = await call(admin_gateway, "POST", "/v1/stores/empty/import?backendId=chosen-id", b"")
    assert result.body == {"storeId": "empty", "backendId": "chosen-id", "head": 0}


async def test_an_interrupted_import_is_cleaned_up_at_the_next_start(
    admin_gateway: GatewayHarness,
) -> None:
    staging = f"{STAGING_PREFIX}half:1234"
    await admin_gateway.gw.store.create_store(staging, "b")
    listed = await call(admin_gateway, "GET", "/v1/stores")
    assert listed.body["stores"] == [], "a staging store is never listed"
    # ...but it does not cut the paging short.
    await admin_gateway.gw.store.ensure_store("real")
    first = await call(admin_gateway, "GET", "/v1/stores?limit=1")
    assert first.body == {"stores": [], "next": staging}
    rest = await call(admin_gateway, "GET", f"/v1/stores?limit=1&after={quote(staging)}")
    assert [s["storeId"] for s in rest.body["stores"]] == ["real"]
    await admin_gateway.restart()
    assert await admin_gateway.gw.store.list_stores(prefix=STAGING_PREFIX) == []


async def test_cli_export_piped_into_import(tmp_path: Path) -> None:
    daemon = await Daemon.with_admin(tmp_path, ADMIN_TOKEN)
    try:
        admin_url = await daemon.admin_url()
        client = await RpcClient.open(ws_url(daemon.port, "orig"), "orig")
        rid = await client.send_push(make_events(1, 50), None)
        assert (await client.wait_exit(rid))["exit"]["_tag"] == "Success"
        await client.close()
        url = f"ws://127.0.0.1:{daemon.port}"
        status, exported, err = await run_cli("store", "export", "orig", "--url", url)
        assert status == 0, err
        env = {"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}
        status, out, err = await run_cli(
            "store", "import", "dup", "--url", admin_url, env=env, stdin=exported.encode()
        )
        assert status == 0, err
        assert out.startswith("imported dup: head=50 backendId=")
        status, again, _ = await run_cli("store", "export", "dup", "--url", url)
        assert again == exported
        status, _, err = await run_cli(
            "store", "import", "dup", "--url", admin_url, env=env, stdin=exported.encode()
        )
        assert status == 1
        assert "409 STORE_EXISTS" in err
    finally:
        await daemon.stop()
