"""Issue 11, transient storage failure, with real clients: the store stops taking appends for a
while (:class:`tests.helpers.faults.FailingAppends`: a trigger in the gateway's own SQLite file
makes every insert for the store fail, a real ``StoreError`` with nothing written), then takes
them again. The clients keep their pending events and sync them once it is back, without a
restart, and no ``UnknownError`` reaches them: the server answers the failed push with "offline"
(WebSocket closed with 1011, HTTP 503 STORAGE_UNAVAILABLE).

- The real LiveStore 0.4.0 client (``client.mjs``), whose leader retries a failed push by
  itself. Over HTTP it retries the 503, whose body is text (a JSON object would stop it).
- The Effect 4 ``RpcClient`` test client (``effect4/client.mjs``), one RPC per command: its failed
  push is re-issued by the test, unchanged, as LiveStore main's leader does
  (``LeaderSyncProcessor.backgroundBackendPushing``: a push failing with ``IsOfflineError`` or
  ``UnknownError`` is retried with the same batch, backoff from 1 s doubling, capped at 30 s; its
  sync-cf client maps a transport error on push to a client-side ``UnknownError``). Main's pull
  is retried only on ``IsOfflineError``: an ``UnknownError`` there ends the sync.

The waits are on the gateway's log lines and the clients' output, with timeouts. The only
sleeps are the Effect 4 client's retry backoff (0.1 s doubling, capped at 2 s, bounded attempts).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.ci import skip_or_fail
from tests.helpers.faults import FailingAppends
from tests.helpers.http_client import http_request
from tests.helpers.metrics import Scrape
from tests.helpers.timeouts import TIMEOUT_UNIT
from tests.interop.test_effect4 import (
    Effect4Client,
    Effect4Error,
    assert_ok,
    events_of,
    make_events,
)
from tests.interop.test_effect4 import _prerequisites_problem as _effect4_problem
from tests.interop.test_interop import (
    ClientError,
    GatewayProcess,
    NodeClient,
    _prerequisites_problem,
    _running_gateway,
    assert_consistent,
    assert_same,
    event_ids,
    ids,
)

pytestmark = [pytest.mark.interop, pytest.mark.timeout(150)]

UNIT = TIMEOUT_UNIT

# The gateway logs every append the injected fault refused (an ERROR line naming the trigger's
# message), whatever it then answers: the waits count these; the answers are checked on the
# client side.
STORAGE_FAILURE = r"injected storage failure"


@pytest.fixture(name="gateway_proc")
async def _gateway_proc(tmp_path: Path) -> AsyncIterator[GatewayProcess]:
    async with _running_gateway(tmp_path / "gateway-data") as gw:
        yield gw


@pytest.fixture(name="store_id")
def _store_id() -> str:
    return f"transient-{uuid.uuid4().hex[:12]}"


def _require(problem: str | None) -> None:
    if problem is not None:
        skip_or_fail(problem, ci_prefix="interop prerequisites missing under CI: ")


async def _scrape(gw: GatewayProcess) -> Scrape:
    result = await http_request("GET", gw.http_url("/metrics"))
    assert result.status == 200, result
    return Scrape(result.raw.decode())


async def _storage_rejections(gw: GatewayProcess) -> float:
    return (await _scrape(gw)).value("gateway_pushes_rejected_total", reason="storage")


# ---------------------------------------------------------------------------------------------
# LiveStore 0.4.0


async def _last_words(client: NodeClient) -> str:
    """The ``fatal`` line of a client that has exited (its stdout read to the end)."""

    async def read() -> str:
        while True:
            event = await client.events.get()
            if event.get("event") == "fatal":
                return str(event.get("error"))
            if event.get("event") == "eof":
                return "(no fatal line)"

    try:
        return await asyncio.wait_for(read(), 5 * UNIT)
    except TimeoutError:
        return "(stdout not closed)"


async def _server_refusals(
    gw: GatewayProcess, client: NodeClient, pattern: str, count: int
) -> None:
    """Wait until the gateway has logged ``count`` refused pushes; fail at once if ``client``
    exits first (a store that shut itself down over the refusal)."""
    logged = asyncio.ensure_future(gw.wait_log(pattern, count=count, within=30))
    exited = asyncio.ensure_future(client.proc.wait())
    try:
        await asyncio.wait({logged, exited}, return_when=asyncio.FIRST_COMPLETED)
        if not logged.done():
            raise ClientError(
                f"{client.name} exited during the outage: {await _last_words(client)}\n"
                f"{client.describe()}"
            )
        await logged
    finally:
        for task in (logged, exited):
            task.cancel()
        await asyncio.gather(logged, exited, return_exceptions=True)


# The 0.4.0 HTTP transport (Effect 3 RpcClient.layerProtocolHttp) ignores the status and reads
# any JSON body as its answer: a JSON error object is a defect its leader does not retry (the
# store shuts down), which is why transient 5xx answers of the HTTP transport are text.
@pytest.mark.parametrize("transport", ["ws", "http"])
async def test_livestore_040_pending_events_sync_after_storage_outage(
    gateway_proc: GatewayProcess, store_id: str, transport: str
) -> None:
    """A 0.4.0 store (over ``transport``) commits while its server's store refuses appends: the
    events stay pending (the store keeps running; no UnknownError reaches it; an observer gets
    nothing), and once appends work again the SAME client process pushes them: the observer
    and a fresh client hold A-1..A-5 once each, in order."""
    _require(_prerequisites_problem())
    gw = gateway_proc
    url = gw.ws_url() if transport == "ws" else gw.http_url()
    faults = FailingAppends(gw.data_dir)
    started: list[NodeClient] = []

    async def client(name: str, **kwargs: Any) -> NodeClient:
        started.append(await NodeClient.start(name, store_id=store_id, **kwargs))
        return started[-1]

    try:
        writer = await client(
            "client-A", url=url, transport=transport, extra_args=("--poll-interval", "300")
        )
        observer = await client("client-obs", url=gw.ws_url())
        await writer.commit("A", 2)
        await asyncio.gather(writer.wait_rows(2, within=15), observer.wait_rows(2, within=15))
        rejected_before = await _storage_rejections(gw)

        await faults.arm(store_id)
        await writer.commit("A", 3, start=3)
        # The push fails on the server at least twice: the first attempt and one retry the
        # client made by itself (a new socket, for WS).
        await _server_refusals(gw, writer, STORAGE_FAILURE, count=2)

        during = await writer.cmd("waitpending", count=3, timeout=10)
        assert during["sync"]["pending"] == 3, during
        assert during["sync"]["upstreamHead"] == 2, during
        assert during["rowCount"] == 5, during
        assert during["counters"]["unknownErrors"] == 0, during["counters"]
        if transport == "ws":
            # The server closed the socket (1011) and the client opened another one.
            assert during["counters"]["wsOpened"] >= 2, during["counters"]
            assert during["counters"]["wsClosed"] >= 1, during["counters"]
        assert await _storage_rejections(gw) >= rejected_before + 2
        seen = await observer.cmd("status")
        assert seen["rowCount"] == 2, f"a failed push reached the observer: {seen}"
        assert seen["sync"]["upstreamHead"] == 2, seen

        await faults.disarm(store_id)
        # No restart: the same process, whose leader's retry (backoff 1 s, 2 s, 4 s, ...)
        # brings the pending events in.
        await writer.wait_rows(5, within=60)
        await observer.wait_rows(5, within=20)
        dump_writer, dump_observer = await writer.dump(), await observer.dump()
        assert_same(dump_writer, dump_observer)
        assert event_ids(dump_writer) == ids("A", 1, 5)

        fresh = await client("client-fresh", url=gw.ws_url(), blocking_initial_sync=True)
        assert fresh.ready_info["rowCount"] == 5, fresh.ready_info
        dump_fresh = await fresh.dump()
        assert_consistent(dump_fresh, "fresh")
        assert dump_fresh["events"] == dump_writer["events"]
        assert [ev["clientId"] for ev in dump_fresh["events"]] == ["client-A"] * 5

        for dump in (dump_writer, dump_observer, dump_fresh):
            assert dump["counters"]["unknownErrors"] == 0, dump["counters"]
    finally:
        await asyncio.gather(*(c.shutdown() for c in started), return_exceptions=True)
        await faults.disarm(store_id)


# ---------------------------------------------------------------------------------------------
# Effect 4


def _is_transport_error(reply: dict[str, Any]) -> bool:
    """An Effect 4 client's ``RpcClientError`` (socket closed, HTTP failure): not a typed
    failure from the RPC's error union."""
    return reply["event"] == "error" and reply.get("kind") == "rpc"


