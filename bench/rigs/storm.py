"""Reconnect storm: a deploy restarts the server under every client at once.

``clients`` live pulls spread over ``stores`` stores (each client's socket bound to one of
``SOURCES`` loopback addresses first: one address has ~28k ephemeral ports, and a second round
of 20,000 connections must not run out). Then the server gets SIGTERM, as a deploy sends it,
and is started again on the same port and data directory; every client reconnects with
LiveStore's jittered backoff (:mod:`bench.rigs.stormclient`) and pulls again from its cursor.
On the gateway a pusher (the Python client, bypass token, one connection per store)
pushes one event to every store every ``push_interval`` seconds from before the restart until
every client is live again, reconnecting through the storm too; each subscriber checks that it
gets every event of its store exactly once and in order.

Times are taken from the SIGTERM, the same way for both servers:

- ``storm_s``: until every client is live again (its first Chunk after the reconnect) and,
  on the gateway, has every event its store holds (the target compares it with the
  baseline's, whose clients only need to be accepted: it stores nothing);
- ``after_ready_s``: the same from the moment the new process listens;
- ``restart_s``: until the new process listens (``drain_s``: until the old one exited).

Server CPU per handshake is the new process's CPU from listening to the last client live,
over the handshakes it accepted (shed ones included in the CPU, not in the count).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bench.procs import Server, self_cpu_seconds
from bench.rigs.common import Auth, store_ids
from bench.rigs.stormclient import StormClient, Tally
from gateway.client import connect as client_connect

if TYPE_CHECKING:
    from bench.runner import Bench

SCENARIO = "storm"
# Source addresses (127.0.1.1 ...): ~28k ephemeral ports each.
SOURCES = [f"127.0.1.{k}" for k in range(1, 101)]


@dataclass(frozen=True, slots=True, kw_only=True)
class StormResult:
    clients: int
    stores: int
    connect_s: float
    drain_s: float
    restart_s: float
    storm_s: float | None
    after_ready_s: float | None
    live: int
    handshakes: int
    shed: int
    refused_tcp: int
    failed_handshakes: int
    failures: dict[str, int] = field(default_factory=dict)
    attempts_max: int
    events_pushed: int
    events_missed: int
    events_duplicated: int
    push_errors: int
    server_cpu_s: float
    server_cpu_us_per_handshake: float | None
    generator_cpu_s: float


class Pushers:
    """One Python-client writer per store: an event every ``interval`` s until stopped."""

    def __init__(self, url: str, ids: list[str], bypass: str, interval: float) -> None:
        self.url = url
        self.ids = ids
        self.bypass = bypass
        self.interval = interval
        self.heads = dict.fromkeys(ids, 0)
        self.errors = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        count = len(self.ids)
        self._tasks = [
            asyncio.create_task(self._push(store, self.interval * k / count))
            for k, store in enumerate(self.ids)
        ]

    async def _push(self, store: str, offset: float) -> None:
        client = client_connect(self.url, store, bypass_token=self.bypass, ping_interval=None)
        try:
            async with client:
                await asyncio.sleep(offset)
                n = 0
                while not self._stop.is_set():
                    n += 1
                    try:
                        async with asyncio.timeout(60):
                            self.heads[store] = await client.commit("v1.StormEvent", {"n": n})
                    except Exception:
                        self.errors += 1
                        return
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.interval):
                            await self._stop.wait()
        except Exception:
            self.errors += 1

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def _run(
    server: Server,
    auth: Auth,
    *,
    bypass: str,
    clients: int,
    stores: int,
    concurrency: int,
    push_interval: float,
    warm_s: float,
    within: float,
    log: Callable[[str], None],
    profile: Callable[[str], None] | None = None,
) -> StormResult:
    ids = store_ids(f"storm-{server.name}", stores)
    tally = Tally(clients=clients)
    fleet = []
    for i in range(clients):
        store = ids[i % stores]
        fleet.append(
            StormClient(
                tally, store, auth.wire(store, i)[0], auth.payload(i), SOURCES[i % len(SOURCES)]
            )
        )
    pushers = None
    if server.name == "gateway":
        pushers = Pushers(f"ws://127.0.0.1:{server.port}", ids, bypass, push_interval)
        pushers.start()
    started = time.monotonic()
    queue = iter(fleet)

    async def opener() -> None:
        for client in queue:
            await client.open(server.port)

    await asyncio.gather(*(opener() for _ in range(concurrency)))
    connect_s = time.monotonic() - started
    log(f"storm: {clients} live pulls on {server.name} in {connect_s:.1f} s; restarting it")
    await asyncio.sleep(warm_s)
    if profile is not None:
        profile("storm.drain")
    gen0 = self_cpu_seconds()
    killed = time.monotonic()
    tally.deadline = killed + within
    tasks = [asyncio.create_task(client.storm(server.port)) for client in fleet]
    drain_s, ready = await server.restart()
    tally.ready_at = ready
    if profile is not None:
        profile("storm.restarted")
    cpu0 = server.cpu()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout_at(asyncio.get_running_loop().time() + within):
            await tally.all_live.wait()
    cpu = server.cpu() - cpu0
    live_at = tally.last_live_at
    pushed = 0
    push_errors = 0
    if pushers is not None:
        await pushers.stop()
        push_errors = pushers.errors
        pushed = sum(pushers.heads.values())
        # Every client catches up on what was pushed until now (bounded).
        tally.expect(pushers.heads, fleet)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10.0):
                await tally.caught_up.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    generator = self_cpu_seconds() - gen0
    missed = tally.gaps
    caught_at = live_at
    if pushers is not None:
        for c in fleet:
            head = pushers.heads[c.store_id]
            missed += max(0, head - c.cursor)
            caught_at = max(caught_at, c.last_event_at)
    for client in fleet:
        if client.conn is not None:
            client.conn.abort()
    done = tally.live == clients and missed == 0
    return StormResult(
        clients=clients,
        stores=stores,
        connect_s=connect_s,
        drain_s=drain_s,
        restart_s=ready - killed,
        storm_s=caught_at - killed if done else None,
        after_ready_s=caught_at - ready if done else None,
        live=tally.live,
        handshakes=tally.handshakes,
        shed=tally.shed,
        refused_tcp=tally.refused_tcp,
        failed_handshakes=sum(tally.failures.values()),
        failures=dict(tally.failures),
        attempts_max=tally.attempts_max,
        events_pushed=pushed,
        events_missed=missed,
        events_duplicated=tally.duplicates,
        push_errors=push_errors,
        server_cpu_s=cpu,
        server_cpu_us_per_handshake=cpu / tally.handshakes * 1e6 if tally.handshakes else None,
        generator_cpu_s=generator,
    )


def _profile_steps(bench: Bench, server: Server) -> Callable[[str], None] | None:
    """With ``--profile``: a callable that ends the profile in progress and starts the next
    one on ``server``'s process (the restarted one has a new pid). It blocks ~0.3 s: numbers
    measured while profiling are not benchmark numbers."""
    profiler = bench.profiler
    if profiler is None:
        return None

    def step(name: str) -> None:
        summary = profiler.stop()
        if summary is not None:
            bench.log(f"  profile: {summary}")
        profiler.start(name, server.pid)

    return step


async def storm(bench: Bench) -> dict[str, StormResult]:
    """The storm on a fresh baseline, then on a fresh gateway."""
    s = bench.sizes
    results = {}
    env = {}
    if s.storm_max_pending >= 0:
        env["GATEWAY_LIMITS_MAX_PENDING_HANDSHAKES"] = str(s.storm_max_pending)
    if s.storm_backlog >= 0:
        env["GATEWAY_SERVER_BACKLOG"] = str(s.storm_backlog)
    makers: list[Callable[[], Awaitable[Server]]] = [
        bench.baseline,
        lambda: bench.gateway(env),
    ]
    for make in makers:
        server = await make()
        profile = _profile_steps(bench, server) if server.name == "gateway" else None
        try:
            results[server.name] = await bench.measure(
                SCENARIO,
                server,
                _run(
                    server,
                    bench.auth,
                    bypass=bench.bypass,
                    clients=s.storm_clients,
                    stores=s.storm_stores,
                    concurrency=s.concurrency,
                    push_interval=s.storm_push_interval,
                    warm_s=s.storm_warm_s,
                    within=s.storm_within_s,
                    log=bench.log,
                    profile=profile,
                ),
            )
        finally:
            await server.stop()
    return results


def table_rows(res: dict[str, object]) -> list[tuple[str, str, float | None, float | None, str]]:
    """Rows of the printed table."""
    by = res.get(SCENARIO)
    if not isinstance(by, dict) or not isinstance(by.get("gateway"), dict):
        return []
    g, b = by["gateway"], by.get("baseline") or {}

    def ratio(key: str) -> str:
        gv, bv = g.get(key), b.get(key)
        return f"{gv / bv:.2f}" if isinstance(gv, float | int) and bv else "-"

    def pair(label: str, unit: str, key: str) -> tuple[str, str, float | None, float | None, str]:
        return (label, unit, g.get(key), b.get(key), ratio(key))

    return [
        (f"reconnect storm: {g['clients']} live pulls, {g['stores']} stores", "", None, None, ""),
        pair("  SIGTERM to all live + caught up", "s", "storm_s"),
        pair("  new process listening to all live", "s", "after_ready_s"),
        pair("  SIGTERM to listening again", "s", "restart_s"),
        pair("  handshakes accepted in the storm", "n", "handshakes"),
        pair("  failed handshakes (must be 0)", "n", "failed_handshakes"),
        pair("  shed with 503 + Retry-After", "n", "shed"),
        pair("  most attempts by one client", "n", "attempts_max"),
        pair("  server CPU per handshake", "us", "server_cpu_us_per_handshake"),
        ("  events pushed in the storm", "n", g.get("events_pushed"), None, "-"),
        ("  events missed (must be 0)", "n", g.get("events_missed"), None, "-"),
        ("  events duplicated", "n", g.get("events_duplicated"), None, "-"),
    ]
