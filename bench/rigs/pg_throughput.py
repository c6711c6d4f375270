"""8. PostgreSQL throughput: two gateways on one fresh schema, many stores and one hot store.

``pg_stores`` stores, each with one single-event pusher (pushing back to back, half of them on
each node) and one live subscriber on each node; plus one hot store pushed by ``pg_hot``
clients spread over both nodes, each pushing the next seqNum it believes free and, answered
``ServerAheadError``, retrying from the head the error names (what a LiveStore client does
after a rebase), with one live subscriber per node. Two windows of ``duration``: first
everything at once (durable acked events/s in aggregate; the hot store's pushes/s under that
load are reported), then the hot store's clients alone (its pushes/s: what one store takes
through two nodes). Reports order errors of every subscriber in both and the CPU of
PostgreSQL per acked push (the schema's backends, found in ``pg_stat_activity`` by their
``application_name``, and every ``postgres`` process). Skipped without PostgreSQL.

Why two windows: under the aggregate load the server CPU is saturated, and a hot client's
turn (a refusal, then its retry) waits in the same queue as the 200 cold pushers' pushes, so
the hot store gets roughly its share of the requests (16 of 216), whatever the store could
take; the second window measures the store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bench import frames
from bench.client import Conn, monotonic_ns
from bench.procs import Server, proc_cpu_seconds
from bench.results import FLAT, OMIT_NONE, Latency, Usage, percentiles
from bench.rigs.common import Auth, Meter, abort_all, open_live, open_many, store_ids
from bench.rigs.multinode import NodeGroup, postgres_cpu, postgres_nodes, postgres_unreachable
from bench.rigs.streams import Phase, Pusher, Subscriber, Track, open_pusher

SCENARIO = "pg_throughput"
AHEAD = b'"minimumExpectedNum":'


@dataclass(frozen=True, slots=True, kw_only=True)
class HotAlone:
    """The second window: the hot store's clients alone (both nodes, live subscribers)."""

    window_s: float
    acked_pushes: int
    pushes_per_s: float
    rejected_pushes: int
    ack_latency: Latency
    events_delivered: int
    events_expected: int
    all_delivered: bool
    order_errors: int
    server_cpu_us_per_push: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class PgThroughput:
    nodes: int
    postgres_schema: str
    stores: int
    hot_clients: int
    window_s: float
    acked_pushes: int
    acked_events_per_s: float  # every store, the hot one too (single-event pushes)
    hot_acked_pushes: int
    hot_pushes_per_s: float
    hot_rejected_pushes: int  # ServerAheadError: another client took that seqNum
    ack_latency: Latency
    hot_ack_latency: Latency
    events_delivered: int
    events_expected: int
    all_delivered: bool
    order_errors: int
    node_cpu_s: list[float]
    server_cpu_us_per_push: float | None
    postgres_backend_cpu_s: float | None  # the schema's pool and listener backends
    postgres_cpu_s: float | None  # every postgres process (walwriter, checkpointer too)
    postgres_backend_cpu_us_per_push: float | None
    postgres_cpu_us_per_push: float | None
    hot_alone: HotAlone
    note: str
    usage: Usage = field(metadata=FLAT)


@dataclass(frozen=True, slots=True, kw_only=True)
class PgThroughputResult:
    """Exactly one of the three: the measurement, why it was skipped, or how it failed."""

    gateway: PgThroughput | None = field(default=None, metadata=OMIT_NONE)
    skipped: str | None = field(default=None, metadata=OMIT_NONE)
    error: str | None = field(default=None, metadata=OMIT_NONE)


class HotStore:
    """The seqNum the hot store's clients believe free, shared by them like a rebase would."""

    def __init__(self) -> None:
        self.head = 0
        self.top = 0  # the highest seqNum acked: the log's head (every event in it was acked)
        self.acks: list[int] = []
        self.rejected = 0


