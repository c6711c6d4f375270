"""7. The Python client (:mod:`gateway.client`) next to the load generator, on one gateway.

What a service sees: how fast ``gateway.client`` follows and writes a store, against the
Sans-I/O load generator doing the same job on the same gateway in the same run. The client
runs in a process of its own (:mod:`bench.pyclient`, one per measurement, pinned like this
process to the generator's CPU), as a service runs beside its server; the generator runs
here. Each pair alternates, round by round. ``--only client`` runs this alone (< 60 s).

- ``client_follow``: a store of ``client_events`` events (pushed by the generator, 100 per
  push, ``client_window`` pushes in flight), read to its head by
  ``events(after=None, live=False)`` and by the generator's catch-up
  (:mod:`bench.rigs.catchup`). Medians of ``client_follow_runs`` runs each.
  Target: the client >= 100,000 events/s.
- ``client_commit``: single-event commits from one client: ``client_tasks`` tasks call
  ``commit()`` back to back. The reference is the generator's single writer pushing
  single-event batches on one connection with ``client_window`` pushes in flight
  (pipelined); ``generator_serial`` (one push in flight, informational) shows what
  pipelining is worth. Target: client >= 0.5x the pipelined generator.
- ``client_commit_many``: the same with ``commit_many()`` of ``client_batch`` events from
  ``client_batch_tasks`` tasks, and generator batches of that size.

Every writer has a fresh store of its own. Commit figures are the cleanest of
``client_rounds`` rounds (least foreign CPU load), as in the handshake measurement.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from bench import frames
from bench.client import Conn, IdSource, connect, monotonic_ns
from bench.frames import EXIT_START, PING
from bench.procs import Server
from bench.pyclient import BYPASS_ENV, ROOT_ENV, CommitRun, FollowRun, commit_run_from_json
from bench.results import dig, fmt, percentiles
from bench.rigs.catchup import catchup_once, summarise
from bench.rigs.common import HOST, Auth, Meter, store_ids

if TYPE_CHECKING:
    from bench.runner import Bench

# The scenarios of this rig and the pair each compares (results.<scenario>.<name>).
SCENARIOS = ("client_follow", "client_commit", "client_commit_many")
PAIR = ("client", "generator")
SUCCESS = b'"exit":{"_tag":"Success"'
ROOT = Path(__file__).resolve().parents[2]
# Seconds a measurement may overrun its own bound before it is abandoned.
GRACE = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class FollowResult:
    events: int
    runs: list[FollowRun]
    events_per_s: float
    events_per_s_best: float
    client_cpu_us_per_event: float | None
    server_cpu_us_per_event: float | None
    order_errors: int
    # how long the generator took to push the store's events (pipelined)
    populate_s: float
    client_module: str


class PipelinedPusher:
    """The load generator's single writer: one connection, one store, up to ``window``
    pushes in flight. Acks come back in push order (one store's pushes are admitted in
    order), so each pops the oldest push (send time, events)."""

    __slots__ = (
        "acked",
        "client_id",
        "conn",
        "failure",
        "ids",
        "latencies",
        "payload",
        "sent",
        "seq",
        "store_id",
        "wake",
    )

    def __init__(self, conn: Conn, store_id: str, payload: object, client_id: str) -> None:
        self.conn = conn
        self.store_id = store_id
        self.payload = payload
        self.client_id = client_id
        self.ids = IdSource()
        self.seq = 0
        self.acked = 0  # events
        self.sent: deque[tuple[int, int]] = deque()
        self.latencies: list[int] = []
        self.failure: bytes | None = None
        self.wake: asyncio.Future[None] | None = None
        conn.on_text = self.on_text

    def on_text(self, data: bytes, now: int) -> None:
        if not data.startswith(EXIT_START) or not self.sent:
            return
        sent_at, events = self.sent.popleft()
        self.latencies.append(now - sent_at)
        if SUCCESS in data:
            self.acked += events
        elif self.failure is None:
            self.failure = data
        wake = self.wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def _wait(self) -> None:
        self.wake = asyncio.get_running_loop().create_future()
        await self.wake
        if self.failure is not None:
            raise RuntimeError(f"push refused: {self.failure[:300]!r}")

    async def run(self, batch: int, window: int, deadline: float, max_events: int) -> int:
        """Push batches of ``batch`` events (the last one smaller to stop at
        ``max_events``), ``window`` in flight, until ``deadline``; then wait for the last
        acks. Returns the acked events."""
        acked_before = self.acked
        pushed = 0
        while time.monotonic() < deadline and pushed < max_events:
            if len(self.sent) >= window:
                await self._wait()
                continue
            n = min(batch, max_events - pushed)
            events = frames.make_events(self.seq + 1, n, monotonic_ns(), self.client_id)
            self.sent.append((monotonic_ns(), n))
            self.conn.send(frames.push_frame(self.ids(), self.store_id, self.payload, events))
            self.seq += n
            pushed += n
        while self.sent:
            await self._wait()
        return self.acked - acked_before


async def open_writer(server: Server, auth: Auth, store_id: str, client_id: str) -> PipelinedPusher:
    payload = auth.payload(500_000)
    conn = await connect(HOST, server.port, frames.resource(store_id, payload))
    conn.send(PING)
    return PipelinedPusher(conn, store_id, payload, client_id)


async def fill(server: Server, auth: Auth, store_id: str, events: int, window: int) -> float:
    """Push ``events`` events into a new store (100 per push, ``window`` in flight);
    returns the seconds it took."""
    started = time.monotonic()
    pusher = await open_writer(server, auth, store_id, "bench-history")
    try:
        async with asyncio.timeout(GRACE):
            await pusher.run(100, window, started + GRACE, events)
    finally:
        pusher.conn.abort()
    return time.monotonic() - started


async def generator_commits(
    server: Server,
    auth: Auth,
    *,
    window: int,
    batch: int,
    duration: float,
    max_events: int,
) -> CommitRun:
    """The generator's single writer on a fresh store: ``window`` pushes in flight."""
    (store_id,) = store_ids(f"client-gen-w{window}-b{batch}", 1)
    pusher = await open_writer(server, auth, store_id, "bench-generator")
    try:
        async with asyncio.timeout(GRACE):
            await pusher.run(batch, 1, time.monotonic() + GRACE, batch)  # creates the store
        await server.quiet()
        pusher.latencies.clear()
        meter = Meter(server)
        async with asyncio.timeout(duration + GRACE):
            acked = await pusher.run(batch, window, time.monotonic() + duration, max_events)
        usage = meter.read()
    finally:
        pusher.conn.abort()
    return CommitRun(
        writer="generator",
        concurrency=window,
        batch=batch,
        acked_events=acked,
        calls=len(pusher.latencies),
        acked_events_per_s=acked / usage.elapsed_s,
        ack_latency=percentiles(pusher.latencies),
        server_cpu_us_per_event=usage.server_cpu_s / acked * 1e6 if acked else None,
        client_cpu_us_per_event=usage.generator_cpu_s / acked * 1e6 if acked else None,
        usage=usage,
    )


