"""9. C100k on one process (issue 16): as many authenticated live pulls as the machine's file
limits allow, held for a minute while a hot store with 1,000 subscribers is pushed.

One fresh server at a time (baseline, then gateway: the generator holds a socket per
connection, so both servers cannot be loaded at once under one file limit). Each gets
``connections`` authenticated connections with a live pull: ``c100k_warmup`` first (then the
server's RSS is read), then the rest over ``c100k_stores`` stores, plus one hot store with
``c100k_hot`` subscribers and its pusher (:class:`bench.rigs.fanout.FanoutRig`). Client
sockets are bound to ``c100k_sources`` loopback addresses before they connect (one address
has ~28k ephemeral ports: 100k connections need at least four). The connections are then held
for ``c100k_hold_s`` seconds, in ``c100k_slices`` slices of paced single-event pushes to the
hot store (``c100k_rate`` pushes/s: push->delivery latency at every subscriber, server CPU per
delivered event; the ``c100k_keep`` share of slices least disturbed by other processes is
kept, as in the fan-out rig). At the end: the server's RSS again (VmRSS, never an estimate),
how many connections it closed meanwhile, and the per-connection figures projected to 100k.

The default size comes from the real limits: the lower of this process's and the server's
``RLIMIT_NOFILE`` soft limit, less the descriptors each already holds and ``c100k_reserve``
(~19,800 under a 20,000 limit that cannot be raised).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import resource
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench.cleanest import keep_cleanest
from bench.client import Conn, ConnectError, source_addresses
from bench.procs import Server
from bench.results import dig, fmt
from bench.rigs.common import Auth, Meter, abort_all, open_live, store_ids
from bench.rigs.fanout import FanoutPhase, FanoutRig, PacedSlices

if TYPE_CHECKING:
    from bench.runner import Bench

SCENARIO = "c100k"
PROJECTED = 100_000


@dataclass(frozen=True, slots=True, kw_only=True)
class C100kResult:
    connections: int  # client connections held: warm-up, idle, hot subscribers, pusher
    measured_connections: int  # opened after the first RSS reading (the per-connection base)
    stores: int
    hot_subscribers: int
    source_addresses: int
    fd_limit: int  # the server's soft RLIMIT_NOFILE
    server_fds_before: int
    server_fds_held: int
    open_failures: int
    open_s: float
    handshakes_per_s: float
    server_cpu_us_per_handshake: float
    held_s: float
    connections_dropped: int  # closed by the server while held
    connections_not_held: int  # open failures + dropped (the target: 0)
    rss_before_mib: float
    rss_open_mib: float
    rss_end_mib: float
    rss_per_connection_open_kib: float  # right after opening, before any push
    rss_per_connection_kib: float  # after the minute of pushes (the figure judged)
    projected_100k_rss_mib: float
    projected_100k_fds: int
    paced: PacedSlices


def fd_count(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_limit(pid: int) -> int:
    """The soft RLIMIT_NOFILE of process ``pid`` (from /proc/<pid>/limits)."""
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise RuntimeError(f"no open-file limit for {pid}")


def default_connections(reserve: int) -> int:
    """What this process's open-file limit leaves for client connections."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft - fd_count() - reserve


async def _open_counting(
    count: int, concurrency: int, opener: Callable[[int], Awaitable[Conn]]
) -> tuple[list[Conn], int]:
    """Like :func:`bench.rigs.common.open_many`, but a refused or failed connection is
    counted (one of the target's "all open"), not raised."""
    conns: list[Conn] = []
    failures = 0
    counter = itertools.count()

    async def worker() -> None:
        nonlocal failures
        while True:
            i = next(counter)
            if i >= count:
                return
            try:
                conns.append(await opener(i))
            except (ConnectError, OSError, TimeoutError):
                failures += 1

    await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))
    return conns, failures