async def hot_push(pusher: Pusher, hot: HotStore) -> bool:
    """One single-event push of the next free seqNum; False when another client had it."""
    first = hot.head + 1
    started = monotonic_ns()
    events = frames.make_events(first, 1, started, pusher.client_id)
    frame = frames.push_frame(pusher.ids(), pusher.store_id, pusher.payload, events)
    pusher.waiting = asyncio.get_running_loop().create_future()
    pusher.conn.send(frame)
    async with asyncio.timeout(60):
        answer = await pusher.waiting
    if b'"exit":{"_tag":"Success"' in answer:
        hot.acks.append(monotonic_ns() - started)
        hot.head = max(hot.head, first)
        hot.top = max(hot.top, first)
        return True
    minimum = frames.first_int_after(answer, AHEAD)
    if minimum < 0:
        raise RuntimeError(f"hot push refused: {answer[:300]!r}")
    hot.rejected += 1
    # The gateway's minimumExpectedNum is the head its next push must build on: taken as
    # told (a pipelined node may name the head of pushes still committing, which move it
    # back if they fail), not merged with what others were told.
    hot.head = minimum
    return False


async def hot_until(pusher: Pusher, hot: HotStore, deadline: float) -> None:
    while time.monotonic() < deadline:
        await hot_push(pusher, hot)


async def backend_pids(dsn: str, schema: str) -> list[int]:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name LIKE $1",
            f"gateway:{schema}:%",
        )
    finally:
        await conn.close()
    return [int(r["pid"]) for r in rows]


