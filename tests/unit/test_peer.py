"""One WebSocket session on its own (gateway/peer.py): frame decoding and its Defect / Die
answers, Ping, push acks after publication, request limits read live, slow-consumer
eviction, Interrupt, and catch-up paced by the client's Acks.

The connection edge is a :class:`FakeWire` that records what the peer sends; peer, engine,
hub and the SQLite store (in tmp_path) are real.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from gateway.config import LiveConfig
from gateway.configfile import make_config
from gateway.engine import SyncEngine
from gateway.errors import CloseCode, WireClosed
from gateway.metrics import SessionCounters
from gateway.peer import BeforePush, Peer
from gateway.protocol import PushRequest
from tests.helpers.fakes import new_events
from tests.helpers.timeouts import TIMEOUT_UNIT
from tests.helpers.wire import (
    NO_MORE,
    NONE,
    PULL,
    PUSH,
    Frame,
    assert_die,
    assert_fail,
    assert_push_ok,
    assert_stream_success,
    is_chunk,
    is_exit,
    make_events,
    request_frame,
    seqs_of,
)

STORE = "s"


class FakeWire:
    """A peer's ``Wire`` that records the frames sent (parsed) and the close calls.

    ``send_paced`` never suspends, so a catch-up runs on until it must wait for an Ack (or
    ends) before the test gets control back. ``queued`` is what ``buffered()`` reports.
    """

    def __init__(self) -> None:
        self.open = True
        self.queued = 0
        self.frames: list[Frame] = []
        self.closes: list[tuple[int, str]] = []
        self._changed = asyncio.Event()

    def buffered(self) -> int:
        return self.queued

    def send(self, data: bytes) -> None:
        assert self.open, f"frame sent on a closed wire: {data!r}"
        self.frames.append(orjson.loads(data))
        self._changed.set()

    async def send_paced(self, data: bytes) -> None:
        if not self.open:
            raise WireClosed
        self.send(data)

    def close(self, code: int, reason: str = "") -> None:
        self.closes.append((code, reason))
        self.open = False
        self._changed.set()

    async def until(self, predicate: Callable[[Frame], bool], count: int = 1) -> list[Frame]:
        """The frames matching ``predicate``, once there are at least ``count`` of them."""
        within = 5 * TIMEOUT_UNIT
        try:
            async with asyncio.timeout(within):
                while True:
                    found = [frame for frame in self.frames if predicate(frame)]
                    if len(found) >= count:
                        return found
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"{count} matching frame(s) not sent within {within:.1f}s; sent: {self.frames}"
            ) from None


def _peer(
    engine: SyncEngine, tmp_path: Path, before_push: BeforePush | None = None, **limits: Any
) -> tuple[Peer, FakeWire]:
    wire = FakeWire()
    settings = LiveConfig(make_config(data_dir=str(tmp_path), **limits))
    counters = SessionCounters()
    peer = Peer(wire, STORE, engine, settings=settings, counters=counters, before_push=before_push)
    return peer, wire


def _send(peer: Peer, frame: dict[str, Any]) -> None:
    peer.handle(orjson.dumps(frame))


def _pull(rid: str, *, live: bool, store: str = STORE) -> dict[str, Any]:
    return request_frame(rid, PULL, {"storeId": store, "live": live, "cursor": NONE})


def _push(rid: str, events: list[dict[str, Any]], store: str = STORE) -> dict[str, Any]:
    return request_frame(rid, PUSH, {"storeId": store, "batch": events, "backendId": NONE})


def _chunk(rid: str) -> Callable[[Frame], bool]:
    return lambda frame: is_chunk(frame, rid)


def _exit(rid: str) -> Callable[[Frame], bool]:
    return lambda frame: is_exit(frame, rid)


def _items(chunks: list[Frame]) -> list[dict[str, Any]]:
    return [item for chunk in chunks for item in chunk["values"]]


async def _live_pull(peer: Peer, wire: FakeWire, rid: str) -> None:
    """Open a live pull on an empty store and wait for its (empty) catch-up."""
    _send(peer, _pull(rid, live=True))
    (chunk,) = await wire.until(_chunk(rid))
    assert _items([chunk])[0]["pageInfo"] == NO_MORE


async def test_malformed_frames_get_a_defect_and_the_session_goes_on(
    engine: SyncEngine, tmp_path: Path
) -> None:
    """A frame that is not JSON, or names a request by something that is neither a string
    nor a safe integer, is answered with a Defect and the peer keeps serving."""
    peer, wire = _peer(engine, tmp_path)
    peer.handle(b"{not json")
    peer.handle(orjson.dumps({**_pull("1", live=False), "id": 1.5}))
    peer.handle(b'{"_tag":"Ack","requestId":true}')
    _send(peer, {"_tag": "Ping"})
    defects, pong = wire.frames[:3], wire.frames[3:]
    assert [frame["_tag"] for frame in defects] == ["Defect"] * 3
    assert all(frame["defect"]["message"] for frame in defects)
    assert pong == [{"_tag": "Pong"}]
    assert wire.closes == []


async def test_ping_gets_pong(engine: SyncEngine, tmp_path: Path) -> None:
    """A Ping frame is answered with a Pong frame."""
    peer, wire = _peer(engine, tmp_path)
    _send(peer, {"_tag": "Ping"})
    assert wire.frames == [{"_tag": "Pong"}]


async def test_push_is_published_to_a_live_pull_before_it_is_acked(
    engine: SyncEngine, tmp_path: Path
) -> None:
    """An accepted push reaches the peer's own live pull as a Chunk before the push's Exit,
    which carries ``{}``, and counts its events."""
    calls: list[int] = []

    async def before_push(push: PushRequest) -> None:
        calls.append(len(push.batch))

    peer, wire = _peer(engine, tmp_path, before_push)
    await _live_pull(peer, wire, "1")
    _send(peer, _push("2", make_events(1, 3)))
    (ack,) = await wire.until(_exit("2"))
    assert_push_ok(ack)
    live = [frame for frame in wire.frames if is_chunk(frame, "1")][1:]
    assert seqs_of(_items(live)) == [1, 2, 3]
    assert wire.frames.index(live[0]) < wire.frames.index(ack)
    assert peer.events_in == 3
    assert calls == [3]


async def test_pipelined_pushes_are_admitted_in_the_order_they_came(
    engine: SyncEngine, tmp_path: Path
) -> None:
    """A client may send its next push before the previous one is answered. When the first
    is held up before the engine (its gate waits; a store still loading did the same), the
    second waits for its turn instead of overtaking it and being refused: both are acked,
    in order."""
    first_in = asyncio.Event()
    release = asyncio.Event()
    gated: list[int] = []

    async def before_push(push: PushRequest) -> None:
        gated.append(push.batch[0].seq)
        if len(gated) == 1:
            first_in.set()
            await release.wait()

    peer, wire = _peer(engine, tmp_path, before_push)
    _send(peer, _push("1", make_events(1, 2)))
    async with asyncio.timeout(5 * TIMEOUT_UNIT):
        await first_in.wait()
    _send(peer, _push("2", make_events(3, 2)))
    answer = asyncio.ensure_future(wire.until(_exit("2")))
    # Overtaking, the second push would be answered now (ServerAheadError); in its turn it
    # is not answered while the first waits.
    done, _ = await asyncio.wait((answer,), timeout=0.3 * TIMEOUT_UNIT)
    assert not done, wire.frames
    assert gated == [1]
    release.set()
    (first,) = await wire.until(_exit("1"))
    (second,) = await answer
    assert_push_ok(first)
    assert_push_ok(second)
    assert gated == [1, 3]
    assert peer.events_in == 4


async def test_push_to_another_store_fails_and_a_malformed_pull_dies(
    engine: SyncEngine, tmp_path: Path
) -> None:
    """A push naming another storeId fails with UnknownError (store mismatch); a Pull whose
    payload breaks the schema dies."""
    peer, wire = _peer(engine, tmp_path)
    _send(peer, _push("1", make_events(1, 1), store="elsewhere"))
    _send(peer, request_frame("2", PULL, {"storeId": STORE, "live": "yes", "cursor": NONE}))
    (failed,) = await wire.until(_exit("1"))
    assert assert_fail(failed, "UnknownError")["note"] == "store mismatch"
    (died,) = await wire.until(_exit("2"))
    assert "live" in assert_die(died)
    assert peer.events_in == 0


async def test_duplicate_request_id_and_unknown_tag_die(engine: SyncEngine, tmp_path: Path) -> None:
    """A request reusing the id of one still in flight dies, and so does an unknown RPC tag."""
    peer, wire = _peer(engine, tmp_path)
    await _live_pull(peer, wire, "1")
    _send(peer, _pull("1", live=False))
    _send(peer, request_frame("2", "SyncWsRpc.Nope", {"storeId": STORE}))
    (duplicate,) = await wire.until(_exit("1"))
    assert "already in use" in assert_die(duplicate)
    (unknown,) = await wire.until(_exit("2"))
    assert "Unknown request tag" in assert_die(unknown)
    assert engine.hub.subscriber_count(STORE) == 1


async def test_request_limit_is_read_from_the_live_config(
    engine: SyncEngine, tmp_path: Path
) -> None:
    """Over ``max_requests_per_connection`` a request dies; a reload raising the limit lets
    the open session start more."""
    peer, wire = _peer(engine, tmp_path, max_requests_per_connection=2)
    await _live_pull(peer, wire, "1")
    await _live_pull(peer, wire, "2")
    _send(peer, _pull("3", live=True))
    (refused,) = await wire.until(_exit("3"))
    assert assert_die(refused) == "too many concurrent requests"
    peer.settings.swap(make_config(max_requests_per_connection=5, data_dir=str(tmp_path)))
    await _live_pull(peer, wire, "4")
    assert not any(is_exit(frame, "4") for frame in wire.frames)
    assert engine.hub.subscriber_count(STORE) == 3


async def test_slow_consumer_is_evicted_at_the_next_write(
    engine: SyncEngine, tmp_path: Path
) -> None:
    """With more than ``send_buffer_limit`` bytes queued, the next frame closes the wire with
    1013 instead of being sent, and nothing is sent after it."""
    peer, wire = _peer(engine, tmp_path)
    await _live_pull(peer, wire, "1")
    sent = len(wire.frames)
    wire.queued = peer.settings.current.limits.send_buffer_limit + 1
    _send(peer, {"_tag": "Ping"})
    assert wire.closes == [(CloseCode.TRY_AGAIN_LATER, "slow consumer")]
    assert peer.counters.evictions == 1
    assert engine.hub.subscriber_count(STORE) == 0
    other, other_wire = _peer(engine, tmp_path)
    _send(other, _push("1", make_events(1, 1)))
    assert_push_ok((await other_wire.until(_exit("1")))[0])
    _send(peer, {"_tag": "Ping"})
    assert len(wire.frames) == sent
    assert len(wire.closes) == 1
    assert peer.counters.evictions == 1


async def test_interrupted_live_pull_gets_no_more_events(
    engine: SyncEngine, tmp_path: Path
) -> None:
    """An Interrupt unsubscribes a live pull: later pushes are not delivered to it."""
    peer, wire = _peer(engine, tmp_path)
    await _live_pull(peer, wire, "1")
    assert engine.hub.subscriber_count(STORE) == 1
    _send(peer, {"_tag": "Interrupt", "requestId": "1"})
    assert engine.hub.subscriber_count(STORE) == 0
    sent = len(wire.frames)
    other, other_wire = _peer(engine, tmp_path)
    _send(other, _push("1", make_events(1, 2)))
    assert_push_ok((await other_wire.until(_exit("1")))[0])
    assert len(wire.frames) == sent


async def test_catch_up_waits_for_acks_beyond_the_window(
    engine: SyncEngine, tmp_path: Path
) -> None:
    """With ``catchup_window=1`` a backlog of three pages is sent one Chunk per Ack, ending
    with ``NoMore`` and then the Exit."""
    for first, n in ((1, 100), (101, 100), (201, 50)):
        assert await engine.push(PushRequest(STORE, new_events(first, n), None)) is None
    peer, wire = _peer(engine, tmp_path, catchup_window=1)
    _send(peer, _pull("1", live=False))
    await wire.until(_chunk("1"))
    assert len(wire.frames) == 1
    _send(peer, {"_tag": "Ack", "requestId": "1"})
    await wire.until(_chunk("1"), count=2)
    assert len(wire.frames) == 2
    _send(peer, {"_tag": "Ack", "requestId": "1"})
    (done,) = await wire.until(_exit("1"))
    assert_stream_success(done)
    *chunks, last = wire.frames
    assert last is done
    items = _items(chunks)
    assert len(chunks) == 3
    assert seqs_of(items) == list(range(1, 251))
    assert [item["pageInfo"]["_tag"] for item in items] == ["MoreKnown", "MoreKnown", "NoMore"]
