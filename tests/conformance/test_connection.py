"""§14 conformance, "Connection and URL": cases 1 to 5."""

from __future__ import annotations

import asyncio
import json
import os
import time
from urllib.parse import quote, urlencode

import pytest
from websockets.exceptions import InvalidStatus

from gateway.admission import Admission, PayloadContext
from gateway.errors import Refusal, RefusalCode
from tests.helpers.clients import Connect, RpcClient
from tests.helpers.harness import GatewayHarness, MakeGateway, ValidatorGateway
from tests.helpers.http_client import HttpResult, assert_error_body, http_request, refusal_of
from tests.helpers.timeouts import TIMEOUT_UNIT
from tests.helpers.wire import assert_fail, assert_push_ok, events_of, make_events, new_store_id

pytestmark = pytest.mark.timeout(60 * TIMEOUT_UNIT)

# How long case 5 leaves a live pull idle. The spec says 30 s; the default keeps the suite fast,
# and the environment variable lets a nightly run use the full duration.
IDLE_SECONDS = float(os.environ.get("GATEWAY_CONFORMANCE_IDLE_SECONDS", "2")) * TIMEOUT_UNIT


async def _open_refused(url: str) -> HttpResult:
    with pytest.raises(InvalidStatus) as info:
        await RpcClient.open(url, "unused")
    return refusal_of(info.value)


@pytest.mark.parametrize("path", ["/", "/sync", "/a/b"])
async def test_case_01_upgrade_on_any_path(
    gateway: GatewayHarness, connect: Connect, path: str
) -> None:
    """A WS upgrade with storeId and transport=ws answers 101 on any path and speaks RPC."""
    client = await connect(gateway, new_store_id(), path=path)
    assert client.ws.response is not None
    assert client.ws.response.status_code == 101
    items = await client.pull()
    assert [item["batch"] for item in items] == [[]]


async def test_case_02_double_encoded_payload_is_decoded(
    gateway: GatewayHarness, connect: Connect
) -> None:
    """The payload parameter is percent-decoded twice before being parsed as JSON."""
    store = new_store_id()
    # Exactly the bytes the 0.4.0 client puts on the wire for {"authToken":"good"} (spec §14.2).
    # A server that decodes only once sees "%7B%22authToken…", which is not JSON, and refuses it.
    raw = "%257B%2522authToken%2522%253A%2522good%2522%257D"
    url = f"ws://{gateway.base}/?storeId={store}&payload={raw}&transport=ws"
    client = await RpcClient.open(url, store, payload={"authToken": "good"})
    try:
        assert client.ws.response is not None
        assert client.ws.response.status_code == 101
        await client.push_ok(make_events(1, 1))
    finally:
        await client.close()

    # Awkward characters survive both layers; any JSON value is a valid payload.
    for payload in (
        {"authToken": "good", "note": "a b&c=d/é 100% +x"},
        "just a string",
        42,
        [1, "two", None],
    ):
        other = await connect(gateway, store, payload=payload)
        assert (await other.barrier()) == []
        items = await other.pull()
        assert [event["seqNum"] for event in events_of(items)] == [1]


@pytest.mark.parametrize("store", ["team one/é+x", "a%2Fb", "日本 / ü+ü", "x y+z/w"])
async def test_case_02_store_id_is_form_decoded(
    gateway: GatewayHarness, connect: Connect, store: str
) -> None:
    """A storeId with '+', '%2F' or non-ASCII escapes decodes to exactly the original string."""
    store = f"{store}-{new_store_id()}"
    client = await connect(gateway, store)
    # The server fails a push whose payload.storeId differs from the decoded URL storeId, so a
    # successful push proves the URL decoded to exactly ``store``.
    assert_push_ok(await client.push(make_events(1, 1)))
    mangled = store.replace(" ", "+")
    if mangled != store:
        frame = await client.push(make_events(2, 1), store_id=mangled)
        assert_fail(frame, "UnknownError")

    # The same storeId, encoded the same way, reaches the same log ...
    again = await connect(gateway, store)
    assert [e["seqNum"] for e in events_of(await again.pull())] == [1]
    # ... and a storeId that differs only in punctuation is a different store.
    sanitised = "".join(ch if ch.isascii() and ch.isalnum() else "_" for ch in store)
    other = await connect(gateway, sanitised)
    assert events_of(await other.pull()) == []


