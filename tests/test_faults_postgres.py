"""Fault injection on two gateway nodes sharing one PostgreSQL log (issue 17).

Two ``gateway serve`` processes on one schema carry a bounded workload: on each node, per store,
one pusher and two live subscribers, and a ``/readyz`` poller per node. Meanwhile one kind of
fault hits them (one test each, plus one with all of them):

- the server side of every gateway database connection of this test's schema is terminated
  (``pg_terminate_backend``) every few hundred milliseconds;
- a node is frozen with SIGSTOP for 3 s (twice);
- a node's TCP path to PostgreSQL (through :class:`tests.helpers.tcpproxy.TcpProxy`) is cut for
  3 s (twice): every connection reset, new ones refused;
- a node is SIGKILLed and restarted (twice).

Clients behave like LiveStore's: a pusher pushes one event with parent = its known head; on
``ServerAheadError`` or ``UnknownError`` it pulls to catch up and pushes again, renumbered; on a
closed connection it reconnects, pulls and pushes again. An event counts as acked only on
``Exit Success``; an event whose answer was lost is found (or not) by that pull, so a pusher
never writes an event twice. A subscriber whose connection closes reconnects with its cursor.

What must hold (each violation is collected; the test fails listing them all):

- every request (push, or a pusher's catch-up pull) is answered within ``ANSWER_BOUND``: an
  ``Exit``, or the connection closes;
- ``/readyz`` answers only 200 or 503, within ``READYZ_BOUND``;
- once the faults stop, both nodes become ready, and the log read through each node (a non-live
  pull from no cursor) is the same: seqNums 1..head, each event chained to the previous one,
  no event twice, every acked event at the seqNum it was acked with;
- every subscriber saw, over its whole life and across reconnects, exactly that log: no gap,
  no duplicate, in order, up to the final head.

Sleeps here only pace load and faults; every wait for an outcome is bounded.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from websockets.exceptions import WebSocketException

from tests.helpers.clients import RpcClient
from tests.helpers.daemon import Daemon, ws_url
from tests.helpers.postgres import POSTGRES_DSN, drop_schema, fresh_schema, require_postgres
from tests.helpers.tcpproxy import TcpProxy
from tests.helpers.timeouts import TIMEOUT_UNIT
from tests.helpers.wire import Frame, cursor, is_chunk, is_exit, make_events, new_store_id

pytestmark = pytest.mark.postgres

STORES = 3
SUBSCRIBERS = 2  # per node and store (and one pusher per node and store)
FAULT_SECONDS = 15.0  # faults are injected during this phase
CALM_PUSH_SECONDS = 2.0  # pushers go on this long after it, to show the cluster recovered
MAX_PUSHES = 400  # per pusher
PUSH_PACE = 0.04  # seconds between one pusher's events
RETRY_PACE = 0.1  # seconds before retrying after a failure answer or a lost connection

ANSWER_BOUND = 15 * TIMEOUT_UNIT  # a request's answer: an Exit, or the connection closes
CONNECT_BOUND = 20 * TIMEOUT_UNIT  # reconnecting to a node (it may be restarting)
EVENT_BOUND = 40 * TIMEOUT_UNIT  # one pusher event, from its first push to acked / in the log
READYZ_BOUND = 10 * TIMEOUT_UNIT  # longer than a SIGSTOP: a frozen node answers after SIGCONT
CONVERGE_BOUND = 20 * TIMEOUT_UNIT  # after the faults: ready again, subscribers at the head
FINAL_PULL_TRIES = 5

Key = tuple[str, int]  # (pusher tag, its event number): one logical event


class Closed(Exception):
    """The connection closed (or could not be used); the client reconnects."""


class GiveUp(Exception):
    """A bound was exceeded; the problem is recorded and the client stops."""


# ---------------------------------------------------------------------------------------------
# The cluster


class Node:
    """One ``gateway serve`` process on the shared schema, restartable under the same name."""

    def __init__(self, name: str, schema: str, data_dir: Path, dsn: str) -> None:
        self.name = name
        self.schema = schema
        self.data_dir = data_dir
        self.dsn = dsn
        self.lines: list[str] = []  # the log of every process this node has been
        self.daemon: Daemon | None = None
        self.generation = 0
        self.down = True  # killed and not restarted yet
        self.frozen = False

    @property
    def port(self) -> int:
        assert self.daemon is not None
        return self.daemon.port

    async def start(self) -> None:
        env = {
            "GATEWAY_STORE_BACKEND": "postgres",
            "GATEWAY_STORE_DSN": self.dsn,
            "GATEWAY_STORE_POSTGRES_SCHEMA": self.schema,
            "GATEWAY_STORE_RECONCILE_INTERVAL": "1",
        }
        self.daemon = await Daemon.start(
            "--port", "0", "--data-dir", str(self.data_dir), env=env, lines=self.lines
        )
        self.generation += 1
        self.down = False

    async def kill_and_restart(self) -> None:
        assert self.daemon is not None
        self.down = True
        await self.daemon.kill()
        self.lines.append(f"--- {self.name}: SIGKILLed by the test, restarting ---")
        await self.start()

    def freeze(self) -> None:
        assert self.daemon is not None
        self.frozen = True
        self.daemon.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.frozen and self.daemon is not None:
            self.daemon.send_signal(signal.SIGCONT)
        self.frozen = False

    async def stop(self) -> None:
        self.thaw()
        if self.daemon is not None:
            await self.daemon.stop()


@dataclass
class Cluster:
    schema: str
    nodes: list[Node]
    proxy: TcpProxy | None


def dsn_via(proxy: TcpProxy) -> str:
    parts = urlsplit(POSTGRES_DSN)
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{proxy.port}"))


@asynccontextmanager
async def open_cluster(tmp_path: Path, *, proxied: bool = False) -> AsyncIterator[Cluster]:
    """Two nodes on a fresh schema; with ``proxied``, node b reaches PostgreSQL via a proxy."""
    await require_postgres()
    schema = fresh_schema()
    proxy: TcpProxy | None = None
    nodes: list[Node] = []
    try:
        dsn_b = POSTGRES_DSN
        if proxied:
            target = urlsplit(POSTGRES_DSN)
            proxy = await TcpProxy(target.hostname or "127.0.0.1", target.port or 5432).start()
            dsn_b = dsn_via(proxy)
        nodes = [
            Node("a", schema, tmp_path / "a", POSTGRES_DSN),
            Node("b", schema, tmp_path / "b", dsn_b),
        ]
        await nodes[0].start()  # migrates the schema
        await nodes[1].start()
        yield Cluster(schema, nodes, proxy)
    finally:
        await asyncio.gather(*(node.stop() for node in nodes))
        if proxy is not None:
            await proxy.close()
        await drop_schema(schema)


# ---------------------------------------------------------------------------------------------
# The run: what clients saw, and what went wrong


@dataclass
class Run:
    cluster: Cluster
    stores: list[str]
    started: float = field(default_factory=time.monotonic)
    problems: dict[str, list[str]] = field(default_factory=dict)
    notes: Counter[str] = field(default_factory=Counter)
    readyz: dict[str, Counter[str]] = field(default_factory=dict)

    @property
    def push_until(self) -> float:
        return self.started + FAULT_SECONDS + CALM_PUSH_SECONDS

    def at(self) -> str:
        return f"t={time.monotonic() - self.started:.1f}s"

    def problem(self, check: str, message: str) -> None:
        self.problems.setdefault(check, []).append(f"{self.at()} {message}")

    async def until(self, offset: float) -> None:
        """Pace a fault: sleep until ``offset`` seconds into the run."""
        await asyncio.sleep(max(0.0, self.started + offset - time.monotonic()))


async def connect(run: Run, node: Node, store: str, who: str) -> RpcClient:
    """Open a connection to ``node``, retrying while it is down, frozen or refusing."""
    deadline = time.monotonic() + CONNECT_BOUND
    while True:
        try:
            return await RpcClient.open(ws_url(node.port, store), store)
        except (OSError, TimeoutError, WebSocketException) as exc:
            if time.monotonic() > deadline:
                run.problem("connect", f"{who}: cannot connect to node {node.name}: {exc!r}")
                raise GiveUp from exc
            run.notes["connect retries"] += 1
            await asyncio.sleep(RETRY_PACE)


async def exchange(run: Run, client: RpcClient, rid: str, what: str) -> list[Frame]:
    """The frames for request ``rid`` through its Exit, which must come within ANSWER_BOUND.

    Raises :class:`Closed` when the connection closes first (an answer too). No answer in time
    is recorded as a problem; the caller then reconnects (:class:`Closed` as well).
    """
    frames: list[Frame] = []
    sent = run.at()
    try:
        async with asyncio.timeout(ANSWER_BOUND):
            while True:
                frame = await client.recv_for(rid, 10 * ANSWER_BOUND)
                frames.append(frame)
                if is_exit(frame):
                    return frames
    except TimeoutError:
        run.problem("answered", f"{what}, sent at {sent}: no answer within {ANSWER_BOUND:.0f}s")
        raise Closed from None
    except (OSError, WebSocketException) as exc:
        raise Closed from exc


def key_of(event: dict[str, Any]) -> Key:
    args = event["args"]
    return (str(args["tag"]), int(args["n"]))


class Pusher:
    """Pushes single events one after the other, the LiveStore way, until the push phase ends."""

    def __init__(self, run: Run, node: Node, store: str, tag: str) -> None:
        self.run = run
        self.node = node
        self.store = store
        self.tag = tag
        self.client: RpcClient | None = None
        self.backend_id: str | None = None
        self.head = 0  # the log as far as this client knows it
        self.dirty = True  # catch up (pull) before the next push
        self.acked: dict[int, int] = {}  # event number -> seqNum of its Exit Success
        self.found: dict[int, int] = {}  # answer lost, but a later pull found it in the log
        self.pushes = 0

    async def run_until_done(self) -> None:
        try:
            for n in range(MAX_PUSHES):
                if time.monotonic() >= self.run.push_until:
                    break
                await self.deliver(n)
                await asyncio.sleep(PUSH_PACE)
        except GiveUp:
            pass
        finally:
            await self.drop()

    async def drop(self) -> None:
        if self.client is not None:
            with suppress(Exception):
                await self.client.close()
        self.client = None
        self.dirty = True

    async def deliver(self, n: int) -> None:
        """Push event ``n`` until it is acked or a pull shows it in the log."""
        deadline = time.monotonic() + EVENT_BOUND
        while True:
            if time.monotonic() > deadline:
                self.run.problem(
                    "pusher", f"{self.tag}: event {n} neither acked nor in the log after retries"
                )
                raise GiveUp
            try:
                if self.client is None:
                    self.client = await connect(self.run, self.node, self.store, self.tag)
                    self.dirty = True
                if self.dirty:
                    landed = await self.catch_up(self.client, n)
                    self.dirty = False
                    if landed is not None:
                        self.found[n] = landed
                        return
                answer = await self.push(self.client, n)
            except Closed:
                self.run.notes["pusher reconnects"] += 1
                await self.drop()
                await asyncio.sleep(RETRY_PACE)
                continue
            outcome = answer["exit"]
            if outcome["_tag"] == "Success":
                self.head += 1
                self.acked[n] = self.head
                return
            error = outcome.get("cause", {}).get("error", {})
            self.dirty = True
            tag = error.get("_tag")
            self.run.notes[f"push answer {tag}"] += 1
            if tag == "ServerAheadError":
                continue
            if tag != "UnknownError":
                self.run.problem("pusher", f"{self.tag}: unexpected answer to push {n}: {answer}")
            await asyncio.sleep(RETRY_PACE)

    async def push(self, client: RpcClient, n: int) -> Frame:
        event = make_events(self.head + 1, 1, client_id=self.tag)[0]
        event["args"] = {"tag": self.tag, "n": n}
        self.pushes += 1
        rid = await self.send(client.send_push([event]))
        what = f"push {self.tag}#{n} (seqNum {self.head + 1}) to node {self.node.name}"
        frames = await exchange(self.run, client, rid, what)
        assert len(frames) == 1, f"{what}: a push is answered by one Exit: {frames}"
        return frames[0]

    async def catch_up(self, client: RpcClient, n: int) -> int | None:
        """Pull what this client has not seen; the seqNum of event ``n`` if it is there."""
        after = None if self.backend_id is None else cursor(self.backend_id, self.head)
        rid = await self.send(client.send_pull(after, live=False))
        what = f"catch-up pull of {self.tag} (after {self.head}) from node {self.node.name}"
        frames = await exchange(self.run, client, rid, what)
        *chunks, last = frames
        if last["exit"]["_tag"] != "Success":
            self.run.problem("pusher", f"{what} failed: {last}")
            raise Closed
        landed = None
        for chunk in chunks:
            assert is_chunk(chunk), chunk
            for item in chunk["values"]:
                self.backend_id = item["backendId"]
                for entry in item["batch"]:
                    event = entry["eventEncoded"]
                    self.head = max(self.head, event["seqNum"])
                    if key_of(event) == (self.tag, n):
                        landed = event["seqNum"]
        return landed

    @staticmethod
    async def send(sending: Awaitable[str]) -> str:
        try:
            return await sending
        except (OSError, WebSocketException) as exc:
            raise Closed from exc


class Subscriber:
    """A live pull that reconnects from its cursor; records every event it ever received."""

    def __init__(self, run: Run, node: Node, store: str, name: str) -> None:
        self.run = run
        self.node = node
        self.store = store
        self.name = name
        self.backend_id: str | None = None
        self.events: list[dict[str, Any]] = []
        self.last = 0
        self.violations = 0
        self.connections = 0
        self.grew = asyncio.Event()

    async def run_forever(self) -> None:
        with suppress(GiveUp):
            while True:
                client = await connect(self.run, self.node, self.store, self.name)
                self.connections += 1
                try:
                    await self.follow(client)
                except (OSError, WebSocketException):
                    self.run.notes["subscriber reconnects"] += 1
                finally:
                    with suppress(Exception):
                        await client.close()
                await asyncio.sleep(RETRY_PACE)

    async def follow(self, client: RpcClient) -> None:
        after = None if self.backend_id is None else cursor(self.backend_id, self.last)
        rid = await client.send_pull(after, live=True)
        while True:
            frame = await client.recv(3600)
            if is_exit(frame, rid):
                self.run.problem("subscriber", f"{self.name}: its live pull ended: {frame}")
                return
            if not is_chunk(frame, rid):
                continue
            for item in frame["values"]:
                self.backend_id = item["backendId"]
                for entry in item["batch"]:
                    self.receive(entry["eventEncoded"])

    def receive(self, event: dict[str, Any]) -> None:
        seq = event["seqNum"]
        if seq != self.last + 1:
            self.violations += 1
            if self.violations <= 5:
                kind = "a duplicate or reordering" if seq <= self.last else "a gap"
                self.run.problem(
                    "subscriber",
                    f"{self.name} (node {self.node.name}, connection {self.connections}): "
                    f"seqNum {seq} after {self.last}: {kind}",
                )
        self.events.append(event)
        self.last = max(self.last, seq)
        self.grew.set()

    async def reach(self, head: int, deadline: float) -> bool:
        while self.last < head:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.grew.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self.grew.wait(), remaining)
        return True


async def readyz_status(port: int) -> int | bytes:
    """The status of ``GET /readyz``, or what came instead of a status line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        await writer.drain()
        status_line = await reader.readline()
    finally:
        writer.transport.abort()
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", status_line)
    return status_line if match is None else int(match[1])


