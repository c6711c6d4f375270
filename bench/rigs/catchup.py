"""5. Catch-up: a new client pulls the whole history of a store."""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from dataclasses import dataclass, field

import orjson

from bench import frames
from bench.client import Conn, connect, monotonic_ns
from bench.frames import ACK_PULL, CHUNK_START, EXIT_START, NO_MORE, PING
from bench.procs import Server
from bench.results import OMIT_NONE
from bench.rigs.common import HOST, Auth, Meter
from bench.rigs.streams import open_pusher


@dataclass(frozen=True, slots=True, kw_only=True)
class CatchupRun:
    events_received: int
    order_errors: int
    frames: int
    bytes_per_frame: float
    seconds: float
    events_per_s: float
    server_cpu_us_per_event: float | None
    generator_cpu_util: float


@dataclass(frozen=True, slots=True, kw_only=True)
class CatchupResult:
    events: int
    runs: list[CatchupRun]
    events_per_s: float
    events_per_s_best: float
    server_cpu_us_per_event: float | None
    generator_cpu_util: float
    # the server the history was pushed into: how long that took
    populate_s: float | None = field(default=None, metadata=OMIT_NONE)


async def populate(server: Server, auth: Auth, store_id: str, events: int) -> float:
    """Push ``events`` history events (100 per push, as ``frames.history_tails`` lays them)."""
    started = time.monotonic()
    pusher = await open_pusher(server, store_id, auth.payload(300_000), "bench-history", None)
    try:
        while pusher.seq < events:
            await pusher.push(min(100, events - pusher.seq), t_ns=0)
    finally:
        pusher.conn.abort()
    return time.monotonic() - started


async def catchup(
    server: Server, auth: Auth, store_id: str, *, events: int, runs: int
) -> CatchupResult:
    """A new client pulls the whole history (cursor None, live); events/s until ``NoMore``."""
    samples = []
    for run in range(runs):
        await server.quiet()
        samples.append(await catchup_once(server, auth, store_id, events, run))
    return summarise(events, samples)


def summarise(events: int, samples: list[CatchupRun]) -> CatchupResult:
    """The median and best of several runs; CPU figures from the best."""
    rates = [s.events_per_s for s in samples]
    best = max(samples, key=lambda s: s.events_per_s)
    return CatchupResult(
        events=events,
        runs=samples,
        events_per_s=statistics.median(rates),
        events_per_s_best=max(rates),
        server_cpu_us_per_event=best.server_cpu_us_per_event,
        generator_cpu_util=best.generator_cpu_util,
    )


async def catchup_once(
    server: Server, auth: Auth, store_id: str, events: int, run: int
) -> CatchupRun:
    """One new client pulls the whole history (``run`` picks its instance)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()
    state = {"events": 0, "last": 0, "frames": 0, "bytes": 0, "errors": 0}
    conn_box: list[Conn] = []

    def on_text(data: bytes, now: int) -> None:
        if not data.startswith(CHUNK_START):
            if data.startswith(EXIT_START) and not done.done():
                done.set_exception(RuntimeError(data[:300].decode(errors="replace")))
            return
        conn_box[0].send(ACK_PULL)
        frame = orjson.loads(data)
        state["frames"] += 1
        state["bytes"] += len(data)
        for item in frame["values"]:
            for entry in item["batch"]:
                seq = entry["eventEncoded"]["seqNum"]
                if seq != state["last"] + 1:
                    state["errors"] += 1
                state["last"] = seq
                state["events"] += 1
        if NO_MORE in data and not done.done():
            done.set_result(now)

    payload = auth.payload(400_000 + run)
    conn = await connect(HOST, server.port, frames.resource(store_id, payload), on_text)
    conn_box.append(conn)
    conn.send(PING)
    gc.disable()
    try:
        meter = Meter(server)
        started = monotonic_ns()
        conn.send(frames.pull_frame(store_id, payload))
        async with asyncio.timeout(120):
            finished = await done
        usage = meter.read()
    finally:
        gc.enable()
        conn.abort()
    elapsed = (finished - started) / 1e9
    got = state["events"]
    return CatchupRun(
        events_received=got,
        order_errors=state["errors"],
        frames=state["frames"],
        bytes_per_frame=state["bytes"] / state["frames"] if state["frames"] else 0,
        seconds=elapsed,
        events_per_s=got / elapsed if elapsed else 0.0,
        server_cpu_us_per_event=usage.server_cpu_s / got * 1e6 if got else None,
        generator_cpu_util=usage.generator_cpu_s / elapsed if elapsed else 0.0,
    )
