"""6. Fan-out across nodes: two gateways on one fresh PostgreSQL schema (gateways only).

Subscribers are split evenly across the nodes, every pusher is on the first node; the
subscribers on the other node measure the cross-node path (commit -> notification -> the
other node's hub). Informational, no target; skipped with a note without PostgreSQL.
"""

from __future__ import annotations

import asyncio
import gc
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from bench.client import Conn
from bench.procs import Server, proc_cpu_seconds
from bench.results import FLAT, OMIT_NONE, Latency, Usage, percentiles
from bench.rigs.common import Auth, Meter, abort_all, open_live, open_many, store_ids
from bench.rigs.streams import Phase, Pusher, Subscriber, Track, drain_tracks, open_pusher, pace_all


@dataclass(frozen=True, slots=True, kw_only=True)
class CrossNodePaced:
    offered_pushes_per_s: float
    offered_events_per_s: float
    pushes: int
    # One push in flight per pusher: when acks take longer than the interval, the
    # pushers fall behind and the achieved rate stays under the offered one.
    push_window_s: float
    achieved_pushes_per_s: float
    events_expected: int
    events_delivered: int
    frames_delivered: int
    all_delivered: bool
    order_errors: int
    delivered_events_per_s: float
    latency: Latency
    latency_same_node: Latency
    latency_cross_node: Latency
    events_same_node: int
    events_cross_node: int
    subscribers_same_node_per_store: int
    push_ack_latency: Latency
    server_cpu_us_per_event: float | None
    generator_cpu_us_per_event: float | None
    node_cpu_s: list[float]
    postgres_cpu_s: float | None
    postgres_cpu_us_per_push: float | None
    usage: Usage = field(metadata=FLAT)


@dataclass(frozen=True, slots=True, kw_only=True)
class TwoNodeGateway:
    nodes: int
    pushing_node: int
    postgres_schema: str
    note: str
    stores: int
    subscribers_per_store: int
    live_subscribers: int
    batch: int
    paced: CrossNodePaced
    connections_lost: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TwoNodeResult:
    """Exactly one of the three: the measurement, why it was skipped, or how it failed."""

    gateway: TwoNodeGateway | None = field(default=None, metadata=OMIT_NONE)
    skipped: str | None = field(default=None, metadata=OMIT_NONE)
    error: str | None = field(default=None, metadata=OMIT_NONE)


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

    async def paced(self, rate: float, duration: float) -> CrossNodePaced:
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
            meter = Meter(self.group)
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
        return CrossNodePaced(
            offered_pushes_per_s=rate * self.stores,
            offered_events_per_s=rate * self.stores * self.batch * self.subscribers,
            pushes=pushes,
            push_window_s=push_s,
            achieved_pushes_per_s=pushes / push_s if push_s else 0.0,
            events_expected=expected,
            events_delivered=events,
            frames_delivered=local.frames + remote.frames,
            all_delivered=drained and events == expected,
            order_errors=local.order_errors + remote.order_errors,
            delivered_events_per_s=events / usage.elapsed_s,
            latency=percentiles(local.latencies + remote.latencies),
            latency_same_node=percentiles(local.latencies),
            latency_cross_node=percentiles(remote.latencies),
            events_same_node=local.events,
            events_cross_node=remote.events,
            subscribers_same_node_per_store=self.subscribers - per_node,
            push_ack_latency=percentiles(acks),
            server_cpu_us_per_event=usage.server_cpu_s / events * 1e6 if events else None,
            generator_cpu_us_per_event=usage.generator_cpu_s / events * 1e6 if events else None,
            node_cpu_s=node_cpu,
            postgres_cpu_s=pg_s,
            postgres_cpu_us_per_push=pg_s / pushes * 1e6 if pg_s is not None and pushes else None,
            usage=usage,
        )

    def close(self) -> int:
        conns = self.sub_conns + [p.conn for p in self.pushers]
        lost = sum(c.closed for c in conns)
        abort_all(conns)
        return lost


