"""4. Idle connections: RSS growth of the server per idle connection holding a live pull."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bench.client import Conn
from bench.procs import Server
from bench.rigs.common import Auth, Meter, abort_all, conn_of, open_live, open_many, store_ids


@dataclass(frozen=True, slots=True, kw_only=True)
class IdleResult:
    connections: int
    warmup_connections: int
    stores: int
    rss_before_mib: float
    rss_after_mib: float
    rss_per_connection_kib: float
    connections_lost: int
    handshakes_per_s: float
    server_cpu_us_per_handshake: float


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
) -> IdleResult:
    """RSS growth of the server per idle authenticated connection holding a live pull."""
    ids = store_ids(f"idle-{server.name}", stores)

    def opener(offset: int) -> Callable[[int], Awaitable[Conn]]:
        def open_one(i: int) -> Awaitable[Conn]:
            n = offset + i
            store = ids[n % stores]
            return conn_of(open_live(server, store, auth.wire(store, n), extensions=extensions))

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
    return IdleResult(
        connections=connections,
        warmup_connections=warmup,
        stores=stores,
        rss_before_mib=rss_before / 2**20,
        rss_after_mib=rss_after / 2**20,
        rss_per_connection_kib=(rss_after - rss_before) / connections / 1024,
        connections_lost=lost,
        handshakes_per_s=connections / usage.elapsed_s,
        server_cpu_us_per_handshake=usage.server_cpu_s / connections * 1e6,
    )
