"""Every request gets an answer, whatever fails underneath (issue: no request path may end
without one). An exception no contract names (a bug, an unexpected driver error) is injected
into the real store for each request kind and transport: a WebSocket request task that dies
closes its connection with 1011 (the client reconnects and retries), an HTTP request gets
500 INTERNAL_ERROR, /readyz says 503, and ``gateway_requests_failed_total`` counts them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from gateway.configfile import make_config
from tests.helpers.clients import RpcClient
from tests.helpers.faults import RaisingStore
from tests.helpers.harness import GatewayHarness
from tests.helpers.http_client import (
    assert_error_body,
    assert_transient_body,
    http_post_json,
    http_request,
)
from tests.helpers.metrics import scrape
from tests.helpers.timeouts import TIMEOUT_UNIT
from tests.helpers.wire import (
    HTTP_PULL,
    HTTP_PUSH,
    NONE,
    assert_push_ok,
    make_events,
    new_store_id,
    request_frame,
    seqs_of,
)


@pytest.fixture(name="faulty")
async def _faulty(tmp_path: Path) -> AsyncIterator[tuple[GatewayHarness, RaisingStore]]:
    store = RaisingStore(tmp_path)
    harness = GatewayHarness(make_config(data_dir=str(tmp_path)), store=store)
    await harness.start()
    yield harness, store
    await harness.stop()


async def _closed_with(client: RpcClient) -> int | None:
    with pytest.raises(ConnectionClosed) as closed:
        await client.recv(within=5 * TIMEOUT_UNIT)
    return None if closed.value.rcvd is None else closed.value.rcvd.code


async def _push_ok(gw: GatewayHarness, store: str, start: int, n: int) -> None:
    client = await RpcClient.open(gw.ws_url(store), store)
    try:
        assert_push_ok(await client.wait_exit(await client.send_push(make_events(start, n))))
    finally:
        await client.close()


@pytest.mark.parametrize("method", ["append", "ensure_store"])
async def test_ws_push_that_dies_closes_1011_and_the_server_goes_on(
    faulty: tuple[GatewayHarness, RaisingStore], method: str
) -> None:
    """A push whose store call raises is answered by closing the connection with 1011; the
    failure is counted, nothing is stored, and the next push (store healthy) is accepted."""
    gw, store = faulty
    store_id = new_store_id()
    if method == "append":
        await _push_ok(gw, store_id, 1, 1)  # loaded: the push reaches append
    store.armed.add(method)
    client = await RpcClient.open(gw.ws_url(store_id), store_id)
    first = 2 if method == "append" else 1
    try:
        await client.send_push(make_events(first, 1))
        assert await _closed_with(client) == 1011
    finally:
        await client.close()
    assert (await scrape(gw)).value("gateway_requests_failed_total", transport="ws") == 1
    store.armed.clear()
    await _push_ok(gw, store_id, first, 1)


@pytest.mark.parametrize("method", ["count", "read"])
async def test_ws_pull_that_dies_closes_1011(
    faulty: tuple[GatewayHarness, RaisingStore], method: str
) -> None:
    """A catch-up whose store read raises closes its connection with 1011."""
    gw, store = faulty
    store_id = new_store_id()
    await _push_ok(gw, store_id, 1, 3)
    store.armed.add(method)
    client = await RpcClient.open(gw.ws_url(store_id), store_id)
    try:
        await client.send_pull(live=True)
        assert await _closed_with(client) == 1011
    finally:
        await client.close()
    assert (await scrape(gw)).value("gateway_requests_failed_total", transport="ws") == 1


@pytest.mark.parametrize(("tag", "method"), [(HTTP_PUSH, "append"), (HTTP_PULL, "read")])
async def test_http_request_that_dies_gets_500(
    faulty: tuple[GatewayHarness, RaisingStore], tag: str, method: str
) -> None:
    """An HTTP-transport request whose store call raises is answered 500 INTERNAL_ERROR (a
    text body: the client retries)."""
    gw, store = faulty
    store_id = new_store_id()
    await _push_ok(gw, store_id, 1, 2)
    store.armed.add(method)
    payload: dict[str, object] = {"storeId": store_id}
    if tag == HTTP_PUSH:
        payload.update(batch=make_events(3, 1), backendId=NONE)
    else:
        payload.update(cursor=NONE)
    answer = await http_post_json(gw.http_url(store_id), request_frame("0", tag, payload))
    assert_transient_body(answer, 500, "INTERNAL_ERROR")
    assert (await scrape(gw)).value("gateway_requests_failed_total", transport="http") == 1


async def test_readyz_is_503_when_the_check_raises(
    faulty: tuple[GatewayHarness, RaisingStore],
) -> None:
    """/readyz turns any failure of the store check into 503 NOT_READY, never a 500."""
    gw, store = faulty
    url = f"http://{gw.base}/readyz"
    assert (await http_request("GET", url)).status == 200
    store.armed.add("check")
    assert_error_body(await http_request("GET", url), 503, "NOT_READY")
    store.armed.clear()
    assert (await http_request("GET", url)).status == 200


async def test_other_sessions_are_not_affected(
    faulty: tuple[GatewayHarness, RaisingStore],
) -> None:
    """A live subscriber on the same store stays open while another session's push dies,
    and receives the next accepted batch."""
    gw, store = faulty
    store_id = new_store_id()
    await _push_ok(gw, store_id, 1, 1)
    watcher = await RpcClient.open(gw.ws_url(store_id), store_id)
    try:
        rid = await watcher.send_pull(live=True)
        await watcher.next_items(rid)  # the backlog (event 1)
        store.armed.add("append")
        doomed = await RpcClient.open(gw.ws_url(store_id), store_id)
        try:
            await doomed.send_push(make_events(2, 1))
            assert await _closed_with(doomed) == 1011
        finally:
            await doomed.close()
        store.armed.clear()
        await _push_ok(gw, store_id, 2, 1)
        assert seqs_of(await watcher.next_items(rid)) == [2]
    finally:
        await asyncio.shield(watcher.close())
