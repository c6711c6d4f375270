"""gateway.client over the HTTP transport (``transport="http"``) against a real gateway:
follow (polling) and commit, refusals, restarts and storage failures, TLS."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest

from gateway.client import Batch, Cursor, Refused, StoreClient, connect
from gateway.client.connection import sync_url
from gateway.configfile import make_config
from tests.helpers.certs import TestCA
from tests.helpers.clients import RpcClient
from tests.helpers.faults import RaisingStore
from tests.helpers.harness import GatewayHarness, MakeGateway
from tests.helpers.keys import BYPASS, SECRET
from tests.helpers.metrics import scrape
from tests.helpers.timeouts import TIMEOUT_UNIT
from tests.helpers.wire import events_of, make_events, new_store_id

WITHIN = 10 * TIMEOUT_UNIT


def http_client(base: str, store_id: str, **kwargs: Any) -> StoreClient:
    """An HTTP-transport client with test-sized reconnect delays and poll interval."""
    kwargs.setdefault("backoff_base", 0.05)
    kwargs.setdefault("poll_interval", 0.05)
    return connect(f"http://{base}", store_id, transport="http", **kwargs)


async def ws_push(gateway: GatewayHarness, store_id: str, start: int, count: int) -> None:
    """Push events ``start..start+count-1`` over a WebSocket, 100 per push."""
    raw = await RpcClient.open(gateway.ws_url(store_id), store_id)
    try:
        for first in range(start, start + count, 100):
            await raw.push_ok(make_events(first, min(100, start + count - first)))
    finally:
        await raw.close()


class Follower:
    """Runs ``events()`` of a client in a task and collects the batches."""

    def __init__(self, store: StoreClient, after: Cursor | None = None) -> None:
        self.batches: list[Batch] = []
        self.error: BaseException | None = None
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._follow(store, after))

    async def _follow(self, store: StoreClient, after: Cursor | None) -> None:
        try:
            async with aclosing(store.events(after)) as stream:
                async for batch in stream:
                    self.batches.append(batch)
                    self._changed.set()
        except Exception as exc:
            self.error = exc
            self._changed.set()

    @property
    def seqs(self) -> list[int]:
        return [event.seq_num for batch in self.batches for event in batch.events]

    async def reached(self, count: int, within: float = WITHIN) -> None:
        """Wait until ``count`` events arrived (failing on the follower's error)."""

        async def wait() -> None:
            while len(self.seqs) < count and self.error is None:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), within)
        if self.error is not None:
            raise self.error

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


@pytest.fixture(name="followers")
async def _followers() -> AsyncIterator[list[Follower]]:
    started: list[Follower] = []
    yield started
    for follower in started:
        await follower.stop()


def test_the_sync_url_names_the_transport() -> None:
    url = sync_url("wss://h:1", "s", instance_id="i", transport="http")
    assert url.startswith("https://h:1/?storeId=s&")
    assert url.endswith("&transport=http")
    assert sync_url("http://h", "s", instance_id="i").startswith("ws://h/?")
    with pytest.raises(ValueError, match="transport"):
        connect("http://h", "s", transport="sse")  # type: ignore[arg-type]


async def test_catch_up_and_live_follow_see_websocket_pushes_in_order(
    make_gateway: MakeGateway, followers: list[Follower]
) -> None:
    gateway = await make_gateway()
    store_id = new_store_id()
    await ws_push(gateway, store_id, 1, 250)
    async with http_client(gateway.base, store_id) as store:
        assert store.url.startswith("http://")
        assert store.url.endswith("transport=http")
        follower = Follower(store)
        followers.append(follower)
        await follower.reached(250)
        assert follower.seqs == list(range(1, 251))
        # Live: pushes over a WebSocket, several per poll or one per poll.
        for start in range(251, 291, 5):
            await ws_push(gateway, store_id, start, 5)
        await follower.reached(290)
        assert follower.seqs == list(range(1, 291))
        batches = follower.batches
        assert all(b.cursor.seq == b.events[-1].seq_num for b in batches)
        assert [e.parent_seq_num for b in batches for e in b.events] == list(range(290))
    metrics = await scrape(gateway)
    assert metrics.value("gateway_connections_opened_total", transport="http") >= 1
    assert metrics.value("gateway_connections_opened_total", transport="ws") == 1 + 8


