"""§14 conformance, "HTTP": cases 35 to 40."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest

from gateway.admission import Admission, PayloadContext
from gateway.errors import Refusal, RefusalCode
from tests.helpers.clients import Connect
from tests.helpers.harness import GatewayHarness, ValidatorGateway
from tests.helpers.http_client import (
    HttpResult,
    assert_error_body,
    http_keepalive_posts,
    http_post_json,
    http_push,
    http_request,
    http_rpc,
)
from tests.helpers.timeouts import TIMEOUT_UNIT
from tests.helpers.wire import (
    HTTP_PING,
    HTTP_PULL,
    HTTP_PUSH,
    NO_MORE,
    NONE,
    assert_die,
    assert_fail,
    assert_pull_response,
    assert_push_ok,
    assert_stream_success,
    cursor,
    events_of,
    is_chunk,
    make_events,
    new_store_id,
    request_frame,
    seqs_of,
)

pytestmark = pytest.mark.timeout(60 * TIMEOUT_UNIT)


async def _http_pull(
    gw: GatewayHarness, store: str, start: dict[str, Any] | None = None, rid: str = "2"
) -> list[Any]:
    """An HTTP pull: assert ``[Chunk…, Exit Success]`` and return the PullResponse items."""
    payload = {"storeId": store, "cursor": NONE if start is None else start}
    result = await http_rpc(gw.http_url(store), HTTP_PULL, payload, rid)
    *chunks, last = result.body
    assert last["requestId"] == rid, result.body
    assert_stream_success(last)
    items = []
    for chunk in chunks:
        assert is_chunk(chunk, rid), chunk
        assert chunk["values"], chunk
        items.extend(chunk["values"])
    assert items, result.body
    for item in items:
        assert_pull_response(item)
    assert items[-1]["pageInfo"] == NO_MORE
    return items


def _pong(rid: str) -> list[dict[str, Any]]:
    return [
        {
            "_tag": "Exit",
            "requestId": rid,
            "exit": {"_tag": "Success", "value": {"_tag": "SyncMessage.Pong"}},
        }
    ]


@pytest.mark.parametrize("rid", ["0", "17"])
async def test_case_35_http_ping(gateway: GatewayHarness, rid: str) -> None:
    """An HTTP Ping answers 200 JSON ``[Exit Success {"_tag":"SyncMessage.Pong"}]``."""
    store = new_store_id()
    result = await http_rpc(gateway.http_url(store), HTTP_PING, {"storeId": store}, rid)
    assert result.body == _pong(rid)


async def test_case_35_http_pings_over_one_keepalive_connection(gateway: GatewayHarness) -> None:
    """Several RPC POSTs on one keep-alive connection (as fetch sends them) each get answered."""
    store = new_store_id()
    requests = [request_frame(str(i), HTTP_PING, {"storeId": store}) for i in range(3)]
    requests.append(request_frame("3", HTTP_PULL, {"storeId": store, "cursor": NONE}))
    results = await http_keepalive_posts(gateway.http_url(store), requests)
    for i, result in enumerate(results[:3]):
        assert result.status == 200, result
        assert result.body == _pong(str(i))
    assert results[3].status == 200
    assert_stream_success(results[3].body[-1])


async def test_case_36_http_pull_follows_ws_paging(gateway: GatewayHarness) -> None:
    """HTTP Pull answers [Chunk…, Exit Success] with the paging rules of cases 6, 7, 9-12."""
    store = new_store_id()
    empty = await _http_pull(gateway, store)
    backend_id = empty[0]["backendId"]
    assert isinstance(backend_id, str)
    assert backend_id
    assert empty == [{"batch": [], "pageInfo": NO_MORE, "backendId": backend_id}]

    pushed = make_events(1, 250)
    for start in range(0, 250, 100):
        assert_push_ok(await http_push(gateway.http_url(store), store, pushed[start : start + 100]))

    items = await _http_pull(gateway, store)
    assert [len(item["batch"]) for item in items] == [100, 100, 50]
    assert [item["pageInfo"] for item in items] == [
        {"_tag": "MoreKnown", "remaining": 150},
        {"_tag": "MoreKnown", "remaining": 50},
        NO_MORE,
    ]
    assert events_of(items) == pushed
    assert {item["backendId"] for item in items} == {backend_id}

    assert events_of(await _http_pull(gateway, store, cursor(backend_id, 247))) == pushed[247:]
    for at in (250, 1000):
        assert await _http_pull(gateway, store, cursor(backend_id, at)) == [
            {"batch": [], "pageInfo": NO_MORE, "backendId": backend_id}
        ]

    payload = {"storeId": store, "cursor": cursor("wrong", 3)}
    result = await http_rpc(gateway.http_url(store), HTTP_PULL, payload, "9")
    assert len(result.body) == 1, result.body
    assert result.body[0]["requestId"] == "9"
    error = assert_fail(result.body[0], "BackendIdMismatchError")
    assert error == {"_tag": "BackendIdMismatchError", "expected": backend_id, "received": "wrong"}


async def test_case_37_http_push_answers_one_exit(gateway: GatewayHarness) -> None:
    """HTTP Push success, ServerAheadError and BackendIdMismatchError each answer one Exit."""
    store = new_store_id()
    ok = await http_push(gateway.http_url(store), store, make_events(1, 2))
    assert ok == {"_tag": "Exit", "requestId": "3", "exit": {"_tag": "Success", "value": {}}}

    stale = await http_push(gateway.http_url(store), store, make_events(2, 1, 1, client_id="stale"))
    assert assert_fail(stale, "ServerAheadError") == {
        "_tag": "ServerAheadError",
        "minimumExpectedNum": 2,
        "providedNum": 1,
    }

    backend_id = (await _http_pull(gateway, store))[0]["backendId"]
    wrong = await http_push(gateway.http_url(store), store, make_events(3, 1), "wrong")
    assert assert_fail(wrong, "BackendIdMismatchError") == {
        "_tag": "BackendIdMismatchError",
        "expected": backend_id,
        "received": "wrong",
    }
    assert seqs_of(await _http_pull(gateway, store)) == [1, 2]
    assert_push_ok(await http_push(gateway.http_url(store), store, make_events(3, 1), backend_id))
    assert_push_ok(await http_push(gateway.http_url(store), store, []))
    assert seqs_of(await _http_pull(gateway, store)) == [1, 2, 3]


async def test_case_38_http_and_ws_share_one_log(gateway: GatewayHarness, connect: Connect) -> None:
    """An HTTP push reaches WS live pulls, and a WS push shows up in the next HTTP poll."""
    store = new_store_id()
    ws = await connect(gateway, store)
    live_rid, catch_up = await ws.live_pull()
    backend_id = catch_up[0]["backendId"]

    over_http = make_events(1, 2, client_id="http-client")
    assert_push_ok(await http_push(gateway.http_url(store), store, over_http))
    assert await ws.live_events(live_rid, 2) == over_http

    over_ws = make_events(3, 1, client_id="ws-client")
    await ws.push_ok(over_ws, backend_id)
    assert await ws.live_events(live_rid, 3) == over_ws
    assert events_of(await _http_pull(gateway, store, cursor(backend_id, 2))) == over_ws
    assert events_of(await _http_pull(gateway, store)) == over_http + over_ws


def _url(gw: GatewayHarness, query: str) -> str:
    return f"http://{gw.base}/?{query}"


@pytest.mark.parametrize("raw_payload", ["%7Bnot-json", "%257Bnot-json", "%25"])
async def test_case_39_every_http_request_is_validated(
    gateway: GatewayHarness, raw_payload: str
) -> None:
    """Each HTTP RPC (Ping, Pull, Push) with an undecodable payload answers 400, storing nothing."""
    store = new_store_id()
    bad = _url(gateway, f"storeId={quote(store)}&payload={raw_payload}&transport=http")
    for tag, payload in (
        (HTTP_PING, {"storeId": store}),
        (HTTP_PULL, {"storeId": store, "cursor": NONE}),
        (HTTP_PUSH, {"storeId": store, "batch": make_events(1, 1), "backendId": NONE}),
    ):
        result = await http_post_json(bad, request_frame("1", tag, payload))
        assert_error_body(result, 400, "BAD_PAYLOAD")
    assert events_of(await _http_pull(gateway, store)) == []

    # A decodable payload is accepted on every request, and travels in the RPC payload too.
    good = gateway.http_url(store, payload={"authToken": "good"})
    body = {
        "storeId": store,
        "payload": {"authToken": "good"},
        "batch": make_events(1, 1),
        "backendId": NONE,
    }
    result = await http_post_json(good, request_frame("4", HTTP_PUSH, body))
    assert result.status == 200, result
    assert_push_ok(result.body[0])


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("transport=http", "MISSING_STORE_ID"),
        ("storeId=STORE&transport=carrier-pigeon", "BAD_TRANSPORT"),
        ("storeId=STORE&payload=%7B&transport=http", "BAD_PAYLOAD"),
    ],
)
async def test_case_39_non_sync_posts_are_refused(
    gateway: GatewayHarness, query: str, code: str
) -> None:
    """A POST without storeId, with an unknown transport or a bad payload answers 400."""
    url = _url(gateway, query.replace("STORE", quote(new_store_id())))
    result = await http_post_json(url, request_frame("1", HTTP_PING, {"storeId": "x"}))
    assert_error_body(result, 400, code)


@pytest.mark.parametrize(
    "requested",
    ["content-type,x-livestore-store-id", "content-type, x-livestore-store-id, authorization"],
)
async def test_case_40_cors_preflight(gateway: GatewayHarness, requested: str) -> None:
    """OPTIONS answers 204 with CORS headers allowing the browser client's request headers."""
    store = new_store_id()
    result: HttpResult = await http_request(
        "OPTIONS",
        gateway.http_url(store),
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": requested,
        },
    )
    assert result.status == 204, result
    assert result.headers.get("access-control-allow-origin") == "*", result.headers
    methods = {
        m.strip().upper() for m in result.headers.get("access-control-allow-methods", "").split(",")
    }
    assert "POST" in methods, result.headers
    allowed = {
        h.strip().lower() for h in result.headers.get("access-control-allow-headers", "").split(",")
    }
    wanted = {h.strip().lower() for h in requested.split(",")}
    assert wanted <= allowed, result.headers
    assert {"content-type", "x-livestore-store-id"} <= allowed