async def poll_readyz(run: Run, node: Node) -> None:
    """Poll ``/readyz`` until cancelled: only 200 or 503, each within READYZ_BOUND."""
    seen = run.readyz.setdefault(node.name, Counter())
    while True:
        await asyncio.sleep(0.1)
        if node.down:
            continue
        generation = node.generation
        status: int | bytes | Exception
        try:
            async with asyncio.timeout(READYZ_BOUND):
                status = await readyz_status(node.port)
        except TimeoutError:
            status = TimeoutError(f"no answer within {READYZ_BOUND:.0f}s")
        except OSError as exc:
            status = exc
        if node.down or node.generation != generation:
            continue  # killed meanwhile: whatever came, the test caused it
        seen[str(status)] += 1
        if status not in (200, 503):
            run.problem("readyz", f"node {node.name}: /readyz answered {status!r}")


async def ready_again(run: Run, node: Node, deadline: float) -> None:
    last: object = None
    while time.monotonic() < deadline:
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.01)):
                last = await readyz_status(node.port)
        except (OSError, TimeoutError) as exc:
            last = exc
        if last == 200:
            return
        await asyncio.sleep(0.1)
    run.problem("recovery", f"node {node.name} not ready after the faults: last answer {last!r}")


async def final_log(run: Run, node: Node, store: str) -> list[dict[str, Any]] | None:
    """The whole log of ``store`` read through ``node`` (a non-live pull from no cursor)."""
    what = f"final pull of {store} from node {node.name}"
    for _ in range(FINAL_PULL_TRIES):
        try:
            client = await connect(run, node, store, what)
        except GiveUp:
            return None
        try:
            rid = await Pusher.send(client.send_pull(None, live=False))
            frames = await exchange(run, client, rid, what)
        except Closed:
            # A pooled connection the faults broke may fail one more request.
            run.notes["final pull retries"] += 1
            continue
        finally:
            await client.close()
        *chunks, last = frames
        if last["exit"]["_tag"] != "Success":
            run.problem("log", f"{what} failed: {last}")
            return None
        return [entry["eventEncoded"] for c in chunks for i in c["values"] for entry in i["batch"]]
    run.problem("log", f"{store}: no complete pull through node {node.name}")
    return None


