"""Revoking tokens through the admin API on a JWT-verifying gateway: open sessions close, the
handshake refuses, the entry survives a restart and reaches every node of a PostgreSQL log."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.exceptions import InvalidStatus

from tests.helpers.clients import RpcClient
from tests.helpers.harness import GatewayHarness, MakeGateway, postgres_nodes
from tests.helpers.http_client import HttpResult, assert_error_body, http_request, refusal_of
from tests.helpers.keys import SECRET, make_jwt, production_settings, with_token
from tests.helpers.timeouts import TIMEOUT_UNIT

ADMIN_TOKEN = "revocation-admin-token-0123456789"
STORE = "rev-store"


def settings(**more: Any) -> dict[str, Any]:
    return production_settings(ADMIN_TOKEN, **more)


async def admin(gateway: GatewayHarness, method: str, path: str, body: Any = None) -> HttpResult:
    server = gateway.gw.admin_server
    assert server is not None
    return await http_request(
        method,
        f"{server.url}{path}",
        body=None if body is None else orjson.dumps(body),
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )


async def session(gateway: GatewayHarness, token: str, instance: str = "d") -> RpcClient:
    return await RpcClient.open(gateway.ws_url(STORE, payload=with_token(token, instance)), STORE)


async def refused_code(gateway: GatewayHarness, token: str) -> tuple[int, str]:
    with pytest.raises(InvalidStatus) as info:
        await session(gateway, token)
    result = refusal_of(info.value)
    return result.status, result.body["error"]["code"]


async def closed(client: RpcClient) -> tuple[int | None, str | None]:
    async with asyncio.timeout(5 * TIMEOUT_UNIT):
        await client.ws.wait_closed()
    return client.ws.close_code, client.ws.close_reason


def old_token(subject: str, **claims: Any) -> str:
    return make_jwt(SECRET, subject, iat=int(time.time()) - 60, **claims)


async def test_revoking_a_subject_closes_its_sessions_and_refuses_its_old_tokens(
    make_gateway: MakeGateway,
) -> None:
    gateway = await make_gateway(**settings())
    alice_token, bob_token = old_token("alice"), old_token("bob")
    alice, bob = await session(gateway, alice_token), await session(gateway, bob_token)

    result = await admin(gateway, "POST", "/v1/revocations", {"subject": "alice"})
    assert result.status == 200, result.raw
    assert result.body["closed"] == 1
    entry = result.body["revocation"]
    assert entry["subject"] == "alice"
    assert entry["expiresAt"] > entry["before"] + 29 * 86400
    assert await closed(alice) == (4003, "token_revoked")
    assert bob.ws.close_code is None

    assert await refused_code(gateway, alice_token) == (401, "TOKEN_REVOKED")
    # A token issued after the revocation is accepted; so is a bypass service.
    fresh = make_jwt(SECRET, "alice", iat=int(time.time()) + 2)
    await (await session(gateway, fresh)).close()
    listed = await admin(gateway, "GET", "/v1/revocations")
    assert [r["subject"] for r in listed.body["revocations"]] == ["alice"]
    # A revoked token's retries are not guessing: they never lock the address out.
    for _ in range(8):
        assert await refused_code(gateway, alice_token) == (401, "TOKEN_REVOKED")
    await (await session(gateway, bob_token)).close()
    await bob.close()


async def test_revoking_one_token_by_jti_survives_a_restart(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway(**settings())
    leaked = old_token("carol", jti="leaked-1")
    other = old_token("carol", jti="fine-2")
    client = await session(gateway, leaked)
    result = await admin(
        gateway, "POST", "/v1/revocations", {"jti": "leaked-1", "expiresAt": time.time() + 3600}
    )
    assert (result.status, result.body["closed"]) == (200, 1)
    assert await closed(client) == (4003, "token_revoked")
    assert await refused_code(gateway, leaked) == (401, "TOKEN_REVOKED")
    await (await session(gateway, other)).close()

    await gateway.restart()
    assert await refused_code(gateway, leaked) == (401, "TOKEN_REVOKED")
    await (await session(gateway, other)).close()


async def test_bad_revocation_requests(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway(**settings())
    bodies: list[Any] = [
        None,
        [],
        {},
        {"subject": "a", "jti": "b"},
        {"subject": 5},
        {"jti": "x", "expiresAt": "soon"},
        {"subject": "a", "before": -1},
    ]
    for body in bodies:
        result = await admin(gateway, "POST", "/v1/revocations", body)
        assert_error_body(result, 400, "BAD_REQUEST")
    assert (await admin(gateway, "GET", "/v1/revocations")).body == {"revocations": []}


@pytest.mark.postgres
async def test_a_revocation_on_one_node_closes_sessions_on_the_other(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    async with postgres_nodes(make_gateway, tmp_path, **settings(reconcile_interval=60.0)) as nodes:
        token = old_token("dave")
        far = await session(nodes[1], token)
        result = await admin(nodes[0], "POST", "/v1/revocations", {"subject": "dave"})
        assert (result.status, result.body["closed"]) == (200, 0)
        # Node 2 hears of it through the notification (its periodic reload is a minute away).
        assert await closed(far) == (4003, "token_revoked")
        assert await refused_code(nodes[1], token) == (401, "TOKEN_REVOKED")