async def _push_until_accepted(
    client: Effect4Client, batch: list[dict[str, Any]], backend_id: str, *, attempts: int = 20
) -> list[dict[str, Any]]:
    """Push ``batch`` unchanged until it is acknowledged (LiveStore's leader: same batch,
    backoff); every failed attempt's reply. A typed failure (``UnknownError``, ...) fails."""
    failed: list[dict[str, Any]] = []
    delay = 0.1
    for _ in range(attempts):
        reply = await client.push(batch, backend_id)
        if reply["event"] == "ok":
            assert_ok(reply, {})
            return failed
        assert _is_transport_error(reply), (
            f"a push during a storage outage must fail as a transport error, got {reply}"
        )
        failed.append(reply)
        # The retry policy of a client (LiveStore: 1 s doubling), not a synchronisation: the
        # socket the server closed reconnects in the background (0.5 s, x1.5).
        await asyncio.sleep(delay * UNIT)
        delay = min(delay * 2, 2.0)
    raise Effect4Error(f"{client.name}: push not accepted in {attempts} attempts: {failed[-3:]}")


async def _push_until_failed_on_server(
    client: Effect4Client,
    gw: GatewayProcess,
    batch: list[dict[str, Any]],
    backend_id: str,
    *,
    attempts: int = 20,
) -> list[dict[str, Any]]:
    """Re-push ``batch`` while the store is armed until the server has refused it a second time
    (over WS, attempts made while the client is still reconnecting fail locally); the replies."""
    replies: list[dict[str, Any]] = []
    delay = 0.1
    for _ in range(attempts):
        reply = await client.push(batch, backend_id)
        replies.append(reply)
        if len(gw.log_lines(STORAGE_FAILURE)) >= 2:
            return replies
        await asyncio.sleep(delay * UNIT)
        delay = min(delay * 2, 2.0)
    raise Effect4Error(f"{client.name}: the server never saw the retry: {replies[-3:]}")