# ---------------------------------------------------------------------------------------------
# The workload


Fault = Callable[[Run], Coroutine[Any, Any, None]]


def check_log(run: Run, store: str, log: list[dict[str, Any]], pushers: list[Pusher]) -> None:
    seqs = [event["seqNum"] for event in log]
    if seqs != list(range(1, len(log) + 1)):
        run.problem("log", f"{store}: seqNums are not 1..{len(log)}: {seqs}")
    unchained = [e["seqNum"] for e in log if e["parentSeqNum"] != e["seqNum"] - 1]
    if unchained:
        run.problem("log", f"{store}: events not chained to their predecessor: {unchained}")
    where: dict[Key, list[int]] = {}
    for event in log:
        where.setdefault(key_of(event), []).append(event["seqNum"])
    twice = {k: s for k, s in where.items() if len(s) > 1}
    if twice:
        run.problem("duplicate", f"{store}: events written more than once: {twice}")
    for pusher in pushers:
        for kind, resolved in (("acked", pusher.acked), ("found", pusher.found)):
            for n, seq in resolved.items():
                at = where.get((pusher.tag, n), [])
                if seq not in at:
                    run.problem(
                        "lost",
                        f"{store}: {pusher.tag}#{n}, {kind} at seqNum {seq}, is in the log at {at}",
                    )