async def run_client(bench: Bench, server: Server, mode: str, spec: dict[str, Any]) -> bytes:
    """``python -m bench.pyclient MODE SPEC`` against ``server``; its JSON line."""
    env = dict(os.environ)
    env[BYPASS_ENV] = bench.bypass
    env["PYTHONPATH"] = str(ROOT)
    if bench.gateway_root is not None:
        env[ROOT_ENV] = str(bench.gateway_root)
    spec = {"url": f"ws://{HOST}:{server.port}", "gateway_pid": server.pid, **spec}
    # Inherits this process's CPU affinity: the load generator's CPU.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.pyclient",
        mode,
        orjson.dumps(spec).decode(),
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(float(spec.get("duration", 0)) + 2 * GRACE):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"bench.pyclient {mode} did not finish") from None
    if proc.returncode != 0:
        raise RuntimeError(f"bench.pyclient {mode} failed: {err.decode(errors='replace')[-2000:]}")
    return out


async def follow(bench: Bench, server: Server) -> dict[str, object]:
    """``client_follow``: the client's and the generator's catch-up of one store."""
    s = bench.sizes
    (store_id,) = store_ids("client-follow", 1)
    bench.log(f"client_follow: pushing {s.client_events} events into the gateway ...")
    populate_s = await fill(server, bench.auth, store_id, s.client_events, s.client_window)
    generator, client = [], []
    for run in range(s.client_follow_runs):
        await server.quiet()
        generator.append(
            await bench.measure(
                f"client_follow#{run + 1}.generator",
                server,
                catchup_once(server, bench.auth, store_id, s.client_events, 600_000 + run),
            )
        )
        await server.quiet()
        spec: dict[str, Any] = {"store": store_id, "events": s.client_events, "timeout": GRACE}
        if bench.profiler is not None and run == 0:
            spec["profile"] = str(bench.profiler.outdir / "client_follow.client.pstats")
        out = await bench.measure(
            f"client_follow#{run + 1}.client", server, run_client(bench, server, "follow", spec)
        )
        client.append(FollowRun(**orjson.loads(out)))
    return {
        "client": follow_result(s.client_events, client, populate_s),
        "generator": summarise(s.client_events, generator),
    }


