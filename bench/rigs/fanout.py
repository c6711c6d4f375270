"""2. Fan-out: S stores x C live subscribers on one server, one pusher per store."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.client import Conn
from bench.procs import Server
from bench.results import FLAT, OMIT_NONE, Latency, Picked, Usage, percentiles
from bench.rigs.common import Auth, Meter, abort_all, open_live, open_many, store_ids
from bench.rigs.streams import Phase, Pusher, Subscriber, Track, drain_tracks, open_pusher, pace_all


@dataclass(frozen=True, slots=True, kw_only=True)
class FanoutPhase:
    """One phase (or slice) of pushing on one server: what was delivered, at what cost."""

    pushes: int
    events_expected: int
    events_delivered: int
    frames_delivered: int
    all_delivered: bool
    order_errors: int
    delivered_events_per_s: float
    bytes_per_frame: float
    wire_bytes_per_event: float | None
    latency: Latency
    server_cpu_us_per_event: float | None
    generator_cpu_us_per_event: float | None
    usage: Usage = field(metadata=FLAT)
    push_ack_latency: Latency
    phase: str
    # paced
    offered_pushes_per_s: float | None = field(default=None, metadata=OMIT_NONE)
    offered_events_per_s: float | None = field(default=None, metadata=OMIT_NONE)
    # saturated
    window: int | None = field(default=None, metadata=OMIT_NONE)


@dataclass(frozen=True, slots=True, kw_only=True)
class PacedSlices:
    """The paced phase of one server, pooled from its kept slices (:func:`merge_slices`)."""

    phase: str
    offered_pushes_per_s: float | None
    offered_events_per_s: float | None
    slices: int
    slices_kept: list[int]
    pushes: int
    events_expected: int
    events_delivered: int
    frames_delivered: int
    all_delivered: bool
    order_errors: int
    delivered_events_per_s: float
    bytes_per_frame: float
    wire_bytes_per_event: float
    latency: Latency
    push_ack_latency: Latency
    server_cpu_us_per_event: float | None
    generator_cpu_us_per_event: float | None
    elapsed_s: float
    server_cpu_s: float
    generator_cpu_s: float
    server_cpu_util: float
    generator_cpu_util: float
    slice_results: list[Picked[FanoutPhase]]
    interference: float
    # gateway only, when the baseline ran too: the median of slice-by-slice p99 ratios
    p99_ratio_paired_median: float | None = field(default=None, metadata=OMIT_NONE)


@dataclass(frozen=True, slots=True, kw_only=True)
class FanoutResult:
    """The fan-out of one server: its rig, the paced and the saturated phase."""

    stores: int
    subscribers_per_store: int
    live_subscribers: int
    batch: int
    setup_s: float
    paced: PacedSlices
    saturated: Picked[FanoutPhase]
    connections_lost: int


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

    async def open(
        self,
        *,
        concurrency: int,
        extensions: list[Any] | None = None,
        sources: Sequence[str] = (),
    ) -> None:
        """Open every subscriber (subscriber ``i`` from ``sources[i % len(sources)]`` if
        given) and the pushers, then push a few warm-up batches through every store."""
        started = time.monotonic()
        ids, tracks, phase, auth = self.ids, self.tracks, self.phase, self.auth

        async def open_sub(i: int) -> Conn:
            k = i % self.stores
            source = sources[i % len(sources)] if sources else None
            conn, _, _ = await open_live(
                self.server, ids[k], auth.wire(ids[k], i), extensions=extensions, source=source
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

    def wire_bytes(self) -> int:
        return sum(c.bytes_in for c in self.sub_conns)

    async def drain(self, timeout: float) -> bool:  # noqa: ASYNC109 - a polling deadline
        return await drain_tracks(self.tracks, timeout)

    async def paced(self, rate: float, duration: float) -> FanoutPhase:
        stores = self.stores
        return await self._phase(
            lambda deadline: pace_all(self.pushers, self.batch, rate, deadline),
            duration,
            phase="paced",
            offered_pushes_per_s=rate * stores,
            offered_events_per_s=rate * stores * self.batch * self.subscribers,
        )

    async def saturated(self, duration: float, window: int) -> FanoutPhase:
        async def run(pusher: Pusher, track: Track, deadline: float) -> int:
            pushes = 0
            while time.monotonic() < deadline:
                while len(track.remaining) >= window:
                    await track.wait_progress()
                await pusher.push(self.batch)
                pushes += 1
            return pushes

        return await self._phase(
            lambda deadline: [
                run(p, t, deadline) for p, t in zip(self.pushers, self.tracks, strict=True)
            ],
            duration,
            phase="saturated",
            window=window,
        )

    async def _phase(
        self,
        loops: Callable[[float], Sequence[Awaitable[int]]],
        duration: float,
        *,
        phase: str,
        offered_pushes_per_s: float | None = None,
        offered_events_per_s: float | None = None,
        window: int | None = None,
    ) -> FanoutPhase:
        await self.server.quiet()
        self.phase[0] = counts = Phase()
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
        self.last_raw = (counts.latencies, acks)
        expected = pushes * self.batch * self.subscribers
        events = counts.events
        return FanoutPhase(
            pushes=pushes,
            events_expected=expected,
            events_delivered=events,
            frames_delivered=counts.frames,
            all_delivered=drained and events == expected,
            order_errors=counts.order_errors,
            delivered_events_per_s=events / usage.elapsed_s,
            bytes_per_frame=counts.bytes / counts.frames if counts.frames else 0.0,
            wire_bytes_per_event=wire / events if events else None,
            latency=percentiles(counts.latencies),
            server_cpu_us_per_event=usage.server_cpu_s / events * 1e6 if events else None,
            generator_cpu_us_per_event=usage.generator_cpu_s / events * 1e6 if events else None,
            usage=usage,
            push_ack_latency=percentiles(acks),
            phase=phase,
            offered_pushes_per_s=offered_pushes_per_s,
            offered_events_per_s=offered_events_per_s,
            window=window,
        )

    def result(
        self, paced: PacedSlices, saturated: Picked[FanoutPhase], connections_lost: int
    ) -> FanoutResult:
        return FanoutResult(
            stores=self.stores,
            subscribers_per_store=self.subscribers,
            live_subscribers=self.stores * self.subscribers,
            batch=self.batch,
            setup_s=self.setup_s,
            paced=paced,
            saturated=saturated,
            connections_lost=connections_lost,
        )

    def close(self) -> int:
        """Abort every connection; returns how many the server had closed meanwhile."""
        lost = sum(c.closed for c in self.conns)
        abort_all(self.conns)
        return lost


def merge_slices(
    slices: list[Picked[FanoutPhase]], raws: list[tuple[list[int], list[int]]], keep: list[int]
) -> PacedSlices:
    """One paced result from the kept slices (each scored): sums of work and time, pooled
    latencies, the kept slices' mean interference."""
    kept = [slices[i].sample for i in keep]
    events = sum(s.events_delivered for s in kept)
    frames_ = sum(s.frames_delivered for s in kept)
    elapsed = sum(s.usage.elapsed_s for s in kept)
    server = sum(s.usage.server_cpu_s for s in kept)
    gen = sum(s.usage.generator_cpu_s for s in kept)
    first = kept[0]
    return PacedSlices(
        phase=first.phase,
        offered_pushes_per_s=first.offered_pushes_per_s,
        offered_events_per_s=first.offered_events_per_s,
        slices=len(slices),
        slices_kept=[i + 1 for i in keep],
        pushes=sum(s.pushes for s in kept),
        events_expected=sum(s.events_expected for s in kept),
        events_delivered=events,
        frames_delivered=frames_,
        all_delivered=all(s.sample.all_delivered for s in slices),
        order_errors=sum(s.sample.order_errors for s in slices),
        delivered_events_per_s=events / elapsed if elapsed else 0.0,
        bytes_per_frame=sum(s.bytes_per_frame * s.frames_delivered for s in kept) / max(frames_, 1),
        wire_bytes_per_event=sum((s.wire_bytes_per_event or 0) * s.events_delivered for s in kept)
        / max(events, 1),
        latency=percentiles([x for i in keep for x in raws[i][0]]),
        push_ack_latency=percentiles([x for i in keep for x in raws[i][1]]),
        server_cpu_us_per_event=server / events * 1e6 if events else None,
        generator_cpu_us_per_event=gen / events * 1e6 if events else None,
        elapsed_s=elapsed,
        server_cpu_s=server,
        generator_cpu_s=gen,
        server_cpu_util=server / elapsed if elapsed else 0.0,
        generator_cpu_util=gen / elapsed if elapsed else 0.0,
        slice_results=slices,
        interference=sum(slices[i].interference for i in keep) / len(keep),
    )