async def run_workload(cluster: Cluster, fault: Fault) -> Run:
    run = Run(cluster, [new_store_id("fault") for _ in range(STORES)])
    pushers = [
        Pusher(run, node, store, f"{store[-4:]}-{node.name}")
        for store in run.stores
        for node in cluster.nodes
    ]
    subscribers = [
        Subscriber(run, node, store, f"sub{i}@{node.name}/{store[-4:]}")
        for store in run.stores
        for node in cluster.nodes
        for i in range(SUBSCRIBERS)
    ]
    background = [asyncio.create_task(s.run_forever()) for s in subscribers]
    background += [asyncio.create_task(poll_readyz(run, node)) for node in cluster.nodes]
    pushing = [asyncio.create_task(p.run_until_done()) for p in pushers]
    faults = asyncio.create_task(fault(run))
    try:
        async with asyncio.timeout(FAULT_SECONDS + 30 * TIMEOUT_UNIT):
            await faults
        async with asyncio.timeout(CALM_PUSH_SECONDS + EVENT_BOUND + 10 * TIMEOUT_UNIT):
            await asyncio.gather(*pushing)
        deadline = time.monotonic() + CONVERGE_BOUND
        for node in cluster.nodes:
            await ready_again(run, node, deadline)
        for store in run.stores:
            logs = [await final_log(run, node, store) for node in cluster.nodes]
            if None in logs:
                continue
            log = logs[0]
            assert log is not None
            if any(other != log for other in logs[1:]):
                lengths = [len(other or ()) for other in logs]
                run.problem("log", f"{store}: the nodes' logs differ (lengths {lengths})")
            check_log(run, store, log, [p for p in pushers if p.store == store])
            for sub in (s for s in subscribers if s.store == store):
                if not await sub.reach(len(log), deadline):
                    run.problem(
                        "subscriber",
                        f"{sub.name}: stuck at seqNum {sub.last}, the log's head is {len(log)}",
                    )
                elif sub.events != log:
                    run.problem(
                        "subscriber",
                        f"{sub.name}: received {len(sub.events)} events, not the log's "
                        f"{len(log)} in order (seqNums {[e['seqNum'] for e in sub.events]})",
                    )
    finally:
        for task in (*background, *pushing, faults):
            task.cancel()
        await asyncio.gather(*background, *pushing, faults, return_exceptions=True)
    run.notes["pushes sent"] = sum(p.pushes for p in pushers)
    run.notes["events acked"] = sum(len(p.acked) for p in pushers)
    run.notes["events found unacked"] = sum(len(p.found) for p in pushers)
    run.notes["subscriber connections"] = sum(s.connections for s in subscribers)
    return run