async def test_case_40_cors_headers_on_posts(gateway: GatewayHarness) -> None:
    """A browser can read POST answers: success and refusals carry Access-Control-Allow-Origin."""
    store = new_store_id()
    browser = {"Origin": "https://app.example", "x-livestore-store-id": store}
    ok = await http_post_json(
        gateway.http_url(store), request_frame("0", HTTP_PING, {"storeId": store}), headers=browser
    )
    assert ok.status == 200, ok
    assert ok.headers.get("access-control-allow-origin") == "*", ok.headers
    bad_url = _url(gateway, f"storeId={quote(store)}&payload=%7B&transport=http")
    refused = await http_post_json(
        bad_url, request_frame("1", HTTP_PING, {"storeId": store}), headers=browser
    )
    assert_error_body(refused, 400, "BAD_PAYLOAD")
    assert refused.headers.get("access-control-allow-origin") == "*", refused.headers


async def test_case_39_validator_runs_on_every_http_request(
    gateway_with_validator: ValidatorGateway,
) -> None:
    """The validator runs once per HTTP POST with the decoded payload and lower-cased headers."""
    seen: list[PayloadContext] = []

    async def hook(context: PayloadContext) -> Admission | Refusal:
        seen.append(context)
        if context.payload == {"authToken": "good"}:
            return Admission()
        return Refusal(code=RefusalCode.FORBIDDEN, message="invalid auth token")

    gw = await gateway_with_validator(hook)
    store = new_store_id()
    good = gw.http_url(store, payload={"authToken": "good"})
    bad = gw.http_url(store, payload={"authToken": "bad"})
    headers = {"Authorization": "Bearer abc", "X-Livestore-Store-Id": store}
    push = {
        "storeId": store,
        "payload": {"authToken": "bad"},
        "batch": make_events(1, 1),
        "backendId": NONE,
    }

    for i, (tag, payload) in enumerate(
        ((HTTP_PING, {"storeId": store}), (HTTP_PULL, {"storeId": store, "cursor": NONE}))
    ):
        result = await http_post_json(good, request_frame(str(i), tag, payload), headers=headers)
        assert result.status == 200, result
        refused = await http_post_json(bad, request_frame(str(i), tag, payload), headers=headers)
        assert_error_body(refused, 403, "FORBIDDEN")
    refused = await http_post_json(bad, request_frame("9", HTTP_PUSH, push), headers=headers)
    assert_error_body(refused, 403, "FORBIDDEN")

    assert len(seen) == 5
    assert all(context.transport == "http" for context in seen)
    assert all(context.store_id == store for context in seen)
    assert [context.payload for context in seen] == [
        {"authToken": "good"},
        {"authToken": "bad"},
    ] * 2 + [{"authToken": "bad"}]
    for context in seen:
        assert context.headers.get("authorization") == "Bearer abc", dict(context.headers)
        assert context.headers.get("x-livestore-store-id") == store
    result = await http_post_json(
        good, request_frame("10", HTTP_PULL, {"storeId": store, "cursor": NONE})
    )
    assert [item["batch"] for item in result.body[0]["values"]] == [[]]