def cpu_of(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            out[pid] = proc_cpu_seconds(pid)
        except (OSError, ValueError):
            continue
    return out


class PgThroughputRig:
    def __init__(self, nodes: list[Server], auth: Auth, *, stores: int, hot_clients: int) -> None:
        self.nodes = nodes
        self.group = NodeGroup(nodes)
        self.auth = auth
        self.ids = store_ids("pgt", stores)
        self.hot_id = store_ids("pgt-hot", 1)[0]
        self.tracks = [Track(len(nodes)) for _ in range(stores)]
        self.hot_track = Track(len(nodes))
        self.phase = [Phase()]
        self.subscribers: list[Subscriber] = []
        self.hot_subscribers: list[Subscriber] = []
        self.pushers: list[Pusher] = []
        self.hot_pushers: list[Pusher] = []
        self.hot = HotStore()
        self.hot_clients = hot_clients

    def conns(self) -> list[Conn]:
        subs = self.subscribers + self.hot_subscribers
        return [s.conn for s in subs] + [p.conn for p in self.pushers + self.hot_pushers]

    async def open(self, *, concurrency: int) -> None:
        nodes, ids, auth = self.nodes, self.ids, self.auth
        stores = len(ids)
        # The pushers first: their warm-up push creates the stores.
        self.pushers = [
            await open_pusher(
                nodes[k % len(nodes)], ids[k], auth.payload(800_000 + k), f"pgt-{k}", self.tracks[k]
            )
            for k in range(stores)
        ]
        self.hot_pushers = [
            await open_pusher(
                nodes[k % len(nodes)], self.hot_id, auth.payload(900_000 + k), f"hot-{k}", None
            )
            for k in range(self.hot_clients)
        ]
        await asyncio.gather(*(p.push(1) for p in self.pushers))
        while not await hot_push(self.hot_pushers[0], self.hot):
            pass

        async def open_sub(i: int) -> Conn:
            k, node = divmod(i, len(nodes))
            store = ids[k] if k < stores else self.hot_id
            conn, _, _ = await open_live(nodes[node], store, auth.wire(store, 850_000 + i))
            sub = Subscriber(conn, self.tracks[k] if k < stores else self.hot_track, self.phase)
            sub.last_seq = 1  # each store holds its warm-up event already
            (self.subscribers if k < stores else self.hot_subscribers).append(sub)
            return conn

        await open_many((stores + 1) * len(nodes), concurrency, open_sub)
        await self.group.quiet()

    async def drained(self, timeout: float) -> bool:  # noqa: ASYNC109 - a polling deadline
        """Every subscriber has every acked event of its store (the hot one: its head)."""
        heads = {id(p.track): p.seq for p in self.pushers}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(s.last_seq >= heads[id(s.track)] for s in self.subscribers) and all(
                s.last_seq >= self.hot.top for s in self.hot_subscribers
            ):
                return True
            await asyncio.sleep(0.01)
        return False

    async def run(self, duration: float, dsn: str, schema: str) -> PgThroughput:
        pids = await backend_pids(dsn, schema)
        await self.group.quiet()
        self.phase[0] = phase = Phase()
        for p in self.pushers:
            p.acks.clear()
        hot = self.hot
        hot.acks.clear()
        hot.rejected = 0
        hot_top0 = hot.top
        seq0 = [p.seq for p in self.pushers]
        node_cpu0 = [node.cpu() for node in self.nodes]
        pg0, all0 = cpu_of(pids), postgres_cpu()
        meter = Meter(self.group)
        deadline = time.monotonic() + duration

        async def cold_loop(pusher: Pusher) -> None:
            while time.monotonic() < deadline:
                await pusher.push(1)

        await asyncio.gather(
            *(cold_loop(p) for p in self.pushers),
            *(hot_until(p, hot, deadline) for p in self.hot_pushers),
        )
        usage = meter.read()
        pg1, all1 = cpu_of(pids), postgres_cpu()
        node_cpu = [node.cpu() - t0 for node, t0 in zip(self.nodes, node_cpu0, strict=True)]
        drained = await self.drained(30)
        cold_pushes = sum(p.seq - s for p, s in zip(self.pushers, seq0, strict=True))
        hot_pushes = len(hot.acks)
        pushes = cold_pushes + hot_pushes
        expected = (cold_pushes + (hot.top - hot_top0)) * len(self.nodes)
        elapsed = usage.elapsed_s
        backend_s = sum(t - pg0.get(pid, t) for pid, t in pg1.items()) if pg1 else None
        all_s = sum(t - all0.get(pid, 0.0) for pid, t in all1.items()) if all1 else None
        hot_rejected, hot_latency = hot.rejected, percentiles(hot.acks)
        hot_alone = await self.hot_alone(duration)
        return PgThroughput(
            nodes=len(self.nodes),
            postgres_schema=schema,
            stores=len(self.pushers),
            hot_clients=len(self.hot_pushers),
            window_s=elapsed,
            acked_pushes=pushes,
            acked_events_per_s=pushes / elapsed,
            hot_acked_pushes=hot_pushes,
            hot_pushes_per_s=hot_pushes / elapsed,
            hot_rejected_pushes=hot_rejected,
            ack_latency=percentiles([a for p in self.pushers for a in p.acks]),
            hot_ack_latency=hot_latency,
            events_delivered=phase.events,
            events_expected=expected,
            all_delivered=drained and phase.events == expected,
            order_errors=phase.order_errors,
            node_cpu_s=node_cpu,
            server_cpu_us_per_push=usage.server_cpu_s / pushes * 1e6 if pushes else None,
            postgres_backend_cpu_s=backend_s,
            postgres_cpu_s=all_s,
            postgres_backend_cpu_us_per_push=(
                backend_s / pushes * 1e6 if backend_s is not None and pushes else None
            ),
            postgres_cpu_us_per_push=all_s / pushes * 1e6 if all_s is not None and pushes else None,
            hot_alone=hot_alone,
            note="both nodes pinned to the server CPU; PostgreSQL runs unpinned",
            usage=usage,
        )

    async def hot_alone(self, duration: float) -> HotAlone:
        """The hot store's clients alone for ``duration`` (every earlier event delivered)."""
        self.phase[0] = phase = Phase()
        hot = self.hot
        hot.acks.clear()
        hot.rejected = 0
        top0 = hot.top
        meter = Meter(self.group)
        deadline = time.monotonic() + duration

        await asyncio.gather(*(hot_until(p, hot, deadline) for p in self.hot_pushers))
        usage = meter.read()
        drained = await self.drained(30)
        pushes = len(hot.acks)
        expected = (hot.top - top0) * len(self.hot_subscribers)
        return HotAlone(
            window_s=usage.elapsed_s,
            acked_pushes=pushes,
            pushes_per_s=pushes / usage.elapsed_s,
            rejected_pushes=hot.rejected,
            ack_latency=percentiles(hot.acks),
            events_delivered=phase.events,
            events_expected=expected,
            all_delivered=drained and phase.events == expected,
            order_errors=phase.order_errors,
            server_cpu_us_per_push=usage.server_cpu_s / pushes * 1e6 if pushes else None,
        )

    def close(self) -> int:
        conns = self.conns()
        lost = sum(c.closed for c in conns)
        abort_all(conns)
        return lost


async def pg_throughput(
    start_gateway: Callable[[dict[str, str]], Awaitable[Server]],
    auth: Auth,
    log: Callable[[str], None],
    timings: dict[str, float],
    *,
    stores: int,
    hot_clients: int,
    duration: float,
    concurrency: int,
) -> PgThroughputResult:
    """Two gateway nodes on one fresh PostgreSQL schema; never raises (a failure is reported)."""
    skipped = await postgres_unreachable(SCENARIO, log)
    if skipped is not None:
        return PgThroughputResult(skipped=skipped)
    try:
        async with postgres_nodes(SCENARIO, start_gateway, log, timings) as (nodes, dsn, schema):
            log(f"{SCENARIO}: {stores} stores + 1 hot ({hot_clients} clients), schema {schema}")
            rig = PgThroughputRig(nodes, auth, stores=stores, hot_clients=hot_clients)
            try:
                await rig.open(concurrency=concurrency)
                log(f"{SCENARIO}: pushing for {duration} s ...")
                result = await rig.run(duration, dsn, schema)
            finally:
                rig.close()
            return PgThroughputResult(gateway=result)
    except Exception as exc:  # a failure here must not cost the other measurements
        log(f"{SCENARIO}: FAILED: {type(exc).__name__}: {exc}")
        return PgThroughputResult(error=f"{type(exc).__name__}: {exc}")


def table_rows(res: dict[str, object]) -> list[tuple[str, str, float | None, None, str]]:
    """Rows of the printed table (gateway only)."""
    by = res.get(SCENARIO)
    if not isinstance(by, dict) or not isinstance(by.get("gateway"), dict):
        return []
    g = by["gateway"]
    alone = g["hot_alone"]
    return [
        (
            f"PostgreSQL, 2 nodes, {g['stores']} stores + 1 hot ({g['hot_clients']} clients), B=1",
            "",
            None,
            None,
            "",
        ),
        ("  durable acked events/s (aggregate)", "1/s", g["acked_events_per_s"], None, "-"),
        ("  hot store acked pushes/s, under that load", "1/s", g["hot_pushes_per_s"], None, "-"),
        ("  hot store ServerAhead rejections", "n", g["hot_rejected_pushes"], None, "-"),
        ("  hot store alone: acked pushes/s", "1/s", alone["pushes_per_s"], None, "-"),
        ("  hot store alone: ServerAhead rejections", "n", alone["rejected_pushes"], None, "-"),
        ("  hot store alone: ack latency p99", "ms", alone["ack_latency"]["p99_ms"], None, "-"),
        ("  hot store alone: order errors", "n", alone["order_errors"], None, "-"),
        (
            "  hot store alone: all delivered on both nodes",
            "n",
            float(alone["all_delivered"]),
            None,
            "-",
        ),
        ("  ack latency p99", "ms", g["ack_latency"]["p99_ms"], None, "-"),
        ("  order errors (must be 0)", "n", g["order_errors"], None, "-"),
        ("  all delivered on both nodes (1 = yes)", "n", float(g["all_delivered"]), None, "-"),
        ("  server CPU per push (both nodes)", "us", g["server_cpu_us_per_push"], None, "-"),
        (
            "  PostgreSQL CPU per push (schema backends)",
            "us",
            g["postgres_backend_cpu_us_per_push"],
            None,
            "-",
        ),
        (
            "  PostgreSQL CPU per push (all processes)",
            "us",
            g["postgres_cpu_us_per_push"],
            None,
            "-",
        ),
    ]
