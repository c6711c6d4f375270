"""Load shedding on a real server: past ``limits.max_pending_handshakes`` a sync handshake is
answered 503 ``OVERLOADED`` with ``Retry-After`` at once (never left to time out), while open
sessions, non-sync endpoints and, once the queue is gone, new handshakes carry on.

The pending handshakes are raw TCP connections that send the start of an upgrade request and
no more: the server waits for the rest. The test waits (``gateway_handshakes_pending``) until
the server counts them before it sends a whole handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from websockets.exceptions import InvalidStatus

from gateway.client import connect
from tests.helpers.clients import RpcClient
from tests.helpers.harness import GatewayHarness, MakeGateway
from tests.helpers.http_client import http_request, refusal_of
from tests.helpers.metrics import scrape
from tests.helpers.timeouts import TIMEOUT_UNIT
from tests.helpers.wire import make_events, new_store_id

pytestmark = pytest.mark.timeout(60 * TIMEOUT_UNIT)

LIMIT = 4
# Far beyond anything the test waits for: a shed handshake must not come near it.
OPEN_TIMEOUT = 30.0


async def _idle_connections(gw: GatewayHarness, n: int) -> list[asyncio.StreamWriter]:
    """``n`` handshakes that never finish their request, once the server counts them."""
    writers = []
    for _ in range(n):
        _, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"GET /?storeId=s&transport=ws HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        await writer.drain()
        writers.append(writer)
    deadline = time.monotonic() + 5 * TIMEOUT_UNIT
    # The scrape counts itself.
    while (await scrape(gw)).value("gateway_handshakes_pending") < n + 1:
        assert time.monotonic() < deadline, "the server never counted the pending handshakes"
        await asyncio.sleep(0.01)
    return writers


async def _close_all(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.close()
    for writer in writers:
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def test_a_storm_gets_503_with_retry_after_and_sessions_carry_on(
    make_gateway: MakeGateway,
) -> None:
    gw = await make_gateway(max_pending_handshakes=LIMIT, open_timeout=OPEN_TIMEOUT)
    store = new_store_id()
    live = await RpcClient.open(gw.ws_url(store), store)
    rid, _ = await live.live_pull()
    idle = await _idle_connections(gw, LIMIT)
    try:
        started = time.monotonic()
        with pytest.raises(InvalidStatus) as refused:
            await RpcClient.open(gw.ws_url(store), store, open_timeout=5 * TIMEOUT_UNIT)
        elapsed = time.monotonic() - started
        answer = refusal_of(refused.value)
        assert answer.status == 503, answer
        assert answer.body["error"]["code"] == "OVERLOADED", answer.body
        assert int(answer.headers["retry-after"]) >= 1, answer.headers
        assert elapsed < OPEN_TIMEOUT / 10, f"shed after {elapsed:.2f} s"
        # Not a sync request: the operator endpoints still answer.
        health = await http_request("GET", f"http://{gw.base}/healthz", within=5 * TIMEOUT_UNIT)
        assert health.status == 200, health
        # The open session is untouched: its push is acked and its live pull delivers.
        await live.push_ok(make_events(1, 3))
        events = await live.live_events(rid, until_seq=3)
        assert [e["seqNum"] for e in events] == [1, 2, 3]
        assert (await scrape(gw)).value("gateway_handshakes_shed_total") == 1
    finally:
        await _close_all(idle)
    # The queue gone, handshakes are served again (the server sees the closes in its own
    # time: a few bounded attempts).
    deadline = time.monotonic() + 5 * TIMEOUT_UNIT
    again: RpcClient | None = None
    while again is None:
        try:
            again = await RpcClient.open(gw.ws_url(store), store)
        except InvalidStatus as exc:
            status = refusal_of(exc).status
            if status != 503 or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
    _, items = await again.live_pull()
    assert items
    await again.close()
    await live.close()


async def test_below_the_limit_nothing_is_shed(make_gateway: MakeGateway) -> None:
    gw = await make_gateway(max_pending_handshakes=LIMIT + 1, open_timeout=OPEN_TIMEOUT)
    store = new_store_id()
    idle = await _idle_connections(gw, LIMIT)
    try:
        client = await RpcClient.open(gw.ws_url(store), store)
        await client.live_pull()
        await client.close()
        assert (await scrape(gw)).value("gateway_handshakes_shed_total") == 0
    finally:
        await _close_all(idle)


async def test_the_python_client_waits_for_retry_after(make_gateway: MakeGateway) -> None:
    """A shed handshake makes gateway.client wait at least Retry-After (1 s) before its
    next attempt, although its own backoff would retry after 50 ms at most."""
    gw = await make_gateway(max_pending_handshakes=1, open_timeout=OPEN_TIMEOUT)
    store = new_store_id()
    idle = await _idle_connections(gw, 1)
    started = time.monotonic()
    client = connect(f"ws://{gw.base}", store, backoff_base=0.05, ping_interval=None)
    opening = asyncio.create_task(client.__aenter__())
    try:
        deadline = time.monotonic() + 5 * TIMEOUT_UNIT
        while (await scrape(gw)).value("gateway_handshakes_shed_total") < 1:
            assert time.monotonic() < deadline, "the client's handshake was never shed"
            await asyncio.sleep(0.02)
    finally:
        await _close_all(idle)
    async with asyncio.timeout(10 * TIMEOUT_UNIT):
        await opening
    elapsed = time.monotonic() - started
    try:
        assert client.stats.connections == 1
        assert elapsed >= 1.0, f"reconnected after {elapsed:.2f} s, before Retry-After"
        assert (await scrape(gw)).value("gateway_handshakes_shed_total") == 1
    finally:
        await client.close()