@pytest.mark.parametrize(
    ("tag", "payload"),
    [
        ("SyncHttpRpc.Nope", {"storeId": "S"}),
        ("SyncWsRpc.Pull", {"storeId": "S", "live": False, "cursor": NONE}),
        (HTTP_PULL, {"storeId": "S"}),
        (HTTP_PULL, {"storeId": "S", "cursor": {"_tag": "Some", "value": {"backendId": "x"}}}),
        (HTTP_PUSH, {"storeId": "S", "batch": [{"name": "x", "seqNum": "1"}], "backendId": NONE}),
        (HTTP_PUSH, {"storeId": "S", "batch": make_events(1, 1)}),
    ],
    ids=["unknown-tag", "ws-tag", "pull-no-cursor", "pull-bad-cursor", "push-bad-event", "no-bid"],
)
async def test_case_36_malformed_http_rpc_dies_alone(
    gateway: GatewayHarness, tag: str, payload: dict[str, Any]
) -> None:
    """A malformed or unknown HTTP RPC answers 200 ``[Exit Failure Die]`` and stores nothing."""
    store = new_store_id()
    payload = {**payload, "storeId": store}
    result = await http_rpc(gateway.http_url(store), tag, payload, "5")
    assert len(result.body) == 1, result.body
    (frame,) = result.body
    assert frame.get("requestId") == "5", frame
    assert_die(frame)
    assert events_of(await _http_pull(gateway, store)) == []


async def test_case_37_http_lone_surrogate_in_args_round_trips(gateway: GatewayHarness) -> None:
    """An HTTP push whose args hold a lone surrogate escape (valid JSON) is stored verbatim."""
    store = new_store_id()
    batch = make_events(1, 1)
    batch[0]["args"] = {"text": "cut emoji \ud83d"}
    body = json.dumps(
        request_frame("1", HTTP_PUSH, {"storeId": store, "batch": batch, "backendId": NONE})
    ).encode()
    result = await http_request(
        "POST", gateway.http_url(store), body=body, headers={"content-type": "application/json"}
    )
    assert result.status == 200, (result.status, result.raw[:300])
    pulled = await http_request(
        "POST",
        gateway.http_url(store),
        body=json.dumps(request_frame("2", HTTP_PULL, {"storeId": store, "cursor": NONE})).encode(),
        headers={"content-type": "application/json"},
    )
    frames = json.loads(pulled.raw)
    assert frames[0]["values"][0]["batch"][0]["eventEncoded"] == batch[0]
