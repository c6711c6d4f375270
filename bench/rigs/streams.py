"""Live subscribers and pushers, and the bookkeeping of what each pushed batch still awaits.

Subscribers do not parse frames (``bench.frames``): they find the push timestamp and the
first ``seqNum`` with ``bytes.find``, check order cheaply and ack every frame.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Sequence
from typing import Any

from bench import frames
from bench.client import Conn, IdSource, connect, monotonic_ns
from bench.frames import (
    ACK_PULL,
    CHUNK_START,
    EXIT_START,
    PING,
    REQUEST_START,
    SEQ_MARK,
    T_MARK,
    first_int_after,
)
from bench.procs import Server
from bench.rigs.common import HOST


class Phase:
    """What subscribers count during one phase."""

    __slots__ = ("bytes", "events", "frames", "latencies", "order_errors")

    def __init__(self) -> None:
        self.events = 0
        self.frames = 0
        self.bytes = 0
        self.order_errors = 0
        self.latencies: list[int] = []


class Track:
    """Per store: how many deliveries each pushed batch still waits for."""

    __slots__ = ("progress", "remaining", "subscribers")

    def __init__(self, subscribers: int) -> None:
        self.subscribers = subscribers
        self.remaining: dict[int, int] = {}
        self.progress: asyncio.Future[None] | None = None

    def expect(self, first_seq: int) -> None:
        self.remaining[first_seq] = self.subscribers

    def delivered(self, first_seq: int) -> None:
        left = self.remaining.get(first_seq)
        if left is None:
            return
        if left > 1:
            self.remaining[first_seq] = left - 1
            return
        del self.remaining[first_seq]
        progress = self.progress
        if progress is not None and not progress.done():
            progress.set_result(None)

    async def wait_progress(self) -> None:
        self.progress = asyncio.get_running_loop().create_future()
        await self.progress


class Subscriber:
    """A live pull that checks order cheaply, records latency, and acks every frame."""

    __slots__ = ("conn", "last_seq", "phase", "track")

    def __init__(self, conn: Conn, track: Track, phase: list[Phase]) -> None:
        self.conn = conn
        self.track = track
        self.phase = phase  # a one-element list, swapped between phases
        self.last_seq = 0
        conn.on_text = self.on_text

    def on_text(self, data: bytes, now: int) -> None:
        if not (data.startswith(CHUNK_START) or data.startswith(REQUEST_START)):
            return
        phase = self.phase[0]
        seq = first_int_after(data, SEQ_MARK)
        if seq < 0:  # an empty chunk
            return
        n = data.count(SEQ_MARK)
        t = first_int_after(data, T_MARK)
        if t > 0:
            phase.latencies.append(now - t)
        phase.events += n
        phase.frames += 1
        phase.bytes += len(data)
        if seq != self.last_seq + 1:
            phase.order_errors += 1
        self.last_seq = seq + n - 1
        self.track.delivered(seq)
        self.conn.send(ACK_PULL)


class Pusher:
    """One connection pushing batches to one store, one push in flight."""

    __slots__ = (
        "acks",
        "client_id",
        "conn",
        "ids",
        "payload",
        "seq",
        "store_id",
        "track",
        "waiting",
    )

    def __init__(
        self, conn: Conn, store_id: str, payload: object, client_id: str, track: Track | None
    ) -> None:
        self.conn = conn
        self.store_id = store_id
        self.payload = payload
        self.client_id = client_id
        self.track = track
        self.ids = IdSource()
        self.seq = 0
        self.waiting: asyncio.Future[bytes] | None = None
        self.acks: list[int] = []  # push -> ack, ns
        conn.on_text = self.on_text

    def on_text(self, data: bytes, now: int) -> None:
        waiting = self.waiting
        if data.startswith(EXIT_START) and waiting is not None and not waiting.done():
            waiting.set_result(data)

    async def push(self, n: int, *, t_ns: int | None = None) -> None:
        first = self.seq + 1
        started = monotonic_ns()
        events = frames.make_events(first, n, started if t_ns is None else t_ns, self.client_id)
        frame = frames.push_frame(self.ids(), self.store_id, self.payload, events)
        self.waiting = asyncio.get_running_loop().create_future()
        if self.track is not None:
            self.track.expect(first)
        self.conn.send(frame)
        async with asyncio.timeout(60):
            answer = await self.waiting
        if b'"exit":{"_tag":"Success"' not in answer:
            raise RuntimeError(f"push refused: {answer[:300]!r}")
        self.acks.append(monotonic_ns() - started)
        self.seq = first + n - 1


async def open_pusher(
    server: Server, store_id: str, payload: object, client_id: str, track: Track | None
) -> Pusher:
    conn = await connect(HOST, server.port, frames.resource(store_id, payload))
    conn.send(PING)
    return Pusher(conn, store_id, payload, client_id, track)


async def drain_tracks(tracks: Sequence[Track], timeout: float) -> bool:  # noqa: ASYNC109 - a deadline
    """Wait until every track has received all it expects; False on timeout."""
    deadline = time.monotonic() + timeout
    while any(t.remaining for t in tracks):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


def pace_all(
    pushers: Sequence[Pusher], batch: int, rate: float, deadline: float
) -> list[Coroutine[Any, Any, int]]:
    """Every pusher pushes ``rate`` batches/s until ``deadline``, their starts spread evenly
    over one interval so the offered load is smooth."""
    interval = 1.0 / rate
    now = time.monotonic()
    return [
        push_paced(pusher, batch, now + interval * k / len(pushers), interval, deadline)
        for k, pusher in enumerate(pushers)
    ]


async def push_paced(
    pusher: Pusher, batch: int, start: float, interval: float, deadline: float
) -> int:
    """Push ``batch`` every ``interval`` seconds from ``start`` until ``deadline``."""
    due = start
    pushes = 0
    while due < deadline:
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await pusher.push(batch)
        pushes += 1
        due += interval
    return pushes
