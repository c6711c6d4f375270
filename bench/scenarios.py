"""The measurements, each run the same way against the gateway and the baseline (the
two-node fan-out, section 6, runs on gateways only).

Every function takes a running :class:`bench.procs.Server` and returns plain data. Server CPU
is the process's utime + stime (all threads) over the measured window; generator CPU is this
process's own rusage over the same window, so a saturated load generator shows up.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt
import orjson
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

from bench import frames
from bench.client import Conn, ConnectError, IdSource, connect, monotonic_ns
from bench.frames import (
    ACK_PULL,
    CHUNK_START,
    EXIT_START,
    NO_MORE,
    PING,
    REQUEST_START,
    SEQ_MARK,
    T_MARK,
    first_int_after,
)
from bench.procs import Server, cpu_busy, cpu_times, proc_cpu_seconds, self_cpu_seconds

HOST = "127.0.0.1"


# ---------------------------------------------------------------------------------------------
# Shared helpers


@dataclass
class Auth:
    """JWTs for the gateway's ``validate_payload`` (HS256, ``sub`` and ``exp``)."""

    secret: str
    pool: int = 256
    tokens: list[str] = field(default_factory=list)
    _payloads: list[dict[str, str]] = field(default_factory=list)
    _wire: dict[tuple[str, int], tuple[str, bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        now = int(time.time())
        self.tokens = [
            jwt.encode(
                {"sub": f"bench-user-{i}", "iat": now, "exp": now + 3 * 3600},
                self.secret,
                algorithm="HS256",
            )
            for i in range(self.pool)
        ]

        self._payloads = [
            {"instanceId": f"bench-{i}", "authToken": token} for i, token in enumerate(self.tokens)
        ]

    def payload(self, i: int) -> dict[str, str]:
        """The sync payload of client ``i`` (``pool`` distinct instances and subjects)."""
        return self._payloads[i % self.pool]

    def wire(self, store_id: str, i: int) -> tuple[str, bytes]:
        """(URL resource, live Pull frame) of client ``i`` on ``store_id``, cached: the
        double percent-encoding of a JWT costs more than the rest of a handshake."""
        key = (store_id, i % self.pool)
        found = self._wire.get(key)
        if found is None:
            payload = self.payload(i)
            found = self._wire[key] = (
                frames.resource(store_id, payload),
                frames.pull_frame(store_id, payload),
            )
        return found


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    """p50 / p99 / max (and count) in milliseconds."""
    if not samples_ns:
        return {"count": 0, "p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    ordered = sorted(samples_ns)
    n = len(ordered)

    def at(q: float) -> float:
        return ordered[min(n - 1, int(q * n))] / 1e6

    return {"count": n, "p50_ms": at(0.50), "p99_ms": at(0.99), "max_ms": ordered[-1] / 1e6}


class Meter:
    """Server and generator CPU over a window."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.t0 = time.monotonic()
        self.server0 = server.cpu()
        self.gen0 = self_cpu_seconds()
        self.cpus0 = cpu_times()

    def read(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self.t0
        server = self.server.cpu() - self.server0
        gen = self_cpu_seconds() - self.gen0
        return {
            "elapsed_s": elapsed,
            "server_cpu_s": server,
            "generator_cpu_s": gen,
            "server_cpu_util": server / elapsed if elapsed else 0.0,
            "generator_cpu_util": gen / elapsed if elapsed else 0.0,
            "machine_cpus": cpu_busy(self.cpus0, cpu_times()),
        }


async def open_live(
    server: Server,
    store_id: str,
    wire: tuple[str, bytes],
    *,
    extensions: list[Any] | None = None,
) -> tuple[Conn, int, int]:
    """Connect, send Ping and a live Pull, wait for the first Chunk; (conn, t_start, t_chunk)."""
    loop = asyncio.get_running_loop()
    first: asyncio.Future[int] = loop.create_future()

    def on_text(data: bytes, now: int) -> None:
        if first.done():
            return
        if data.startswith(CHUNK_START):
            first.set_result(now)
        elif data.startswith(EXIT_START) or data.startswith(b'{"_tag":"Defect"'):
            first.set_exception(ConnectError(data[:300].decode(errors="replace")))

    resource, pull = wire
    started = monotonic_ns()
    conn = await connect(HOST, server.port, resource, on_text, extensions=extensions)
    conn.send(PING)
    conn.send(pull)
    try:
        async with asyncio.timeout(30):
            got = await first
    except BaseException:
        conn.abort()
        raise
    conn.send(ACK_PULL)
    return conn, started, got


async def open_many(
    count: int, concurrency: int, opener: Callable[[int], Awaitable[Conn]]
) -> list[Conn]:
    """``count`` connections, at most ``concurrency`` handshakes in flight."""
    conns: list[Conn] = []
    counter = itertools.count()

    async def worker() -> None:
        while True:
            i = next(counter)
            if i >= count:
                return
            conns.append(await opener(i))

    await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))
    return conns


def abort_all(conns: list[Conn]) -> None:
    for conn in conns:
        conn.abort()
    conns.clear()


def store_ids(prefix: str, count: int) -> list[str]:
    tag = f"{int(time.time() * 1000) % 10**9:09d}"
    return [f"{prefix}-{tag}-{k}" for k in range(count)]


# ---------------------------------------------------------------------------------------------
# 1. Handshakes


async def handshake(
    server: Server,
    auth: Auth,
    *,
    duration: float,
    max_connections: int,
    concurrency: int,
    stores: int,
) -> dict[str, Any]:
    """Authenticated upgrades until the first live-pull Chunk, ``concurrency`` in flight.

    Connections stay open until the window ends (then they are aborted), so the teardown
    of one does not slow down the next handshake.
    """
    ids = store_ids(f"hs-{server.name}", stores)
    for i in range(auth.pool * stores):
        auth.wire(ids[i % stores], i)
    # Warm-up: open every store once, outside the window.
    warm = await open_many(
        stores * 4,
        concurrency,
        lambda i: _conn_of(open_live(server, ids[i % stores], auth.wire(ids[i % stores], i))),
    )
    abort_all(warm)
    await server.quiet()
    latencies: list[int] = []
    conns: list[Conn] = []
    counter = itertools.count()
    meter = Meter(server)
    deadline = time.monotonic() + duration

    async def worker() -> None:
        while time.monotonic() < deadline:
            i = next(counter)
            if i >= max_connections:
                return
            conn, started, got = await open_live(
                server, ids[i % stores], auth.wire(ids[i % stores], i)
            )
            latencies.append(got - started)
            conns.append(conn)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    usage = meter.read()
    done = len(latencies)
    abort_all(conns)
    await server.quiet()
    return {
        "connections": done,
        "concurrency": concurrency,
        "stores": stores,
        "handshakes_per_s": done / usage["elapsed_s"],
        "connect_latency": percentiles(latencies),
        "server_cpu_us_per_handshake": usage["server_cpu_s"] / done * 1e6,
        "handshakes_per_server_cpu_s": done / usage["server_cpu_s"]
        if usage["server_cpu_s"]
        else None,
        "generator_cpu_us_per_handshake": usage["generator_cpu_s"] / done * 1e6,
        **usage,
    }


async def _conn_of(opening: Awaitable[tuple[Conn, int, int]]) -> Conn:
    conn, _, _ = await opening
    return conn


# ---------------------------------------------------------------------------------------------
# 2. Fan-out


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


class FanoutRig:
    """S stores x C live subscribers on one server, one pusher per store, kept connected so
    that rounds on two servers can alternate (noise on a shared machine hits both alike).

    :meth:`paced`: every pusher pushes ``rate`` batches/s, the same offered load on every
    server -> CPU per delivered event and push->delivery latency at equal load.
    :meth:`saturated`: every pusher keeps ``window`` batches not yet delivered to all of its
    subscribers -> the most events/s the pair (server, generator) moves.
    """

    def __init__(
        self, server: Server, auth: Auth, *, stores: int, subscribers: int, batch: int
    ) -> None:
        assert batch <= 100, "one frame per batch keeps delivery tracking simple"
        self.server = server
        self.auth = auth
        self.stores = stores
        self.subscribers = subscribers
        self.batch = batch
        self.ids = store_ids(f"fan-{server.name}", stores)
        self.tracks = [Track(subscribers) for _ in range(stores)]
        self.phase = [Phase()]
        self.conns: list[Conn] = []
        self.sub_conns: list[Conn] = []
        self.pushers: list[Pusher] = []
        self.setup_s = 0.0
        # The raw latencies (delivery, push ack) of the last phase, for merging slices.
        self.last_raw: tuple[list[int], list[int]] = ([], [])

    async def open(self, *, concurrency: int, extensions: list[Any] | None = None) -> None:
        started = time.monotonic()
        ids, tracks, phase, auth = self.ids, self.tracks, self.phase, self.auth

        async def open_sub(i: int) -> Conn:
            k = i % self.stores
            conn, _, _ = await open_live(
                self.server, ids[k], auth.wire(ids[k], i), extensions=extensions
            )
            Subscriber(conn, tracks[k], phase)
            return conn

        self.sub_conns = await open_many(self.stores * self.subscribers, concurrency, open_sub)
        self.pushers = [
            await open_pusher(
                self.server, ids[k], auth.payload(100_000 + k), f"pusher-{k}", tracks[k]
            )
            for k in range(self.stores)
        ]
        self.conns = self.sub_conns + [p.conn for p in self.pushers]
        self.setup_s = time.monotonic() - started
        # Warm-up: a few batches through every store.
        for _ in range(3):
            await asyncio.gather(*(p.push(self.batch) for p in self.pushers))
        await self.drain(30)
        await self.server.quiet()

    def describe(self) -> dict[str, Any]:
        return {
            "stores": self.stores,
            "subscribers_per_store": self.subscribers,
            "live_subscribers": self.stores * self.subscribers,
            "batch": self.batch,
            "setup_s": self.setup_s,
        }

    def wire_bytes(self) -> int:
        return sum(c.bytes_in for c in self.sub_conns)

    async def drain(self, timeout: float) -> bool:  # noqa: ASYNC109 - a polling deadline
        return await drain_tracks(self.tracks, timeout)

    async def paced(self, rate: float, duration: float) -> dict[str, Any]:
        stores = self.stores
        result = await self._phase(
            lambda deadline: pace_all(self.pushers, self.batch, rate, deadline), duration
        )
        result["phase"] = "paced"
        result["offered_pushes_per_s"] = rate * stores
        result["offered_events_per_s"] = rate * stores * self.batch * self.subscribers
        return result

    async def saturated(self, duration: float, window: int) -> dict[str, Any]:
        async def run(pusher: Pusher, track: Track, deadline: float) -> int:
            pushes = 0
            while time.monotonic() < deadline:
                while len(track.remaining) >= window:
                    await track.wait_progress()
                await pusher.push(self.batch)
                pushes += 1
            return pushes

        result = await self._phase(
            lambda deadline: [
                run(p, t, deadline) for p, t in zip(self.pushers, self.tracks, strict=True)
            ],
            duration,
        )
        result["phase"] = "saturated"
        result["window"] = window
        return result

    async def _phase(
        self, loops: Callable[[float], Sequence[Awaitable[int]]], duration: float
    ) -> dict[str, Any]:
        await self.server.quiet()
        self.phase[0] = phase = Phase()
        gc.collect()
        gc.disable()
        try:
            wire0 = self.wire_bytes()
            for pusher in self.pushers:
                pusher.acks.clear()
            meter = Meter(self.server)
            pushes = sum(await asyncio.gather(*loops(time.monotonic() + duration)))
            drained = await self.drain(60)
            usage = meter.read()
            wire = self.wire_bytes() - wire0
        finally:
            gc.enable()
        acks = [a for p in self.pushers for a in p.acks]
        self.last_raw = (phase.latencies, acks)
        result = _fanout_phase(usage, phase, pushes, self.batch, self.subscribers, drained, wire)
        result["push_ack_latency"] = percentiles(acks)
        return result

    def close(self) -> int:
        """Abort every connection; returns how many the server had closed meanwhile."""
        lost = sum(c.closed for c in self.conns)
        abort_all(self.conns)
        return lost


def merge_slices(
    slices: list[dict[str, Any]], raws: list[tuple[list[int], list[int]]], keep: list[int]
) -> dict[str, Any]:
    """One paced result from the kept slices: sums of work and time, pooled latencies."""
    kept = [slices[i] for i in keep]
    events = sum(s["events_delivered"] for s in kept)
    frames_ = sum(s["frames_delivered"] for s in kept)
    elapsed = sum(s["elapsed_s"] for s in kept)
    server = sum(s["server_cpu_s"] for s in kept)
    gen = sum(s["generator_cpu_s"] for s in kept)
    first = kept[0]
    return {
        "phase": first["phase"],
        "offered_pushes_per_s": first["offered_pushes_per_s"],
        "offered_events_per_s": first["offered_events_per_s"],
        "slices": len(slices),
        "slices_kept": [i + 1 for i in keep],
        "pushes": sum(s["pushes"] for s in kept),
        "events_expected": sum(s["events_expected"] for s in kept),
        "events_delivered": events,
        "frames_delivered": frames_,
        "all_delivered": all(s["all_delivered"] for s in slices),
        "order_errors": sum(s["order_errors"] for s in slices),
        "delivered_events_per_s": events / elapsed if elapsed else 0.0,
        "bytes_per_frame": sum(s["bytes_per_frame"] * s["frames_delivered"] for s in kept)
        / max(frames_, 1),
        "wire_bytes_per_event": sum(
            (s["wire_bytes_per_event"] or 0) * s["events_delivered"] for s in kept
        )
        / max(events, 1),
        "latency": percentiles([x for i in keep for x in raws[i][0]]),
        "push_ack_latency": percentiles([x for i in keep for x in raws[i][1]]),
        "server_cpu_us_per_event": server / events * 1e6 if events else None,
        "generator_cpu_us_per_event": gen / events * 1e6 if events else None,
        "elapsed_s": elapsed,
        "server_cpu_s": server,
        "generator_cpu_s": gen,
        "server_cpu_util": server / elapsed if elapsed else 0.0,
        "generator_cpu_util": gen / elapsed if elapsed else 0.0,
        "slice_results": slices,
    }


def _fanout_phase(
    usage: dict[str, float],
    phase: Phase,
    pushes: int,
    batch: int,
    subs: int,
    drained: bool,
    wire_bytes: int,
) -> dict[str, Any]:
    expected = pushes * batch * subs
    events = phase.events
    return {
        "pushes": pushes,
        "events_expected": expected,
        "events_delivered": events,
        "frames_delivered": phase.frames,
        "all_delivered": drained and events == expected,
        "order_errors": phase.order_errors,
        "delivered_events_per_s": events / usage["elapsed_s"],
        "bytes_per_frame": phase.bytes / phase.frames if phase.frames else 0.0,
        "wire_bytes_per_event": wire_bytes / events if events else None,
        "latency": percentiles(phase.latencies),
        "server_cpu_us_per_event": usage["server_cpu_s"] / events * 1e6 if events else None,
        "generator_cpu_us_per_event": usage["generator_cpu_s"] / events * 1e6 if events else None,
        **usage,
    }


# ---------------------------------------------------------------------------------------------
# 3. Durable pushes


async def durable_push(
    server: Server, auth: Auth, *, pushers: int, batch: int, duration: float
) -> dict[str, Any]:
    """``pushers`` connections, each on its own store, push back to back; acked events/s."""
    ids = store_ids(f"dur-{server.name}", pushers)
    clients = [
        await open_pusher(server, ids[k], auth.payload(200_000 + k), f"durable-{k}", None)
        for k in range(pushers)
    ]
    # Warm-up: creates the stores (a durable write each) outside the window.
    await asyncio.gather(*(c.push(batch) for c in clients))
    await server.quiet()
    latencies: list[int] = []
    meter = Meter(server)
    deadline = time.monotonic() + duration

    async def loop(client: Pusher) -> int:
        acked = 0
        while time.monotonic() < deadline:
            started = monotonic_ns()
            await client.push(batch)
            latencies.append(monotonic_ns() - started)
            acked += batch
        return acked

    acked = sum(await asyncio.gather(*(loop(c) for c in clients)))
    usage = meter.read()
    abort_all([c.conn for c in clients])
    await server.quiet()
    return {
        "pushers": pushers,
        "batch": batch,
        "acked_events": acked,
        "acked_pushes": len(latencies),
        "acked_events_per_s": acked / usage["elapsed_s"],
        "acked_pushes_per_s": len(latencies) / usage["elapsed_s"],
        "ack_latency": percentiles(latencies),
        "server_cpu_us_per_event": usage["server_cpu_s"] / acked * 1e6 if acked else None,
        **usage,
    }


# ---------------------------------------------------------------------------------------------
# 4. Idle connections


async def idle(
    server: Server,
    auth: Auth,
    *,
    connections: int,
    stores: int,
    concurrency: int,
    warmup: int,
    settle: float = 1.0,
    extensions: list[Any] | None = None,
) -> dict[str, Any]:
    """RSS growth of the server per idle authenticated connection holding a live pull."""
    ids = store_ids(f"idle-{server.name}", stores)

    def opener(offset: int) -> Callable[[int], Awaitable[Conn]]:
        def open_one(i: int) -> Awaitable[Conn]:
            n = offset + i
            store = ids[n % stores]
            return _conn_of(open_live(server, store, auth.wire(store, n), extensions=extensions))

        return open_one

    warm = await open_many(warmup, concurrency, opener(0))
    await server.quiet()
    await asyncio.sleep(settle / 2)
    rss_before = server.rss()
    meter = Meter(server)
    conns = await open_many(connections, concurrency, opener(warmup))
    usage = meter.read()
    await server.quiet()
    await asyncio.sleep(settle)
    rss_after = server.rss()
    lost = sum(c.closed for c in conns)
    abort_all(conns)
    abort_all(warm)
    await server.quiet()
    return {
        "connections": connections,
        "warmup_connections": warmup,
        "stores": stores,
        "rss_before_mib": rss_before / 2**20,
        "rss_after_mib": rss_after / 2**20,
        "rss_per_connection_kib": (rss_after - rss_before) / connections / 1024,
        "connections_lost": lost,
        "handshakes_per_s": connections / usage["elapsed_s"],
        "server_cpu_us_per_handshake": usage["server_cpu_s"] / connections * 1e6,
    }


# ---------------------------------------------------------------------------------------------
# 5. Catch-up


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
) -> dict[str, Any]:
    """A new client pulls the whole history (cursor None, live); events/s until ``NoMore``."""
    samples = []
    for run in range(runs):
        await server.quiet()
        samples.append(await _catchup_once(server, auth, store_id, events, run))
    rates = [s["events_per_s"] for s in samples]
    best = max(samples, key=lambda s: s["events_per_s"])
    return {
        "events": events,
        "runs": samples,
        "events_per_s": statistics.median(rates),
        "events_per_s_best": max(rates),
        "server_cpu_us_per_event": best["server_cpu_us_per_event"],
        "generator_cpu_util": best["generator_cpu_util"],
    }


async def _catchup_once(
    server: Server, auth: Auth, store_id: str, events: int, run: int
) -> dict[str, Any]:
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
    return {
        "events_received": got,
        "order_errors": state["errors"],
        "frames": state["frames"],
        "bytes_per_frame": state["bytes"] / state["frames"] if state["frames"] else 0,
        "seconds": elapsed,
        "events_per_s": got / elapsed if elapsed else 0.0,
        "server_cpu_us_per_event": usage["server_cpu_s"] / got * 1e6 if got else None,
        "generator_cpu_util": usage["generator_cpu_s"] / elapsed if elapsed else 0.0,
    }


def deflate_extensions() -> list[Any]:
    """What a browser offers: permessage-deflate with client_max_window_bits."""
    return [ClientPerMessageDeflateFactory()]


# ---------------------------------------------------------------------------------------------
# 6. Fan-out across nodes (several gateways on one PostgreSQL log)


def postgres_cpu() -> dict[int, float]:
    """CPU seconds of every visible ``postgres`` process (server and its backends), by pid."""
    out: dict[int, float] = {}
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return out
    for pid in pids:
        try:
            with open(f"/proc/{pid}/comm", "rb") as f:
                if f.read().strip() != b"postgres":
                    continue
            out[pid] = proc_cpu_seconds(pid)
        except (OSError, ValueError):
            continue
    return out


class NodeGroup:
    """Several server processes measured as one: CPU summed, quiet when all are quiet."""

    def __init__(self, nodes: list[Server]) -> None:
        self.nodes = nodes

    def cpu(self) -> float:
        return sum(node.cpu() for node in self.nodes)

    async def quiet(self) -> float:
        return sum([await node.quiet() for node in self.nodes])


class CrossNodeRig:
    """S stores x C live subscribers split evenly across the nodes; one pusher per store,
    all on the first node, pushing at a paced rate. Subscribers on the pushing node and on
    the others are counted apart: the latter measure the cross-node path (commit ->
    notification -> the other node's hub)."""

    def __init__(
        self, nodes: list[Server], auth: Auth, *, stores: int, subscribers: int, batch: int = 1
    ) -> None:
        assert len(nodes) >= 2
        assert batch <= 100
        self.nodes = nodes
        self.group = NodeGroup(nodes)
        self.auth = auth
        self.stores = stores
        self.subscribers = subscribers
        self.batch = batch
        self.ids = store_ids("fan2", stores)
        self.tracks = [Track(subscribers) for _ in range(stores)]
        self.local = [Phase()]  # subscribers on the pushing node
        self.remote = [Phase()]  # subscribers on the other node(s)
        self.sub_conns: list[Conn] = []
        self.pushers: list[Pusher] = []
        self.setup_s = 0.0

    async def open(self, *, concurrency: int) -> None:
        started = time.monotonic()
        ids, tracks, auth, nodes = self.ids, self.tracks, self.auth, self.nodes

        async def open_sub(i: int) -> Conn:
            k = i % self.stores
            node = (i // self.stores) % len(nodes)
            conn, _, _ = await open_live(nodes[node], ids[k], auth.wire(ids[k], i))
            Subscriber(conn, tracks[k], self.local if node == 0 else self.remote)
            return conn

        self.sub_conns = await open_many(self.stores * self.subscribers, concurrency, open_sub)
        self.pushers = [
            await open_pusher(
                nodes[0], ids[k], auth.payload(500_000 + k), f"fan2-pusher-{k}", tracks[k]
            )
            for k in range(self.stores)
        ]
        self.setup_s = time.monotonic() - started
        for _ in range(3):  # warm-up: creates the stores, primes both nodes' hubs
            await asyncio.gather(*(p.push(self.batch) for p in self.pushers))
        if not await self.drain(30):
            raise RuntimeError("fanout2: warm-up events did not reach every subscriber")
        await self.group.quiet()

    async def drain(self, timeout: float) -> bool:  # noqa: ASYNC109 - a polling deadline
        return await drain_tracks(self.tracks, timeout)

    async def paced(self, rate: float, duration: float) -> dict[str, Any]:
        """Every pusher pushes ``rate`` batches/s for ``duration`` seconds."""
        await self.group.quiet()
        self.local[0] = local = Phase()
        self.remote[0] = remote = Phase()
        node_cpu0 = [node.cpu() for node in self.nodes]
        pg0 = postgres_cpu()
        gc.collect()
        gc.disable()
        try:
            for pusher in self.pushers:
                pusher.acks.clear()
            meter = Meter(self.group)  # type: ignore[arg-type]  # duck-typed: cpu()
            deadline = time.monotonic() + duration
            t0 = time.monotonic()
            pushes = sum(await asyncio.gather(*pace_all(self.pushers, self.batch, rate, deadline)))
            push_s = time.monotonic() - t0
            drained = await self.drain(60)
            usage = meter.read()
        finally:
            gc.enable()
        pg1 = postgres_cpu()
        pg_s = sum(t - pg0.get(pid, 0.0) for pid, t in pg1.items()) if pg1 else None
        node_cpu = [node.cpu() - t0 for node, t0 in zip(self.nodes, node_cpu0, strict=True)]
        acks = [a for p in self.pushers for a in p.acks]
        events = local.events + remote.events
        expected = pushes * self.batch * self.subscribers
        per_node = self.subscribers // len(self.nodes)
        return {
            "offered_pushes_per_s": rate * self.stores,
            "offered_events_per_s": rate * self.stores * self.batch * self.subscribers,
            "pushes": pushes,
            # One push in flight per pusher: when acks take longer than the interval, the
            # pushers fall behind and the achieved rate stays under the offered one.
            "push_window_s": push_s,
            "achieved_pushes_per_s": pushes / push_s if push_s else 0.0,
            "events_expected": expected,
            "events_delivered": events,
            "frames_delivered": local.frames + remote.frames,
            "all_delivered": drained and events == expected,
            "order_errors": local.order_errors + remote.order_errors,
            "delivered_events_per_s": events / usage["elapsed_s"],
            "latency": percentiles(local.latencies + remote.latencies),
            "latency_same_node": percentiles(local.latencies),
            "latency_cross_node": percentiles(remote.latencies),
            "events_same_node": local.events,
            "events_cross_node": remote.events,
            "subscribers_same_node_per_store": self.subscribers - per_node,
            "push_ack_latency": percentiles(acks),
            "server_cpu_us_per_event": usage["server_cpu_s"] / events * 1e6 if events else None,
            "generator_cpu_us_per_event": usage["generator_cpu_s"] / events * 1e6
            if events
            else None,
            "node_cpu_s": node_cpu,
            "postgres_cpu_s": pg_s,
            "postgres_cpu_us_per_push": pg_s / pushes * 1e6
            if pg_s is not None and pushes
            else None,
            **usage,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "nodes": len(self.nodes),
            "stores": self.stores,
            "subscribers_per_store": self.subscribers,
            "live_subscribers": self.stores * self.subscribers,
            "batch": self.batch,
            "pushing_node": 1,
            "setup_s": self.setup_s,
        }

    def close(self) -> int:
        conns = self.sub_conns + [p.conn for p in self.pushers]
        lost = sum(c.closed for c in conns)
        abort_all(conns)
        return lost


async def drain_tracks(tracks: Any, timeout: float) -> bool:  # noqa: ASYNC109 - a deadline
    """Wait until every track has received all it expects; False on timeout."""
    deadline = time.monotonic() + timeout
    while any(t.remaining for t in tracks):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


def pace_all(
    pushers: Sequence[Any], batch: int, rate: float, deadline: float
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
    pusher: Any, batch: int, start: float, interval: float, deadline: float
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