@pytest.mark.parametrize("transport", ["ws", "http"])
async def test_effect4_push_during_storage_outage_is_a_disconnect_not_unknown_error(
    gateway_proc: GatewayProcess, store_id: str, transport: str
) -> None:
    """An Effect 4 client's push while the store refuses appends fails as a transport error
    (RpcClientError: the socket closed with 1011, or the HTTP 503), never a typed
    ``UnknownError``; a live observer gets nothing. Re-issued unchanged once appends work again,
    from the same client process, the batch lands exactly once, after the earlier events."""
    _require(_effect4_problem())
    gw = gateway_proc
    url = gw.ws_url() if transport == "ws" else gw.http_url()
    faults = FailingAppends(gw.data_dir)
    started: list[Effect4Client] = []

    async def client(name: str, kind: str) -> Effect4Client:
        u = gw.ws_url() if kind == "ws" else url
        started.append(await Effect4Client.start(name, url=u, store_id=store_id, transport=kind))
        return started[-1]

    try:
        pusher = await client("pusher", transport)
        observer = await client("observer", "ws")
        live = await observer.send("pull", cursor=None, live=True)
        await observer.wait_items(live, 1)

        first = make_events("E", 1, 2, client_id="pusher")
        assert_ok(await pusher.push(first), {})
        assert await observer.wait_events(live, 2) == first
        backend_id = await pusher.backend_id()
        rejected_before = await _storage_rejections(gw)

        await faults.arm(store_id)
        batch = make_events("F", 3, 2, client_id="pusher")
        reply = await pusher.push(batch, backend_id)
        assert _is_transport_error(reply), f"expected a transport error, got {reply}"
        await gw.wait_log(STORAGE_FAILURE, count=1, within=15)
        assert await _storage_rejections(gw) == rejected_before + 1
        # Still armed: a retry fails the same way (the socket is back, or being reopened).
        retried = await _push_until_failed_on_server(pusher, gw, batch, backend_id)
        assert all(_is_transport_error(r) for r in retried), retried

        # Nothing was published: the observer's live pull has only the first events, read up to
        # a later answer on the same socket (a non-live pull), so nothing is still in flight.
        assert events_of(await observer.pull_all()) == first
        assert events_of(observer.items(live)) == first, "a failed push reached the observer"

        await faults.disarm(store_id)
        more_failures = await _push_until_accepted(pusher, batch, backend_id)
        assert await observer.wait_events(live, 4) == first + batch

        log = events_of(await pusher.pull_all())
        assert log == first + batch, log
        assert [ev["seqNum"] for ev in log] == [1, 2, 3, 4]
        frames = await pusher.frames()
        received = [
            message
            for frame in frames["received"]
            for message in (frame if isinstance(frame, list) else [frame])
        ]
        assert "UnknownError" not in repr(received), received
        for failed in [reply, *retried, *more_failures]:
            assert "UnknownError" not in repr(failed), failed
    finally:
        await asyncio.gather(*(c.shutdown() for c in started), return_exceptions=True)
        await faults.disarm(store_id)
