"""The admin API over real HTTP on its own listener: auth, lockout, stores, export, sessions."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any

import orjson
import pytest

from tests.helpers.clients import RpcClient
from tests.helpers.harness import GatewayHarness, MakeGateway
from tests.helpers.http_client import (
    HttpResult,
    assert_error_body,
    http_request,
    raw_http_exchange,
)
from tests.helpers.timeouts import TIMEOUT_UNIT
from tests.helpers.wire import make_events

ADMIN_TOKEN = "admin-token-for-tests-0123456789"
BYPASS = "bypass-token-for-tests-0123456789"


@pytest.fixture(name="admin_gateway")
async def _admin_gateway(make_gateway: MakeGateway) -> GatewayHarness:
    return await make_gateway(token=ADMIN_TOKEN, listen="127.0.0.1:0", lockout_failures=3)


def admin_url(gateway: GatewayHarness, path: str) -> str:
    server = gateway.gw.admin_server
    assert server is not None
    return f"{server.url}{path}"


async def call(
    gateway: GatewayHarness,
    method: str,
    path: str,
    *,
    body: Any = None,
    token: str | None = ADMIN_TOKEN,
) -> HttpResult:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    data = None if body is None else orjson.dumps(body)
    return await http_request(method, admin_url(gateway, path), body=data, headers=headers)


async def push(gateway: GatewayHarness, store_id: str, n: int) -> RpcClient:
    client = await RpcClient.open(gateway.ws_url(store_id), store_id)
    rid = await client.send_push(make_events(1, n), None)
    frame = await client.wait_exit(rid)
    assert frame["exit"]["_tag"] == "Success", frame
    return client


async def test_admin_api_is_off_without_a_token(gateway: GatewayHarness) -> None:
    assert gateway.gw.admin_server is None


async def test_every_request_needs_the_admin_token(
    admin_gateway: GatewayHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    result = await call(admin_gateway, "GET", "/v1/stores", token=None)
    assert_error_body(result, 401, "MISSING_TOKEN")
    wrong = "x" * 40
    result = await call(admin_gateway, "GET", "/v1/stores", token=wrong)
    assert_error_body(result, 401, "INVALID_TOKEN")
    assert wrong not in caplog.text
    assert ADMIN_TOKEN not in caplog.text
    result = await call(admin_gateway, "GET", "/v1/stores")
    assert result.status == 200


async def test_failed_admin_tokens_lock_the_address_out_but_not_the_right_token(
    admin_gateway: GatewayHarness,
) -> None:
    for i in range(3):
        result = await call(admin_gateway, "GET", "/v1/stores", token=f"guess-{i}-" + "y" * 30)
        assert_error_body(result, 401, "INVALID_TOKEN")
    result = await call(admin_gateway, "GET", "/v1/stores", token="guess-9-" + "y" * 30)
    assert_error_body(result, 429, "RATE_LIMITED")
    assert int(result.headers["retry-after"]) >= 1
    # The lockout is shared with the sync endpoints (one tracker per address)...
    assert admin_gateway.gw.auth.failures.retry_after("127.0.0.1", time.time())
    # ...and never refuses the right credential.
    assert (await call(admin_gateway, "GET", "/v1/stores")).status == 200


async def test_stores_show_reset_delete(admin_gateway: GatewayHarness) -> None:
    clients = [await push(admin_gateway, s, 2) for s in ("app-1", "app-2", "zed")]
    listed = await call(admin_gateway, "GET", "/v1/stores?prefix=app-&limit=1")
    assert listed.status == 200
    assert [s["storeId"] for s in listed.body["stores"]] == ["app-1"]
    assert listed.body["next"] == "app-1"
    rest = await call(admin_gateway, "GET", "/v1/stores?prefix=app-&after=app-1")
    assert [s["storeId"] for s in rest.body["stores"]] == ["app-2"]
    assert rest.body["next"] is None

    shown = await call(admin_gateway, "GET", "/v1/stores/app-1")
    assert shown.status == 200
    assert (shown.body["head"], shown.body["liveSubscribers"]) == (2, 0)
    assert shown.body["bytes"] > 0

    reset = await call(admin_gateway, "POST", "/v1/stores/app-1/reset")
    assert reset.status == 200
    assert reset.body["head"] == 0
    assert reset.body["backendId"] != shown.body["backendId"]
    async with asyncio.timeout(5 * TIMEOUT_UNIT):
        await clients[0].ws.wait_closed()
    assert clients[0].ws.close_code == 4004

    deleted = await call(admin_gateway, "DELETE", "/v1/stores/app-2")
    assert (deleted.status, deleted.body) == (200, {"storeId": "app-2", "deleted": True})
    assert_error_body(await call(admin_gateway, "GET", "/v1/stores/app-2"), 404, "STORE_NOT_FOUND")
    assert_error_body(
        await call(admin_gateway, "DELETE", "/v1/stores/app-2"), 404, "STORE_NOT_FOUND"
    )
    assert_error_body(
        await call(admin_gateway, "POST", "/v1/stores/nope/reset"), 404, "STORE_NOT_FOUND"
    )
    await clients[2].close()


async def test_store_ids_are_percent_decoded(admin_gateway: GatewayHarness) -> None:
    client = await push(admin_gateway, "a/b c", 1)
    shown = await call(admin_gateway, "GET", "/v1/stores/a%2Fb%20c")
    assert (shown.status, shown.body["storeId"]) == (200, "a/b c")
    await client.close()


async def test_export_streams_the_log_as_json_lines(admin_gateway: GatewayHarness) -> None:
    client = await RpcClient.open(admin_gateway.ws_url("big"), "big")
    total, step = 2500, 100
    for start in range(1, total + 1, step):
        rid = await client.send_push(make_events(start, step), None)
        assert (await client.wait_exit(rid))["exit"]["_tag"] == "Success"
    result = await call(admin_gateway, "GET", "/v1/stores/big/events")
    assert result.status == 200
    assert result.content_type == "application/x-ndjson"
    assert result.headers.get("transfer-encoding") == "chunked"
    lines = [orjson.loads(line) for line in result.raw.splitlines()]
    assert [e["seqNum"] for e in lines] == list(range(1, total + 1))
    first = lines[0]
    for key in ("name", "args", "seqNum", "parentSeqNum", "clientId", "sessionId", "createdAt"):
        assert key in first, first
    assert first["createdAt"].endswith("Z")
    resumed = await call(admin_gateway, "GET", "/v1/stores/big/events?from=2400")
    assert [orjson.loads(x)["seqNum"] for x in resumed.raw.splitlines()] == list(
        range(2401, total + 1)
    )
    empty = await call(admin_gateway, "GET", "/v1/stores/big/events?from=2500")
    assert (empty.status, empty.raw) == (200, b"")
    assert_error_body(
        await call(admin_gateway, "GET", "/v1/stores/big/events?from=-1"), 400, "BAD_REQUEST"
    )
    assert_error_body(
        await call(admin_gateway, "GET", "/v1/stores/none/events"), 404, "STORE_NOT_FOUND"
    )
    await client.close()


async def test_sessions_and_disconnect(admin_gateway: GatewayHarness) -> None:
    a = await RpcClient.open(admin_gateway.ws_url("s1", payload={"instanceId": "inst-a"}), "s1")
    b = await RpcClient.open(admin_gateway.ws_url("s2", payload={"instanceId": "inst-b"}), "s2")
    listed = await call(admin_gateway, "GET", "/v1/sessions?store=s1")
    assert [(s["storeId"], s["instanceId"]) for s in listed.body["sessions"]] == [("s1", "inst-a")]
    closed = await call(admin_gateway, "POST", "/v1/sessions/disconnect", body={"store": "s1"})
    assert (closed.status, closed.body) == (200, {"closed": 1})
    async with asyncio.timeout(5 * TIMEOUT_UNIT):
        await a.ws.wait_closed()
    assert (a.ws.close_code, a.ws.close_reason) == (4004, "disconnected by operator")
    assert b.ws.close_code is None
    for bad in ({}, {"store": 5}, [1]):
        result = await call(admin_gateway, "POST", "/v1/sessions/disconnect", body=bad)
        assert_error_body(result, 400, "BAD_REQUEST")
    await b.close()


async def test_bad_requests_get_documented_codes(admin_gateway: GatewayHarness) -> None:
    assert_error_body(await call(admin_gateway, "GET", "/v2/stores"), 404, "NOT_FOUND")
    assert_error_body(await call(admin_gateway, "GET", "/v1/nothing"), 404, "NOT_FOUND")
    result = await call(admin_gateway, "PUT", "/v1/stores/x")
    assert_error_body(result, 405, "METHOD_NOT_ALLOWED")
    assert result.headers["allow"] == "GET, DELETE"
    assert_error_body(await call(admin_gateway, "GET", "/v1/stores?limit=0"), 400, "BAD_REQUEST")
    assert_error_body(await call(admin_gateway, "GET", "/v1/stores/"), 400, "BAD_STORE_ID")
    server = admin_gateway.gw.admin_server
    assert server is not None
    address = f"127.0.0.1:{server.port}"
    result = await raw_http_exchange(address, b"NONSENSE\r\n\r\n")
    assert_error_body(result, 400, "BAD_REQUEST")
    big = b"POST /v1/sessions/disconnect HTTP/1.1\r\nContent-Length: 999999\r\n\r\n"
    assert_error_body(await raw_http_exchange(address, big), 413, "PAYLOAD_TOO_LARGE")
    huge_head = b"GET /v1/stores HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n"
    assert_error_body(await raw_http_exchange(address, huge_head), 431, "HEADERS_TOO_LARGE")


async def test_the_sync_listener_does_not_answer_admin_paths(
    admin_gateway: GatewayHarness,
) -> None:
    result = await http_request(
        "GET",
        f"http://{admin_gateway.base}/v1/stores",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert result.status == 404


async def test_allowed_networks_confine_the_admin_api(make_gateway: MakeGateway) -> None:
    elsewhere = await make_gateway(
        token=ADMIN_TOKEN, listen="127.0.0.1:0", allowed_networks=("10.0.0.0/8",)
    )
    for _ in range(6):  # refused before the token is read: never a lockout
        assert_error_body(await call(elsewhere, "GET", "/v1/stores"), 403, "FORBIDDEN")
    assert elsewhere.gw.auth.failures.retry_after("127.0.0.1", time.time()) is None
    here = await make_gateway(
        token=ADMIN_TOKEN, listen="127.0.0.1:0", allowed_networks=("127.0.0.0/8", "::1")
    )
    assert (await call(here, "GET", "/v1/stores")).status == 200


async def test_a_reload_rotates_or_empties_the_admin_token(admin_gateway: GatewayHarness) -> None:
    rotated = "rotated-admin-token-0123456789abcdef"
    config = admin_gateway.gw.config
    await admin_gateway.gw.reload(replace(config, admin=replace(config.admin, token=rotated)))
    assert_error_body(await call(admin_gateway, "GET", "/v1/stores"), 401, "INVALID_TOKEN")
    assert (await call(admin_gateway, "GET", "/v1/stores", token=rotated)).status == 200
    await admin_gateway.gw.reload(replace(config, admin=replace(config.admin, token="")))
    result = await call(admin_gateway, "GET", "/v1/stores", token=rotated)
    assert_error_body(result, 403, "FORBIDDEN")
    assert "disabled" in result.body["error"]["message"]