@pytest.mark.parametrize(
    "raw_payload",
    ["%7Bnot-json", "%257Bnot-json", "%25ZZ", "%257B%2522a%2522%253A%257D", "%25"],
)
async def test_case_03_undecodable_payload_refuses_upgrade(
    gateway: GatewayHarness, raw_payload: str
) -> None:
    """An undecodable payload refuses the upgrade with 400 before 101; no WebSocket opens."""
    url = f"ws://{gateway.base}/?storeId={new_store_id()}&payload={raw_payload}&transport=ws"
    result = await _open_refused(url)
    assert_error_body(result, 400, "BAD_PAYLOAD")


@pytest.mark.parametrize("path", ["/", "/sync"])
async def test_case_04_plain_get_with_transport_ws_is_426(
    gateway: GatewayHarness, path: str
) -> None:
    """A transport=ws request without ``Upgrade: websocket`` answers 426 UPGRADE_REQUIRED."""
    query = urlencode([("storeId", new_store_id()), ("transport", "ws")])
    result = await http_request("GET", f"http://{gateway.base}{path}?{query}")
    assert_error_body(result, 426, "UPGRADE_REQUIRED")


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("transport=ws", "MISSING_STORE_ID"),
        ("payload=%257B%257D&transport=ws", "MISSING_STORE_ID"),
        ("storeId=STORE&transport=foo", "BAD_TRANSPORT"),
        ("storeId=STORE", None),
        ("storeId=STORE&payload=%7Bx&transport=ws", "BAD_PAYLOAD"),
        ("storeId=STORE&payload=%257Bx&transport=ws", "BAD_PAYLOAD"),
    ],
)
@pytest.mark.parametrize("path", ["/", "/sync"])
async def test_case_04_bad_upgrade_attempts_answer_4xx(
    gateway: GatewayHarness, path: str, query: str, code: str | None
) -> None:
    """Upgrades without storeId, with a non-ws transport or a bad payload get a 4xx, no socket."""
    query = query.replace("STORE", quote(new_store_id()))
    result = await _open_refused(f"ws://{gateway.base}{path}?{query}")
    if code is None:
        assert 400 <= result.status < 500, (result.status, result.raw[:300])
    else:
        assert_error_body(result, 400, code)


async def test_case_04_non_sync_endpoints(gateway: GatewayHarness) -> None:
    """``GET /`` without parameters is a 200 text page and ``GET /healthz`` answers 200."""
    info = await http_request("GET", f"http://{gateway.base}/")
    assert info.status == 200, info
    assert info.content_type.startswith("text/"), info.headers
    assert info.raw
    health = await http_request("GET", f"http://{gateway.base}/healthz")
    assert health.status == 200, health


async def _ping_rtt(client: RpcClient) -> float:
    start = time.monotonic()
    await client.send({"_tag": "Ping"})
    frame = await client.recv(5 * TIMEOUT_UNIT)
    elapsed = time.monotonic() - start
    assert frame == {"_tag": "Pong"}, frame
    return elapsed