def postgres_dsn() -> str:
    return os.environ.get(
        "GATEWAY_BENCH_POSTGRES_DSN",
        os.environ.get("GATEWAY_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"),
    )


async def postgres_unreachable(scenario: str, log: Callable[[str], None]) -> str | None:
    """None when the bench's PostgreSQL answers, else the note a skipped scenario reports."""
    import asyncpg

    dsn = postgres_dsn()
    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except Exception as exc:  # no server: skip, the rest of the run stands
        note = f"skipped: PostgreSQL at {dsn} is not reachable ({type(exc).__name__}: {exc})"
        log(f"{scenario}: {note}")
        return note
    await conn.close()
    return None


@asynccontextmanager
async def postgres_nodes(
    scenario: str,
    start_gateway: Callable[[dict[str, str]], Awaitable[Server]],
    log: Callable[[str], None],
    timings: dict[str, float],
) -> AsyncIterator[tuple[list[Server], str, str]]:
    """Two gateway nodes on one fresh PostgreSQL schema: ``(nodes, dsn, schema)``. The nodes
    are stopped, the time taken goes to ``timings[scenario]`` and the schema is dropped
    afterwards, whatever happened."""
    import asyncpg

    dsn = postgres_dsn()
    schema = f"bench_{secrets.token_hex(6)}"
    env = {
        "GATEWAY_STORE_BACKEND": "postgres",
        "GATEWAY_STORE_DSN": dsn,
        "GATEWAY_STORE_POSTGRES_SCHEMA": schema,
    }
    nodes: list[Server] = []
    started = time.monotonic()
    try:
        for index in range(2):
            node = await start_gateway(env)
            node.name = f"gateway-node{index + 1}"
            nodes.append(node)
        yield nodes, dsn, schema
    finally:
        for node in nodes:
            await node.stop()
        timings[scenario] = time.monotonic() - started
        try:
            conn = await asyncpg.connect(dsn, timeout=5)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await conn.close()
        except Exception as exc:
            log(f"{scenario}: could not drop schema {schema}: {exc}")


async def two_nodes(
    start_gateway: Callable[[dict[str, str]], Awaitable[Server]],
    auth: Auth,
    log: Callable[[str], None],
    timings: dict[str, float],
    *,
    stores: int,
    subscribers: int,
    rate: float,
    duration: float,
    concurrency: int,
) -> TwoNodeResult:
    """Two gateway nodes (``start_gateway(env)``, both on the server CPU) on one fresh
    PostgreSQL schema: subscribers split across them, pushes through node 1. Skipped with a
    note when PostgreSQL is not reachable; a failure is reported, never raised. The time it
    took goes to ``timings["fanout2"]``."""
    skipped = await postgres_unreachable("fanout2", log)
    if skipped is not None:
        return TwoNodeResult(skipped=skipped)
    try:
        async with postgres_nodes("fanout2", start_gateway, log, timings) as (nodes, _, schema):
            log(f"fanout2: connecting {stores}x{subscribers} across 2 nodes (schema {schema}) ...")
            rig = CrossNodeRig(nodes, auth, stores=stores, subscribers=subscribers)
            try:
                await rig.open(concurrency=concurrency)
                log(f"fanout2: paced {rate * stores:.0f} pushes/s for {duration} s ...")
                paced = await rig.paced(rate, duration)
            finally:
                lost = rig.close()
            return TwoNodeResult(
                gateway=TwoNodeGateway(
                    nodes=len(nodes),
                    pushing_node=1,
                    postgres_schema=schema,
                    note="informational (no target): both nodes pinned to the server CPU; "
                    "PostgreSQL runs unpinned, its CPU is not in server_cpu_us_per_event",
                    stores=stores,
                    subscribers_per_store=subscribers,
                    live_subscribers=stores * subscribers,
                    batch=1,
                    paced=paced,
                    connections_lost=lost,
                )
            )
    except Exception as exc:  # a failure here must not cost the other measurements
        log(f"fanout2: FAILED: {type(exc).__name__}: {exc}")
        return TwoNodeResult(error=f"{type(exc).__name__}: {exc}")
