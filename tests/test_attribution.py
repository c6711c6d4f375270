"""Attribution: every stored event records who pushed it (subject, instanceId, auth reason)
and when; the operator sees it in exports; it survives restarts, imports and two nodes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.client import Writer, connect
from tests.helpers.clients import RpcClient
from tests.helpers.harness import GatewayHarness, MakeGateway, postgres_nodes
from tests.helpers.http_client import http_push, http_request
from tests.helpers.keys import BYPASS, SECRET, make_jwt, production_settings, with_token
from tests.helpers.wire import make_events

ADMIN_TOKEN = "attribution-admin-token-01234567"
STORE = "attributed"


def settings(**more: Any) -> dict[str, Any]:
    return production_settings(ADMIN_TOKEN, **more)


async def export(gateway: GatewayHarness, store_id: str = STORE) -> list[dict[str, Any]]:
    server = gateway.gw.admin_server
    assert server is not None
    result = await http_request(
        "GET",
        f"{server.url}/v1/stores/{store_id}/events",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert result.status == 200, result.raw
    return [orjson.loads(line) for line in result.raw.splitlines()]


async def ws_push(gateway: GatewayHarness, payload: dict[str, Any], start: int, n: int) -> None:
    client = await RpcClient.open(gateway.ws_url(STORE, payload=payload), STORE)
    rid = await client.send_push(make_events(start, n), None)
    assert (await client.wait_exit(rid))["exit"]["_tag"] == "Success"
    await client.close()


def writers(lines: list[dict[str, Any]]) -> list[tuple[str, str, str] | None]:
    found: list[tuple[str, str, str] | None] = []
    for line in lines:
        writer = line["writer"]
        found.append(
            None if writer is None else (writer["subject"], writer["instanceId"], writer["reason"])
        )
    return found


async def test_each_push_is_attributed_to_its_session(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway(**settings())
    alice = with_token(make_jwt(SECRET, "alice"), "alice-phone")
    await ws_push(gateway, alice, 1, 2)
    await ws_push(gateway, {"instanceId": "indexer", "serverBypass": BYPASS}, 3, 1)
    bob = with_token(make_jwt(SECRET, "bob"), "bob-laptop")
    frame = await http_push(gateway.http_url(STORE, payload=bob), STORE, make_events(4, 1))
    assert frame["exit"]["_tag"] == "Success", frame
    expired = with_token(make_jwt(SECRET, "carol", ttl=-60), "carol-tab")
    await ws_push(gateway, expired, 5, 1)

    lines = await export(gateway)
    assert writers(lines) == [
        ("alice", "alice-phone", "jwt"),
        ("alice", "alice-phone", "jwt"),
        ("server", "indexer", "bypass"),
        ("bob", "bob-laptop", "jwt"),
        ("carol", "carol-tab", "jwt_grace"),
    ]
    for line in lines:
        assert line["writer"]["receivedAt"] == line["createdAt"]
    # Nothing of it on the LiveStore wire: a pull's events are what the clients pushed.
    client = await RpcClient.open(gateway.ws_url(STORE, payload=alice), STORE)
    items = await client.pull()
    await client.close()
    assert all("writer" not in entry["eventEncoded"] for entry in items[0]["batch"])
    assert set(items[0]["batch"][0]["metadata"]["value"]) == {"_tag", "createdAt"}

    await gateway.restart()
    assert await export(gateway) == lines


async def test_import_keeps_the_writers(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway(**settings())
    await ws_push(gateway, with_token(make_jwt(SECRET, "dora"), "d-1"), 1, 3)
    lines = await export(gateway)
    server = gateway.gw.admin_server
    assert server is not None
    body = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    result = await http_request(
        "POST",
        f"{server.url}/v1/stores/copy/import",
        body=body,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert result.status == 200, result.raw
    assert await export(gateway, "copy") == lines


@pytest.mark.postgres
async def test_attribution_is_the_same_on_two_postgres_nodes(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    async with postgres_nodes(make_gateway, tmp_path, **settings()) as nodes:
        await ws_push(nodes[0], with_token(make_jwt(SECRET, "erin"), "e-1"), 1, 2)
        await ws_push(nodes[1], {"instanceId": "svc", "serverBypass": BYPASS}, 3, 1)
        first, second = await export(nodes[0]), await export(nodes[1])
        assert first == second
        assert writers(first) == [
            ("erin", "e-1", "jwt"),
            ("erin", "e-1", "jwt"),
            ("server", "svc", "bypass"),
        ]


def metadata_writers(items: list[dict[str, Any]]) -> list[object]:
    return [entry["metadata"]["value"].get("writer") for item in items for entry in item["batch"]]


async def test_services_see_who_pushed_each_event_and_apps_do_not(
    make_gateway: MakeGateway,
) -> None:
    """A bypass session's pulls (catch-up and live) carry the writer in each event's
    metadata; a JWT session's never do; the Python client and its CLI show it."""
    gateway = await make_gateway(**settings())
    alice = with_token(make_jwt(SECRET, "alice"), "alice-phone")
    await ws_push(gateway, alice, 1, 2)
    service = {"instanceId": "indexer", "serverBypass": BYPASS}
    svc = await RpcClient.open(gateway.ws_url(STORE, payload=service), STORE)
    app = await RpcClient.open(gateway.ws_url(STORE, payload=alice), STORE)
    svc_rid, svc_items = await svc.live_pull()
    app_rid, app_items = await app.live_pull()
    signed = {"subject": "alice", "instanceId": "alice-phone", "reason": "jwt"}
    assert metadata_writers(svc_items) == [signed, signed]
    assert metadata_writers(app_items) == [None, None]

    await ws_push(gateway, with_token(make_jwt(SECRET, "bob"), "bob-tab"), 3, 1)
    live = await svc.next_items(svc_rid)
    assert metadata_writers(live) == [{"subject": "bob", "instanceId": "bob-tab", "reason": "jwt"}]
    plain = await app.next_items(app_rid)
    assert metadata_writers(plain) == [None]
    assert plain[0]["batch"][0]["eventEncoded"] == live[0]["batch"][0]["eventEncoded"]
    for client in (svc, app):
        await client.close()

    async with connect(f"ws://{gateway.base}", STORE, bypass_token=BYPASS) as store:
        events = [e async for batch in store.events(live=False) for e in batch.events]
    assert [e.writer for e in events] == [
        Writer("alice", "alice-phone", "jwt"),
        Writer("alice", "alice-phone", "jwt"),
        Writer("bob", "bob-tab", "jwt"),
    ]
    jwt = make_jwt(SECRET, "carol")
    async with connect(f"ws://{gateway.base}", STORE, auth_token=jwt) as store:
        events = [e async for batch in store.events(live=False) for e in batch.events]
    assert [e.writer for e in events] == [None, None, None]


@pytest.mark.postgres
async def test_a_service_on_another_node_sees_the_writer(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    async with postgres_nodes(make_gateway, tmp_path, **settings()) as nodes:
        service = {"instanceId": "indexer", "serverBypass": BYPASS}
        svc = await RpcClient.open(nodes[1].ws_url(STORE, payload=service), STORE)
        rid, _ = await svc.live_pull()
        await ws_push(nodes[0], with_token(make_jwt(SECRET, "fay"), "f-1"), 1, 1)
        live = await svc.next_items(rid)
        assert metadata_writers(live) == [{"subject": "fay", "instanceId": "f-1", "reason": "jwt"}]
        await svc.close()