def follow_result(events: int, runs: list[FollowRun], populate_s: float) -> FollowResult:
    """The client's runs: median and best rate, CPU figures from the best run."""
    best = max(runs, key=lambda r: r.events_per_s)
    return FollowResult(
        events=events,
        runs=runs,
        events_per_s=statistics.median(r.events_per_s for r in runs),
        events_per_s_best=best.events_per_s,
        client_cpu_us_per_event=best.client_cpu_us_per_event,
        server_cpu_us_per_event=best.server_cpu_us_per_event,
        order_errors=sum(r.order_errors for r in runs),
        populate_s=populate_s,
        client_module=best.client_module,
    )


async def commits(bench: Bench, server: Server, batch: int, tasks: int) -> dict[str, object]:
    """One commit scenario: the client, the pipelined generator and the serial one, in
    alternating rounds; the cleanest round of each kept."""
    s = bench.sizes
    name = "client_commit" if batch == 1 else "client_commit_many"
    samples: dict[str, list[CommitRun]] = {"generator": [], "generator_serial": [], "client": []}
    for index in range(s.client_rounds):
        label = f"{name}#{index + 1}"
        for window, key in ((s.client_window, "generator"), (1, "generator_serial")):
            samples[key].append(
                await bench.measure(
                    f"{label}.{key}",
                    server,
                    generator_commits(
                        server,
                        bench.auth,
                        window=window,
                        batch=batch,
                        duration=s.client_commit_s,
                        max_events=s.client_commit_max,
                    ),
                )
            )
        await server.quiet()
        (store_id,) = store_ids(f"{name}-{index}", 1)
        spec = {
            "store": store_id,
            "tasks": tasks,
            "batch": batch,
            "duration": s.client_commit_s,
            "max_events": s.client_commit_max,
            "timeout": GRACE,
            # commit_many: the client as a store's only writer, several pushes in flight.
            "push_window": 1 if batch == 1 else s.client_push_window,
        }
        out = await bench.measure(
            f"{label}.client", server, run_client(bench, server, "commit", spec)
        )
        samples["client"].append(commit_run_from_json(orjson.loads(out)))
        await server.quiet()
    return {key: bench.pick(values) for key, values in samples.items()}


async def client_rig(bench: Bench) -> dict[str, object]:
    """Every scenario of this rig on one fresh gateway; results by scenario."""
    s = bench.sizes
    server = await bench.gateway()
    out: dict[str, object] = {}
    try:
        if bench.wants("client") or bench.wants("client_follow"):
            out["client_follow"] = await follow(bench, server)
        if bench.wants("client") or bench.wants("client_commit"):
            out["client_commit"] = await commits(bench, server, 1, s.client_tasks)
            out["client_commit_many"] = await commits(
                bench, server, s.client_batch, s.client_batch_tasks
            )
    finally:
        await server.stop()
    return out


# -- the report --------------------------------------------------------------------------------


def _ratio(over: Any, under: Any) -> float | None:
    if isinstance(over, int | float) and isinstance(under, int | float) and under:
        return over / under
    return None


