"""9. C100k on one process (issue 16): as many authenticated live pulls as the machine's file
limits allow, held for a minute while a hot store with 1,000 subscribers is pushed.

A fresh baseline and a fresh gateway, loaded at once, each by a load generator process of its
own (:mod:`bench.rigs.c100k_worker`: one process holds at most ~19,850 sockets under a 20,000
file limit). Each server gets ``connections`` authenticated connections with a live pull:
``c100k_warmup`` first (then its RSS is read), then the rest over ``c100k_stores`` stores,
plus one hot store with ``c100k_hot`` subscribers and its pusher
(:class:`bench.rigs.fanout.FanoutRig`). Client sockets are bound to ``c100k_sources``
loopback addresses before they connect (one address has ~28k ephemeral ports: 100k
connections need at least four). The servers open one after the other, then hold their
connections for at least ``c100k_hold_s`` seconds, during which ``c100k_slices`` slices of
paced single-event pushes to the hot store (``c100k_rate`` pushes/s: push->delivery latency at
every subscriber, server CPU per delivered event) alternate between them, as the fan-out
rig's do, so the noise of a shared machine hits both alike; each keeps the ``c100k_keep``
share of its slices least disturbed by other processes. At the end: each server's RSS again
(VmRSS, never an estimate), how many connections it closed meanwhile, and the per-connection
figures projected to 100k.

The default size comes from the real limits: this process's ``RLIMIT_NOFILE`` soft limit
(the workers and servers raise theirs to the same hard limit) less the descriptors it holds
and ``c100k_reserve`` (~19,800 under a 20,000 limit that cannot be raised).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import resource
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

from bench.cleanest import keep_cleanest
from bench.procs import Server
from bench.results import dig, fmt
from bench.rigs import c100k_worker
from bench.rigs.c100k_worker import Opened, Spec
from bench.rigs.fanout import FanoutPhase, PacedSlices

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
    source_addresses: int  # distinct local addresses the client sockets were bound to
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


class Worker:
    """A load generator process holding one server's connections."""

    def __init__(self, process: BaseProcess, pipe: Connection) -> None:
        self.process = process
        self.pipe = pipe

    @classmethod
    def start(cls, spec: Spec) -> Worker:
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        process = context.Process(target=c100k_worker.main, args=(theirs, spec), daemon=True)
        process.start()
        theirs.close()
        return cls(process, ours)

    async def call(self, *command: object) -> Any:
        self.pipe.send(command)
        status, answer = await asyncio.get_running_loop().run_in_executor(None, self.pipe.recv)
        if status != "ok":
            raise RuntimeError(f"c100k worker: {answer}")
        return answer

    def stop(self) -> None:
        self.pipe.close()
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


@dataclass
class _Held:
    """One server's readings while the rig runs."""

    server: Server
    worker: Worker
    connections: int
    fd_limit: int
    fds_before: int
    warm: int = 0
    opened: Opened | None = None
    rss_before: int = 0
    rss_open: int = 0
    fds_held: int = 0
    held_from: float = 0.0
    slices: list[FanoutPhase] = field(default_factory=list)
    raws: list[tuple[list[int], list[int]]] = field(default_factory=list)


