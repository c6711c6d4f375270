"""3. Durable pushes: concurrent pushers, each on its own store, push back to back."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from bench.client import monotonic_ns
from bench.procs import Server
from bench.results import FLAT, Latency, Usage, percentiles
from bench.rigs.common import Auth, Meter, abort_all, store_ids
from bench.rigs.streams import Pusher, open_pusher


@dataclass(frozen=True, slots=True, kw_only=True)
class DurableResult:
    pushers: int
    batch: int
    acked_events: int
    acked_pushes: int
    acked_events_per_s: float
    acked_pushes_per_s: float
    ack_latency: Latency
    server_cpu_us_per_event: float | None
    usage: Usage = field(metadata=FLAT)


async def durable_push(
    server: Server, auth: Auth, *, pushers: int, batch: int, duration: float
) -> DurableResult:
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
    return DurableResult(
        pushers=pushers,
        batch=batch,
        acked_events=acked,
        acked_pushes=len(latencies),
        acked_events_per_s=acked / usage.elapsed_s,
        acked_pushes_per_s=len(latencies) / usage.elapsed_s,
        ack_latency=percentiles(latencies),
        server_cpu_us_per_event=usage.server_cpu_s / acked * 1e6 if acked else None,
        usage=usage,
    )
