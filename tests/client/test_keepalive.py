"""gateway.client's keepalive Ping against a real gateway, through a TCP proxy that can go
silent: a healthy session's Pings are answered; a path that stops forwarding (no reset, no
close) is noticed within ``ping_interval + ping_timeout`` and the client reconnects when a path
exists again, its stream resuming from its cursor and its pending commit written once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import pytest

from gateway.client import StoreClient, connect
from tests.helpers.harness import GatewayHarness
from tests.helpers.tcpproxy import TcpProxy
from tests.helpers.timeouts import TIMEOUT_UNIT, wait_for_event
from tests.helpers.wire import new_store_id

WITHIN = 10 * TIMEOUT_UNIT
INTERVAL = 0.2
TIMEOUT = 0.5


@pytest.fixture(name="proxy")
async def _proxy(gateway: GatewayHarness) -> AsyncIterator[TcpProxy]:
    proxy = await TcpProxy("127.0.0.1", gateway.port).start()
    yield proxy
    await proxy.close()


def via(proxy: TcpProxy, store_id: str, **kwargs: Any) -> StoreClient:
    """A client whose every connection goes through ``proxy``."""
    kwargs.setdefault("ping_interval", INTERVAL)
    kwargs.setdefault("ping_timeout", TIMEOUT)
    return connect(
        f"ws://127.0.0.1:{proxy.port}", store_id, backoff_base=0.05, backoff_cap=0.2, **kwargs
    )


def direct(gateway: GatewayHarness, store_id: str) -> StoreClient:
    return connect(f"ws://{gateway.base}", store_id, backoff_base=0.05)


async def test_a_healthy_sessions_pings_are_answered(
    gateway: GatewayHarness, proxy: TcpProxy
) -> None:
    pongs = asyncio.Event()
    seen = 0

    def count(data: bytes) -> None:
        nonlocal seen
        seen += data.count(b'{"_tag":"Pong"}')
        if seen >= 4:
            pongs.set()

    proxy.on_downstream = count
    store_id = new_store_id()
    async with via(proxy, store_id, ping_interval=0.05) as store:
        await wait_for_event(pongs, WITHIN, "four Pongs from the server")
        # A round trip on the same session: every Pong sent before its ack has been read.
        assert await asyncio.wait_for(store.commit("e", {}), WITHIN) == 1
        stats = store.stats
        assert stats.pongs >= 4
        assert stats.pings >= stats.pongs
        assert (stats.ping_timeouts, stats.connections, stats.closes) == (0, 1, {})
    assert proxy.accepted == 1


async def test_a_silent_path_is_dropped_and_the_stream_resumes(
    gateway: GatewayHarness, proxy: TcpProxy
) -> None:
    store_id = new_store_id()
    loop = asyncio.get_running_loop()
    async with (
        via(proxy, store_id) as follower,
        direct(gateway, store_id) as writer,
        aclosing(follower.events()) as stream,
    ):
        assert await writer.commit("e", {"n": 1}) == 1
        first = await asyncio.wait_for(anext(stream), WITHIN)
        assert [e.seq_num for e in first.events] == [1]
        reading = asyncio.ensure_future(anext(stream))
        stalled_at = loop.time()
        proxy.stall()
        # The client notices the silence and tries a new connection (refused while stalled).
        await proxy.wait_accepted(2, WITHIN)
        noticed_after = loop.time() - stalled_at
        assert noticed_after < INTERVAL + TIMEOUT + 0.5 * TIMEOUT_UNIT
        assert follower.stats.ping_timeouts == 1
        assert follower.stats.closes == {1006: 1}
        assert await writer.commit("e", {"n": 2}) == 2
        proxy.restore()
        second = await asyncio.wait_for(reading, WITHIN)
        assert [(e.seq_num, e.args) for e in second.events] == [(2, {"n": 2})]
        assert second.cursor.seq == 2


async def test_a_commit_sent_into_a_silent_path_is_written_once(
    gateway: GatewayHarness, proxy: TcpProxy
) -> None:
    """The push is lost in the silent path: after the timeout the client reconnects, finds
    it is not in the log and pushes it again, once."""
    store_id = new_store_id()
    async with via(proxy, store_id) as store, direct(gateway, store_id) as reader:
        assert await store.commit("e", {"n": 1}) == 1
        proxy.stall()
        committing = asyncio.ensure_future(store.commit("e", {"n": 2}))
        await proxy.wait_accepted(2, WITHIN)
        proxy.restore()
        assert await asyncio.wait_for(committing, WITHIN) == 2
        log = [e async for batch in reader.events(live=False) for e in batch.events]
    assert [(e.seq_num, e.args) for e in log] == [(1, {"n": 1}), (2, {"n": 2})]
    assert store.stats.ping_timeouts == 1