async def hold(bench: Bench, server: Server, auth: Auth, connections: int) -> C100kResult:
    s = bench.sizes
    limit = fd_limit(server.pid)
    fds_before = fd_count(server.pid)
    # The server holds one descriptor per connection besides its own.
    connections = min(connections, limit - fds_before - s.c100k_reserve)
    hot = s.c100k_hot
    idle_count = connections - s.c100k_warmup - hot - 1
    assert idle_count > 0, f"c100k: {connections} connections leave none idle"
    ids = store_ids(f"c100k-{server.name}", s.c100k_stores)
    sources = source_addresses(s.c100k_sources)

    def opener(offset: int) -> Callable[[int], Awaitable[Conn]]:
        async def open_one(i: int) -> Conn:
            n = offset + i
            store = ids[n % len(ids)]
            conn, _, _ = await open_live(
                server, store, auth.wire(store, n), source=sources[n % len(sources)]
            )
            return conn

        return open_one

    rig = FanoutRig(server, auth, stores=1, subscribers=hot, batch=1)
    warm: list[Conn] = []
    conns: list[Conn] = []
    try:
        warm, failed_warm = await _open_counting(s.c100k_warmup, s.concurrency, opener(0))
        await server.quiet()
        await asyncio.sleep(s.settle_s / 2)
        rss_before = server.rss()
        meter = Meter(server)
        conns, failed = await _open_counting(idle_count, s.concurrency, opener(s.c100k_warmup))
        conns_usage = meter.read()
        idle_opened = len(conns)
        bench.log(f"c100k: {len(warm) + len(conns)} idle open, hot store: {hot} subscribers")
        await rig.open(concurrency=s.concurrency, sources=sources)
        usage = meter.read()
        # Counted now: closing the connections empties the lists.
        measured = len(conns) + len(rig.conns)
        opened = len(warm) + measured
        bench.log(f"c100k: {opened} connections open to {server.name} in {usage.elapsed_s:.1f} s")
        held_from = time.monotonic()
        await server.quiet()
        await asyncio.sleep(s.settle_s)
        rss_open = server.rss()
        fds_held = fd_count(server.pid)
        slices: list[FanoutPhase] = []
        raws: list[tuple[list[int], list[int]]] = []
        slice_s = s.c100k_hold_s / s.c100k_slices
        for _ in range(s.c100k_slices):
            slices.append(await rig.paced(s.c100k_rate, slice_s))
            raws.append(rig.last_raw)
        # The minute counts from the last connection open, the RSS reading included.
        await asyncio.sleep(max(0.0, s.c100k_hold_s - (time.monotonic() - held_from)))
        await server.quiet()
        rss_end = server.rss()
        held_s = time.monotonic() - held_from
        dropped = sum(c.closed for c in warm) + sum(c.closed for c in conns)
    finally:
        dropped_hot = rig.close()
        abort_all(conns)
        abort_all(warm)
    dropped += dropped_hot
    per_conn = (rss_end - rss_before) / measured / 1024
    return C100kResult(
        connections=opened,
        measured_connections=measured,
        stores=s.c100k_stores,
        hot_subscribers=hot,
        source_addresses=len(sources),
        fd_limit=limit,
        server_fds_before=fds_before,
        server_fds_held=fds_held,
        open_failures=failed_warm + failed,
        open_s=usage.elapsed_s,
        # The idle connections' handshakes (the hot store's come with warm-up pushes).
        handshakes_per_s=idle_opened / conns_usage.elapsed_s,
        server_cpu_us_per_handshake=conns_usage.server_cpu_s / max(idle_opened, 1) * 1e6,
        held_s=held_s,
        connections_dropped=dropped,
        connections_not_held=failed_warm + failed + dropped,
        rss_before_mib=rss_before / 2**20,
        rss_open_mib=rss_open / 2**20,
        rss_end_mib=rss_end / 2**20,
        rss_per_connection_open_kib=(rss_open - rss_before) / measured / 1024,
        rss_per_connection_kib=per_conn,
        projected_100k_rss_mib=(rss_before / 1024 + PROJECTED * per_conn) / 1024,
        projected_100k_fds=fds_before + PROJECTED,
        paced=keep_cleanest(slices, raws, s.c100k_keep, bench.server_cpus, bench.gen_cpus),
    )


async def c100k(bench: Bench) -> dict[str, C100kResult]:
    """The rig on a fresh baseline, then a fresh gateway (same size for both)."""
    s = bench.sizes
    connections = s.c100k_connections or default_connections(s.c100k_reserve)
    results = {}
    for make in (bench.baseline, bench.gateway):
        server = await make()
        try:
            results[server.name] = await bench.measure(
                SCENARIO, server, hold(bench, server, bench.auth, connections)
            )
        finally:
            await server.stop()
    return results


_ROWS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("  RSS per connection after the minute", ("rss_per_connection_kib",), "KiB"),
    ("  RSS per connection right after opening", ("rss_per_connection_open_kib",), "KiB"),
    ("  RSS before opening", ("rss_before_mib",), "MiB"),
    ("  RSS after the minute", ("rss_end_mib",), "MiB"),
    ("  projected RSS at 100k connections", ("projected_100k_rss_mib",), "MiB"),
    ("  connections not held (failed + dropped)", ("connections_not_held",), "n"),
    ("  handshakes/s while opening", ("handshakes_per_s",), "1/s"),
    ("  hot store: server CPU per delivered event", ("paced", "server_cpu_us_per_event"), "us"),
    ("  hot store: push->delivery p50", ("paced", "latency", "p50_ms"), "ms"),
    ("  hot store: push->delivery p99", ("paced", "latency", "p99_ms"), "ms"),
)


def table_rows(res: dict[str, Any]) -> list[tuple[str, str, Any, Any, str]]:
    """Rows of the printed table: (label, unit, gateway, baseline, ratio)."""
    by = res.get(SCENARIO)
    if not isinstance(by, dict) or "gateway" not in by:
        return []
    g = by["gateway"]
    rows: list[tuple[str, str, Any, Any, str]] = [
        (
            f"C100k rig: {g['connections']} live pulls, {g['stores']} stores + 1 hot "
            f"({g['hot_subscribers']} subscribers, {fmt(g['paced'].get('offered_pushes_per_s'))} "
            f"pushes/s), {g['source_addresses']} source addresses, held {fmt(g['held_s'])} s",
            "",
            None,
            None,
            "",
        )
    ]
    for label, path, unit in _ROWS:
        gw, base = dig(g, path), dig(by.get("baseline"), path)
        ratio = fmt(gw / base, 2) if gw and base else "-"
        rows.append((label, unit, gw, base, ratio))
    return rows