def ratios(res: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """What ``report.build`` adds to ``ratios``: client / generator for each scenario
    (``vs_serial.*``: against the generator with one push in flight)."""
    out: dict[str, dict[str, float | None]] = {}
    for scenario in SCENARIOS:
        by = res.get(scenario)
        if not isinstance(by, dict):
            continue
        keys = ("events_per_s", "server_cpu_us_per_event")
        if scenario != "client_follow":
            keys = ("acked_events_per_s", "server_cpu_us_per_event")
        found = {key: _ratio(dig(by, ("client", key)), dig(by, ("generator", key))) for key in keys}
        if "generator_serial" in by:
            found["vs_serial.acked_events_per_s"] = _ratio(
                dig(by, ("client", "acked_events_per_s")),
                dig(by, ("generator_serial", "acked_events_per_s")),
            )
        out[scenario] = found
    return out


def table_lines(res: dict[str, Any]) -> list[str]:
    """This rig's lines of the printed table, from results.json's ``results``."""
    lines = []
    fol = res.get("client_follow")
    if isinstance(fol, dict):
        cl, gen = fol.get("client", {}), fol.get("generator", {})
        best = max(gen.get("runs", []), key=lambda r: r["events_per_s"], default=None)
        gen_cpu = (
            best["generator_cpu_util"] * best["seconds"] / best["events_received"] * 1e6
            if best and best["events_received"]
            else None
        )
        lines.append(
            f"  follow, catch-up of {cl.get('events')} events (events(live=False)): "
            f"{fmt(cl.get('events_per_s'))} ev/s (runs "
            + ", ".join(fmt(r["events_per_s"]) for r in cl.get("runs", []))
            + f"); generator {fmt(gen.get('events_per_s'))} ev/s; client/generator "
            f"{fmt(_ratio(cl.get('events_per_s'), gen.get('events_per_s')), 2)}"
        )
        # What one CPU would follow if the client had it to itself: steadier than the rate
        # on a loaded machine.
        per_cpu = _ratio(1e6, cl.get("client_cpu_us_per_event"))
        lines.append(
            f"    CPU per event: client {fmt(cl.get('client_cpu_us_per_event'), 2)} us "
            f"({fmt(per_cpu)} events per client CPU-second), generator {fmt(gen_cpu, 2)} us; "
            f"server {fmt(cl.get('server_cpu_us_per_event'), 2)} us (client pull), "
            f"{fmt(gen.get('server_cpu_us_per_event'), 2)} us (generator's)"
        )
    for scenario in ("client_commit", "client_commit_many"):
        by = res.get(scenario)
        if not isinstance(by, dict):
            continue
        cl, gen, ser = (by.get(k, {}) for k in ("client", "generator", "generator_serial"))
        call = "commit()" if cl.get("batch") == 1 else f"commit_many({cl.get('batch')} events)"
        lines.append(
            f"  {call} from {cl.get('concurrency')} tasks, push_window "
            f"{cl.get('push_window', 1)}: {fmt(cl.get('acked_events_per_s'))} "
            f"acked ev/s, p50 {fmt(dig(cl, ('ack_latency', 'p50_ms')), 2)} ms; generator "
            f"{fmt(gen.get('acked_events_per_s'))} ({gen.get('concurrency')} in flight), "
            f"{fmt(ser.get('acked_events_per_s'))} (1 in flight); client/generator "
            f"{fmt(_ratio(cl.get('acked_events_per_s'), gen.get('acked_events_per_s')), 2)}, "
            f"/serial {fmt(_ratio(cl.get('acked_events_per_s'), ser.get('acked_events_per_s')), 2)}"
        )
        lines.append(
            f"    CPU per event: client {fmt(cl.get('client_cpu_us_per_event'), 1)} us, "
            f"generator {fmt(gen.get('client_cpu_us_per_event'), 1)} us; server "
            f"{fmt(cl.get('server_cpu_us_per_event'), 1)} us (client's pushes), "
            f"{fmt(gen.get('server_cpu_us_per_event'), 1)} us (generator's)"
        )
    if not lines:
        return []
    title = "Python client (gateway.client, own process) vs the load generator, one gateway:"
    return ["", title, *lines]