@pytest.mark.parametrize("ping_interval", ["default", 0.2])
async def test_case_05_ping_answers_pong_even_when_idle(
    make_gateway: MakeGateway, connect: Connect, ping_interval: object
) -> None:
    """Every Ping gets a Pong in under 1 s, before and after a live pull has sat idle."""
    overrides = {} if ping_interval == "default" else {"ping_interval": ping_interval}
    gw = await make_gateway(**overrides)
    store = new_store_id()
    client = await connect(gw, store)

    # What the real client does right after 101: a Ping, then at once its first Pull.
    await client.send({"_tag": "Ping"})
    rid = await client.send_pull(live=True)
    # The Pong is exactly these bytes, in a text frame.
    assert await asyncio.wait_for(client.ws.recv(), 5 * TIMEOUT_UNIT) == '{"_tag":"Pong"}'
    catch_up = await client.items_until_no_more(rid)
    assert events_of(catch_up) == []

    for _ in range(3):
        assert await _ping_rtt(client) < 1.0 * TIMEOUT_UNIT

    # Idle live pull: nothing may arrive (no Exit, no Chunk), and the socket must stay usable.
    await client.expect_silence(IDLE_SECONDS)
    for _ in range(5):
        assert await _ping_rtt(client) < 1.0 * TIMEOUT_UNIT

    # The idle live pull still delivers.
    pusher = await connect(gw, store)
    await pusher.push_ok(make_events(1, 1))
    assert [e["seqNum"] for e in await client.live_events(rid, 1)] == [1]


class _Recorder:
    """A ``validate_payload`` hook that records what it sees and admits only good tokens."""

    def __init__(self) -> None:
        self.seen: list[PayloadContext] = []

    async def __call__(self, context: PayloadContext) -> Admission | Refusal:
        self.seen.append(context)
        payload = context.payload
        if isinstance(payload, dict) and payload.get("authToken") == "good":
            return Admission()
        return Refusal(code=RefusalCode.INVALID_TOKEN, message="invalid auth token")


async def test_case_02_validator_sees_decoded_payload_and_store_id(
    gateway_with_validator: ValidatorGateway, connect: Connect
) -> None:
    """The validator receives the payload as the JSON object and the storeId fully decoded."""
    hook = _Recorder()
    gw = await gateway_with_validator(hook)
    store = f"team one/é+x-{new_store_id()}"
    raw = "%257B%2522authToken%2522%253A%2522good%2522%257D"
    query = urlencode([("storeId", store)])
    url = f"ws://{gw.base}/some/path?{query}&payload={raw}&transport=ws"
    client = await RpcClient.open(url, store, payload={"authToken": "good"})
    try:
        assert (await client.barrier()) == []
    finally:
        await client.close()
    (context,) = hook.seen
    assert context.payload == {"authToken": "good"}
    assert context.store_id == store
    assert context.transport == "ws"
    assert {name.lower() for name in context.headers} >= {"upgrade", "host"}

    payload = {"authToken": "good", "note": "a b&c=d/é 100% +x"}
    await connect(gw, store, payload=payload)
    assert hook.seen[-1].payload == payload

    # A lone surrogate, as JSON.stringify + encodeURIComponent put it on the wire.
    odd = {"authToken": "good", "note": "cut emoji \ud83d"}
    encoded = quote(json.dumps(odd, separators=(",", ":")), safe="")
    odd_query = urlencode([("storeId", store), ("payload", encoded), ("transport", "ws")])
    client = await RpcClient.open(f"ws://{gw.base}/?{odd_query}", store)
    await client.close()
    assert hook.seen[-1].payload == odd


async def test_case_03_refused_payload_opens_no_websocket(
    gateway_with_validator: ValidatorGateway, connect: Connect
) -> None:
    """A payload the validator refuses gets its 4xx before 101; no socket, nothing stored."""
    hook = _Recorder()
    gw = await gateway_with_validator(hook)
    store = new_store_id()
    for payload in ({"authToken": "bad"}, None, "good"):
        result = await _open_refused(gw.ws_url(store, payload=payload))
        assert_error_body(result, 401, "INVALID_TOKEN")
    assert len(hook.seen) == 3
    assert not hook.seen[1].has_payload
    good = await connect(gw, store, payload={"authToken": "good"})
    assert events_of(await good.pull()) == []