async def c100k(bench: Bench) -> dict[str, C100kResult]:
    """The rig on a fresh baseline and a fresh gateway, loaded at once (same size)."""
    s = bench.sizes
    started = time.monotonic()
    wanted = s.c100k_connections or default_connections(s.c100k_reserve)
    servers: list[Server] = []
    held: list[_Held] = []
    try:
        for make in (bench.baseline, bench.gateway):
            server = await make()
            servers.append(server)
            limit, fds = fd_limit(server.pid), fd_count(server.pid)
            # The server holds one descriptor per connection besides its own.
            connections = min(wanted, limit - fds - s.c100k_reserve)
            spec = Spec(
                name=server.name,
                port=server.port,
                pid=server.pid,
                cpus=server.cpus,
                quiet_interval=server.quiet_interval,
                secret=bench.secret,
                pool=bench.auth.pool,
                sizes=s,
                connections=connections,
            )
            held.append(_Held(server, Worker.start(spec), connections, limit, fds))
        for h in held:
            await bench.measure(f"{SCENARIO}_open", h.server, _open(bench, h))
        for h in held:
            await h.server.quiet()
        await asyncio.sleep(s.settle_s)
        for h in held:
            h.rss_open = h.server.rss()
            h.fds_held = fd_count(h.server.pid)
        slice_s = s.c100k_hold_s / 2 / s.c100k_slices
        for index in range(s.c100k_slices):
            for h in held:
                phase, raw = await bench.measure(
                    f"{SCENARIO}#{index + 1}",
                    h.server,
                    h.worker.call("slice", s.c100k_rate, slice_s),
                )
                h.slices.append(phase)
                h.raws.append(raw)
        # Every server holds its connections for c100k_hold_s from its last one's opening.
        last = max(h.held_from for h in held)
        await asyncio.sleep(max(0.0, s.c100k_hold_s - (time.monotonic() - last)))
        results = {}
        for h in held:
            await h.server.quiet()
            rss_end = h.server.rss()
            held_s = time.monotonic() - h.held_from
            dropped = await h.worker.call("finish")
            results[h.server.name] = _result(bench, h, rss_end, held_s, dropped)
        bench.timings[SCENARIO] = time.monotonic() - started
        return results
    finally:
        for h in held:
            h.worker.stop()
        for server in servers:
            await server.stop()


async def _open(bench: Bench, h: _Held) -> None:
    s = bench.sizes
    h.warm = await h.worker.call("warm")
    await h.server.quiet()
    await asyncio.sleep(s.settle_s / 2)
    h.rss_before = h.server.rss()
    bench.log(f"{SCENARIO}: opening {h.connections} connections to {h.server.name} ...")
    h.opened = opened = await h.worker.call("open")
    h.held_from = time.monotonic()
    bench.log(
        f"{SCENARIO}: {h.warm + opened.measured} connections open to {h.server.name} "
        f"in {opened.usage.elapsed_s:.1f} s ({opened.open_failures} failed)"
    )


def _result(bench: Bench, h: _Held, rss_end: int, held_s: float, dropped: int) -> C100kResult:
    s = bench.sizes
    opened = h.opened
    assert opened is not None
    measured = opened.measured
    per_conn = (rss_end - h.rss_before) / measured / 1024
    idle = opened.idle_usage
    return C100kResult(
        connections=h.warm + measured,
        measured_connections=measured,
        stores=s.c100k_stores,
        hot_subscribers=s.c100k_hot,
        source_addresses=opened.sources_used,
        fd_limit=h.fd_limit,
        server_fds_before=h.fds_before,
        server_fds_held=h.fds_held,
        open_failures=opened.open_failures,
        open_s=opened.usage.elapsed_s,
        # The idle connections' handshakes (the hot store's come with warm-up pushes).
        handshakes_per_s=opened.idle_opened / idle.elapsed_s,
        server_cpu_us_per_handshake=idle.server_cpu_s / max(opened.idle_opened, 1) * 1e6,
        held_s=held_s,
        connections_dropped=dropped,
        connections_not_held=opened.open_failures + dropped,
        rss_before_mib=h.rss_before / 2**20,
        rss_open_mib=h.rss_open / 2**20,
        rss_end_mib=rss_end / 2**20,
        rss_per_connection_open_kib=(h.rss_open - h.rss_before) / measured / 1024,
        rss_per_connection_kib=per_conn,
        projected_100k_rss_mib=(h.rss_before / 1024 + PROJECTED * per_conn) / 1024,
        projected_100k_fds=h.fds_before + PROJECTED,
        paced=keep_cleanest(h.slices, h.raws, s.c100k_keep, bench.server_cpus, bench.gen_cpus),
    )


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
