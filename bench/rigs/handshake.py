"""1. Handshakes: authenticated upgrades until the first live-pull Chunk."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field

from bench.client import Conn
from bench.procs import Server
from bench.results import FLAT, Latency, Usage, percentiles
from bench.rigs.common import Auth, Meter, abort_all, conn_of, open_live, open_many, store_ids


@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeResult:
    connections: int
    concurrency: int
    stores: int
    handshakes_per_s: float
    connect_latency: Latency
    server_cpu_us_per_handshake: float
    handshakes_per_server_cpu_s: float | None
    generator_cpu_us_per_handshake: float
    usage: Usage = field(metadata=FLAT)


async def handshake(
    server: Server,
    auth: Auth,
    *,
    duration: float,
    max_connections: int,
    concurrency: int,
    stores: int,
) -> HandshakeResult:
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
        lambda i: conn_of(open_live(server, ids[i % stores], auth.wire(ids[i % stores], i))),
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
    return HandshakeResult(
        connections=done,
        concurrency=concurrency,
        stores=stores,
        handshakes_per_s=done / usage.elapsed_s,
        connect_latency=percentiles(latencies),
        server_cpu_us_per_handshake=usage.server_cpu_s / done * 1e6,
        handshakes_per_server_cpu_s=done / usage.server_cpu_s if usage.server_cpu_s else None,
        generator_cpu_us_per_handshake=usage.generator_cpu_s / done * 1e6,
        usage=usage,
    )