_NOTEWORTHY = re.compile(r"Error|Traceback|error|failed|lost|SIGKILL")


def report(run: Run) -> str:
    lines = [f"readyz answers: {dict(run.readyz)}", f"notes: {dict(run.notes)}"]
    for check, problems in run.problems.items():
        lines.append(f"check {check!r}: {len(problems)} violation(s)")
        lines.extend(f"  {p}" for p in problems[:20])
    for node in run.cluster.nodes:
        logged = list(dict.fromkeys(line for line in node.lines if _NOTEWORTHY.search(line)))
        lines.append(f"node {node.name}: {len(logged)} distinct noteworthy log lines, e.g.:")
        lines.extend(f"  {line[:300]}" for line in logged[:25])
    return "\n".join(lines)


async def check_workload(cluster: Cluster, fault: Fault) -> None:
    run = await run_workload(cluster, fault)
    summary = report(run)
    if run.problems:
        pytest.fail(summary, pytrace=False)
    assert run.notes["events acked"] > 0, summary
    print(summary)  # shown with -s


# ---------------------------------------------------------------------------------------------
# The faults


async def terminate_backends_loop(run: Run, start: float, end: float) -> None:
    """Terminate every gateway connection of this schema, every 0.2-0.5 s."""
    prefix = f"gateway:{run.cluster.schema}:"
    conn = await asyncpg.connect(POSTGRES_DSN, timeout=5)
    try:
        await run.until(start)
        for pause in itertools.cycle((0.2, 0.35, 0.5, 0.3)):
            if time.monotonic() >= run.started + end:
                break
            killed = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE starts_with(application_name, $1)",
                prefix,
            )
            run.notes["backends terminated"] += int(killed)
            await asyncio.sleep(pause)
    finally:
        await conn.close()