async def test_commits_and_server_ahead_rebase_over_http(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway()
    store_id = new_store_id()
    await ws_push(gateway, store_id, 1, 2)
    async with http_client(gateway.base, store_id, client_id="svc", session_id="s1") as store:
        assert await store.commit("todoCreated-v1", {"id": "t1"}) == 3
        await ws_push(gateway, store_id, 4, 2)  # the client's head (3) is now behind
        assert await store.commit_many([("a-v1", {"n": 0}), ("a-v1", {"n": 1})]) == [6, 7]
        assert await store.commit_many([("bulk-v1", {"i": i}) for i in range(150)]) == list(
            range(8, 158)
        )
        log = [b async for b in store.events(live=False)]
    raw = await RpcClient.open(gateway.ws_url(store_id), store_id)
    try:
        events = events_of(await raw.pull())
    finally:
        await raw.close()
    assert [e["seqNum"] for e in events] == list(range(1, 158))
    assert [e["parentSeqNum"] for e in events] == list(range(157))
    assert [e["clientId"] for e in events[5:7]] == ["svc", "svc"]
    assert [e["args"] for e in events[5:7]] == [{"n": 0}, {"n": 1}]
    assert [e.seq_num for b in log for e in b.events] == list(range(1, 158))


async def test_a_wrong_token_is_refused_without_retrying(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway(require_auth=True, jwt_secret=SECRET, bypass_token=BYPASS)
    store_id = new_store_id()
    refused = http_client(gateway.base, store_id, auth_token="not-a-jwt", backoff_base=60)
    with pytest.raises(Refused) as caught:
        await asyncio.wait_for(refused.__aenter__(), 2 * TIMEOUT_UNIT)
    assert (caught.value.status, caught.value.code) == (401, "INVALID_TOKEN")
    assert "not-a-jwt" not in str(caught.value)
    async with http_client(gateway.base, store_id, bypass_token=BYPASS) as service:
        assert await service.commit("ok-v1", {}) == 1


async def test_a_disabled_transport_is_refused(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway(transports=("ws",))
    store = http_client(gateway.base, new_store_id(), backoff_base=60)
    with pytest.raises(Refused) as caught:
        await asyncio.wait_for(store.__aenter__(), 2 * TIMEOUT_UNIT)
    assert (caught.value.status, caught.value.code) == (404, "TRANSPORT_DISABLED")


async def test_follow_and_commits_resume_after_a_server_restart(
    make_gateway: MakeGateway, tmp_path: Path, followers: list[Follower]
) -> None:
    data_dir = str(tmp_path / "restarted")
    gateway = await make_gateway(data_dir=data_dir)
    port = gateway.port
    store_id = new_store_id()
    async with (
        http_client(gateway.base, store_id) as reader,
        http_client(gateway.base, store_id, client_id="w") as writer,
    ):
        follower = Follower(reader)
        followers.append(follower)
        assert await writer.commit_many([("e", {"n": n}) for n in range(20)]) == list(range(1, 21))
        await follower.reached(20)
        await gateway.stop()
        # While the server is down, its port drops connections: the follower's next poll fails.
        polled = asyncio.Event()

        def drop(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            polled.set()
            writer.close()

        down = await asyncio.start_server(drop, "127.0.0.1", port)
        try:
            await asyncio.wait_for(polled.wait(), WITHIN)
        finally:
            down.close()
            await down.wait_closed()
        gateway = await make_gateway(data_dir=data_dir, port=port)
        seqs = [await asyncio.wait_for(writer.commit("e", {"n": n}), WITHIN) for n in range(20, 30)]
        assert seqs == list(range(21, 31))
        await ws_push(gateway, store_id, 31, 10)
        await follower.reached(40)
    assert follower.seqs == list(range(1, 41))
    assert [e.args for b in follower.batches for e in b.events][:30] == [
        {"n": n} for n in range(30)
    ]


class SignallingStore(RaisingStore):
    """The real store with faults, which also says in which methods one was raised."""

    def __init__(self, data_dir: str | Path) -> None:
        super().__init__(data_dir)
        self.raised = {method: asyncio.Event() for method in ("read", "append")}

    def _fault(self, method: str) -> None:
        if method in self.armed and method in self.raised:
            self.raised[method].set()
        super()._fault(method)


async def test_follow_and_commit_retry_while_the_store_fails(
    tmp_path: Path, followers: list[Follower]
) -> None:
    """Pulls and pushes answered 500 INTERNAL_ERROR are retried with backoff until the store
    works again: the follower goes on from its cursor, the commit is written once."""
    store = SignallingStore(tmp_path)
    gateway = GatewayHarness(make_config(data_dir=str(tmp_path)), store=store)
    await gateway.start()
    try:
        store_id = new_store_id()
        await ws_push(gateway, store_id, 1, 3)
        async with (
            http_client(gateway.base, store_id) as reader,
            http_client(gateway.base, store_id, client_id="w") as writer,
        ):
            follower = Follower(reader)
            followers.append(follower)
            await follower.reached(3)
            store.armed.add("read")
            await ws_push(gateway, store_id, 4, 1)  # the follower's next poll fails
            await asyncio.wait_for(store.raised["read"].wait(), WITHIN)
            store.armed.add("append")
            commit = asyncio.create_task(writer.commit("during-v1", {}))
            await asyncio.wait_for(store.raised["append"].wait(), WITHIN)
            store.armed.clear()
            assert await asyncio.wait_for(commit, WITHIN) == 5
            await follower.reached(5)
        assert follower.seqs == [1, 2, 3, 4, 5]
        assert [e.client_id for b in follower.batches for e in b.events][3:] == ["client-test", "w"]
        metrics = await scrape(gateway)
        assert metrics.value("gateway_requests_failed_total", transport="http") >= 2
    finally:
        await gateway.stop()


async def test_https_and_wss_against_a_tls_gateway(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    ca = TestCA(tmp_path)
    cert = ca.issue()
    gateway = await make_gateway(tls_cert_file=str(cert.cert_file), tls_key_file=str(cert.key_file))
    context = ssl.create_default_context(cafile=str(ca.ca_file))
    store_id = new_store_id()
    async with connect(f"https://{gateway.base}", store_id, transport="http", ssl=context) as store:
        assert store.url.startswith("https://")
        assert await store.commit_many([("tls-v1", {"n": n}) for n in range(3)]) == [1, 2, 3]
    async with connect(f"wss://{gateway.base}", store_id, ssl=context) as ws_store:
        log = [b async for b in ws_store.events(live=False)]
    assert [e.seq_num for b in log for e in b.events] == [1, 2, 3]
