"""What a reload (SIGHUP) does to sessions that are already open (README, "Lifecycle").

Limits are read from the live configuration where they apply, so a reload changes them for
open sessions too, not only for new ones.
"""

from __future__ import annotations

import asyncio
import dataclasses

from tests.helpers.clients import RpcClient
from tests.helpers.harness import GatewayHarness, MakeGateway
from tests.helpers.timeouts import TIMEOUT_UNIT
from tests.helpers.wire import (
    assert_die,
    assert_push_ok,
    is_chunk,
    make_events,
    new_store_id,
    seqs_of,
)


async def _reload_limits(gw: GatewayHarness, **limits: int) -> None:
    config = gw.gw.config
    await gw.gw.reload(
        dataclasses.replace(config, limits=dataclasses.replace(config.limits, **limits))
    )


async def test_lower_max_message_bytes_applies_to_open_sessions(make_gateway: MakeGateway) -> None:
    """A session opened under a 4 MiB limit is closed with 1009 for a 2 MiB message once a
    reload has set the limit to 1 MiB (before, the same message was read and answered)."""
    gw = await make_gateway(max_message_bytes=4 * 1024 * 1024)
    store = new_store_id()
    client = await RpcClient.open(gw.ws_url(store), store)
    try:
        big = '"' + "x" * (2 * 1024 * 1024) + '"'
        await client.send_raw(big)
        defect = await client.recv()
        assert defect["_tag"] == "Defect", defect  # read whole: a string is no frame
        await _reload_limits(gw, max_message_bytes=1024 * 1024)
        await client.send_raw(big)
        async with asyncio.timeout(5 * TIMEOUT_UNIT):
            await client.ws.wait_closed()
        assert client.ws.close_code == 1009
    finally:
        await client.close()


async def test_lower_max_requests_applies_to_the_next_request(make_gateway: MakeGateway) -> None:
    """With two live pulls open, a reload to max_requests_per_connection = 2 makes the third
    request on the same session die; the two pulls stay live."""
    gw = await make_gateway()
    store = new_store_id()
    client = await RpcClient.open(gw.ws_url(store), store)
    try:
        first = await client.send_pull(live=True)
        second = await client.send_pull(live=True)
        for rid in (first, second):
            assert is_chunk(await client.recv_for(rid))
        await _reload_limits(gw, max_requests_per_connection=2)
        third = await client.send_pull(live=True)
        assert "too many concurrent requests" in str(assert_die(await client.wait_exit(third)))
        # The push itself would be a third request here: it comes from another session.
        pusher = await RpcClient.open(gw.ws_url(store), store)
        try:
            assert_push_ok(await pusher.wait_exit(await pusher.send_push(make_events(1, 1))))
        finally:
            await pusher.close()
        for rid in (first, second):
            assert seqs_of(await client.next_items(rid)) == [1]
    finally:
        await client.close()