async def freeze(run: Run, node: Node, start: float, seconds: float = 3.0) -> None:
    await run.until(start)
    node.freeze()
    try:
        await asyncio.sleep(seconds)
    finally:
        node.thaw()
    run.notes[f"SIGSTOP {node.name}"] += 1


async def cut(run: Run, proxy: TcpProxy, start: float, seconds: float = 3.0) -> None:
    await run.until(start)
    proxy.cut()
    try:
        await asyncio.sleep(seconds)
    finally:
        proxy.restore()
    run.notes["proxy cuts"] += 1


async def kill_and_restart(run: Run, node: Node, start: float) -> None:
    await run.until(start)
    await node.kill_and_restart()
    run.notes[f"SIGKILL {node.name}"] += 1


async def test_backends_terminated_every_few_hundred_ms(tmp_path: Path) -> None:
    async def fault(run: Run) -> None:
        await terminate_backends_loop(run, 1.0, FAULT_SECONDS)

    async with open_cluster(tmp_path) as cluster:
        await check_workload(cluster, fault)


async def test_node_frozen_with_sigstop(tmp_path: Path) -> None:
    async def fault(run: Run) -> None:
        node = run.cluster.nodes[0]
        await freeze(run, node, 2.0)
        await freeze(run, node, 9.0)

    async with open_cluster(tmp_path) as cluster:
        await check_workload(cluster, fault)


async def test_node_cut_from_postgres(tmp_path: Path) -> None:
    async def fault(run: Run) -> None:
        proxy = run.cluster.proxy
        assert proxy is not None
        await cut(run, proxy, 2.0)
        await cut(run, proxy, 9.0)

    async with open_cluster(tmp_path, proxied=True) as cluster:
        await check_workload(cluster, fault)


async def test_node_sigkilled_and_restarted(tmp_path: Path) -> None:
    async def fault(run: Run) -> None:
        node = run.cluster.nodes[0]
        await kill_and_restart(run, node, 3.0)
        await kill_and_restart(run, node, 10.0)

    async with open_cluster(tmp_path) as cluster:
        await check_workload(cluster, fault)


async def test_all_faults_together(tmp_path: Path) -> None:
    async def fault(run: Run) -> None:
        a, b = run.cluster.nodes
        proxy = run.cluster.proxy
        assert proxy is not None
        await asyncio.gather(
            terminate_backends_loop(run, 1.0, FAULT_SECONDS),
            freeze(run, a, 2.0),
            cut(run, proxy, 6.0),
            kill_and_restart(run, a, 10.0),
            kill_and_restart(run, b, 12.0),
        )

    async with open_cluster(tmp_path, proxied=True) as cluster:
        await check_workload(cluster, fault)
