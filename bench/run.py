"""``python -m bench``: measure gateway and the baseline in one run, print a table, write JSON.

Process layout (2-CPU machine): this process is the load generator and is pinned to the
second CPU; the gateway and the baseline server run as separate processes pinned to the first
CPU (``bench.procs``). Measurements alternate baseline, then gateway, scenario by scenario, so
both see the same machine state. ``--smoke`` runs everything at toy sizes in a few seconds
(``tests/test_bench_smoke.py``); ``--profile DIR`` records py-spy profiles of the gateway.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import orjson
import uvloop

from bench import scenarios
from bench.procs import (
    Server,
    baseline_server,
    floor_server,
    gateway_server,
    plan_cpus,
    raise_nofile,
)
from bench.profiling import Profiler

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results.json"


@dataclass(frozen=True)
class Sizes:
    # Alternating rounds (baseline, gateway, baseline, ...) of the handshake and paced
    # fan-out measurements; medians are reported.
    rounds: int = 3
    # 1. handshakes
    hs_duration: float = 2.0
    hs_max: int = 6000
    hs_concurrency: int = 32
    hs_stores: int = 10
    # 2. fan-out
    fan_stores: int = 10
    fan_subscribers: int = 100
    fan_batch: int = 1
    fan_rate: float = 10.0  # pushes/s per store in the paced phase (10,000 events/s)
    # The paced phase runs in short slices alternating between the servers; each server
    # keeps the share ``fan_keep`` of its slices with the least foreign CPU load.
    fan_slices: int = 8
    fan_slice_s: float = 1.5
    fan_keep: float = 0.5
    fan_saturated_s: float = 4.0
    fan_saturated_rounds: int = 2
    fan_window: int = 16
    # 3. durable pushes
    dur_pushers: int = 32
    dur_batch: int = 10
    dur_s: float = 5.0
    dur_single_batch: int = 1  # a second run with single-event pushes (0 skips it)
    # 4. idle
    idle_connections: int = 10_000
    idle_stores: int = 10
    idle_warmup: int = 200
    # 5. catch-up
    catchup_events: int = 100_000
    catchup_runs: int = 3
    # compression study (baseline with and without permessage-deflate)
    comp_connections: int = 2000
    comp_stores: int = 2
    comp_subscribers: int = 100
    comp_rate: float = 20.0  # pushes/s per store, 10 events each
    comp_paced_s: float = 3.0
    # 6. two-node fan-out (two gateways on one fresh PostgreSQL schema; skipped without one)
    mn_stores: int = 4
    mn_subscribers: int = 50  # per store, split evenly across the two nodes
    # Single-event pushes/s per store, all through node 1: 200 pushes/s, 10,000 delivered
    # events/s (the single-node fan-out's load). One push is in flight per pusher and acks
    # take ~10 ms (a PostgreSQL commit), so far above ~70/s per store the pushers fall behind.
    mn_rate: float = 50.0
    mn_s: float = 4.0
    concurrency: int = 64
    settle_s: float = 1.0  # wait before reading RSS


SMOKE = Sizes(
    hs_duration=0.3,
    hs_max=40,
    hs_concurrency=4,
    hs_stores=2,
    fan_stores=2,
    fan_subscribers=5,
    fan_batch=2,
    fan_rate=20.0,
    fan_slices=2,
    fan_slice_s=0.3,
    fan_saturated_s=0.3,
    dur_pushers=2,
    dur_batch=5,
    dur_s=0.3,
    dur_single_batch=0,
    idle_connections=50,
    idle_stores=2,
    idle_warmup=5,
    catchup_events=1000,
    catchup_runs=1,
    comp_connections=20,
    comp_stores=1,
    comp_subscribers=5,
    comp_rate=10.0,
    comp_paced_s=0.3,
    mn_stores=2,
    mn_subscribers=4,
    mn_rate=20.0,
    mn_s=0.3,
    rounds=1,
    fan_saturated_rounds=1,
    concurrency=8,
    settle_s=0.2,
)

# name, scenario, path to the value, comparison, limit, what it means
TARGETS: list[tuple[str, str, tuple[str, ...], str, float, str]] = [
    (
        "fanout_cpu",
        "fanout",
        ("paced", "server_cpu_us_per_event"),
        "ratio<=",
        1.4,
        "server CPU per delivered event <= 1.4x baseline (1,000 live subscribers, same load)",
    ),
    (
        "fanout_p99",
        "fanout",
        ("paced", "latency", "p99_ms"),
        "ratio<=",
        1.5,
        "push->live delivery p99 <= 1.5x baseline at the same load",
    ),
    (
        "handshakes",
        "handshake",
        ("handshakes_per_server_cpu_s",),
        "ratio>=",
        0.8,
        "authenticated handshakes per server CPU-second >= 0.8x baseline",
    ),
    (
        "idle_memory",
        "idle",
        ("rss_per_connection_kib",),
        "ratio<=",
        1.1,
        "RSS per idle connection (live pull) <= 1.1x baseline",
    ),
    (
        "durable_push",
        "durable_push",
        ("acked_events_per_s",),
        ">=",
        5000.0,
        "durable acked pushes >= 5,000 events/s (concurrent pushers, batches of dur_batch)",
    ),
    (
        "durable_push_b1",
        "durable_push_single",
        ("acked_events_per_s",),
        ">=",
        5000.0,
        "durable acked pushes >= 5,000 events/s with single-event pushes",
    ),
    (
        "catchup",
        "catchup",
        ("events_per_s",),
        ">=",
        50000.0,
        "catch-up of the history >= 50,000 events/s",
    ),
]


def interference(sample: dict[str, Any], server_cpus: set[int], gen_cpus: set[int]) -> float:
    """CPU time on the benchmark's CPUs that neither the server nor the generator used
    (other tenants of a shared machine), plus steal, as a share of one CPU."""
    cpus = sample.get("machine_cpus") or {}
    foreign = 0.0
    for cpu in server_cpus | gen_cpus:
        busy = cpus.get(f"cpu{cpu}_busy", 0.0)
        own = 0.0
        if cpu in server_cpus:
            own += sample.get("server_cpu_util", 0.0)
        if cpu in gen_cpus:
            own += sample.get("generator_cpu_util", 0.0)
        foreign += max(0.0, busy - own) + cpus.get(f"cpu{cpu}_steal", 0.0)
    return foreign


def cleanest(
    samples: list[dict[str, Any]], server_cpus: set[int], gen_cpus: set[int]
) -> dict[str, Any]:
    """The round least disturbed by other processes; every round stays in ``rounds``."""
    if len(samples) == 1:
        return {**samples[0], "interference": interference(samples[0], server_cpus, gen_cpus)}
    scores = [interference(s, server_cpus, gen_cpus) for s in samples]
    best = min(range(len(samples)), key=scores.__getitem__)
    return {
        **samples[best],
        "interference": scores[best],
        "round_chosen": best + 1,
        "rounds": [
            {**sample, "interference": score} for sample, score in zip(samples, scores, strict=True)
        ],
    }


def _dig(data: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _fs_type(path: Path) -> str:
    best, kind = "", "unknown"
    resolved = str(path.resolve())
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                mount, fstype = parts[1], parts[2]
                if resolved.startswith(mount) and len(mount) > len(best):
                    best, kind = mount, fstype
    except OSError:
        pass
    return f"{kind} ({best})"


def _source_state(root: Path) -> dict[str, Any]:
    """Which gateway code ran: commit, and files changed since (the tree may be dirty)."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return ""
        return done.stdout.rstrip("\n")

    changed = [line[3:] for line in git("status", "--porcelain", "gateway").splitlines()]
    commit = git("rev-parse", "--short", "HEAD").strip()
    return {"root": str(root), "commit": commit, "changed": changed}


def _machine(how: str, server_cpus: set[int], gen_cpus: set[int], workdir: Path) -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "cpus_online": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "websockets": version("websockets"),
        "uvloop": version("uvloop"),
        "orjson": version("orjson"),
        "pinning": how,
        "server_cpus": sorted(server_cpus),
        "generator_cpus": sorted(gen_cpus),
        "data_dir_fs": _fs_type(workdir),
    }


class Bench:
    def __init__(self, args: argparse.Namespace, sizes: Sizes) -> None:
        self.args = args
        self.sizes = sizes
        self.server_cpus, self.gen_cpus, self.how = plan_cpus()
        self.secret = secrets.token_urlsafe(48)
        self.bypass = secrets.token_urlsafe(48)
        self.auth = scenarios.Auth(self.secret, pool=32 if args.smoke else 256)
        base = Path(args.workdir) if args.workdir else ROOT / "bench" / ".work"
        base.mkdir(parents=True, exist_ok=True)
        self.workdir = Path(tempfile.mkdtemp(prefix="run-", dir=base))
        self.profiler = Profiler(Path(args.profile)) if args.profile else None
        self.gateway_root = Path(args.gateway_root).resolve() if args.gateway_root else None
        self.source = _source_state(self.gateway_root or ROOT)
        self.results: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        self._servers = 0

    def log(self, text: str) -> None:
        if not self.args.quiet:
            print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    async def gateway(self, env: dict[str, str] | None = None) -> Server:
        self._servers += 1
        n = self._servers
        server = gateway_server(
            self.workdir / f"gateway-data-{n}",
            self.workdir / f"gateway-{n}.log",
            self.server_cpus,
            self.secret,
            self.bypass,
        )
        server.env.update(env or {})
        root = self.gateway_root
        if root is not None:
            # Another source tree (e.g. a work-in-progress fix): `python -m gateway` from
            # its directory imports its package, ahead of the installed one.
            server.cwd = root
            server.env["PYTHONPATH"] = str(root)
        else:
            server.env["PYTHONPATH"] = str(ROOT)
        server.quiet_interval = 0.05 if self.args.smoke else 0.2
        await server.start()
        return server

    async def baseline(self, *, history: int = 0, compression: bool = False) -> Server:
        self._servers += 1
        n = self._servers
        server = baseline_server(
            self.workdir / f"baseline-{n}.log",
            self.server_cpus,
            history=history,
            compression=compression,
        )
        server.env["PYTHONPATH"] = str(ROOT)
        server.quiet_interval = 0.05 if self.args.smoke else 0.2
        await server.start()
        return server

    async def floor(self) -> Server:
        self._servers += 1
        server = floor_server(self.workdir / f"floor-{self._servers}.log", self.server_cpus)
        server.env["PYTHONPATH"] = str(ROOT)
        server.quiet_interval = 0.05 if self.args.smoke else 0.2
        await server.start()
        return server

    async def measure(self, name: str, server: Server, coro: Any) -> dict[str, Any]:
        self.log(f"{name}: {server.name} ...")
        started = time.monotonic()
        profiling = self.profiler is not None and (
            server.name == "gateway" or self.args.profile_baseline
        )
        if profiling:
            assert self.profiler is not None
            suffix = "" if server.name == "gateway" else f".{server.name}"
            self.profiler.start(f"{name}{suffix}", server.pid)
        try:
            result: dict[str, Any] = await coro
        finally:
            if profiling:
                assert self.profiler is not None
                summary = self.profiler.stop()
                if summary is not None:
                    self.log(f"  profile: {summary}")
        self.timings[f"{name}/{server.name}"] = time.monotonic() - started
        gc.collect()
        return result

    def pick(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return cleanest(samples, self.server_cpus, self.gen_cpus)

    def keep_cleanest(
        self, slices: list[dict[str, Any]], raws: list[tuple[list[int], list[int]]]
    ) -> dict[str, Any]:
        scores = [interference(x, self.server_cpus, self.gen_cpus) for x in slices]
        for x, score in zip(slices, scores, strict=True):
            x["interference"] = score
        count = max(1, round(len(slices) * self.sizes.fan_keep))
        keep = sorted(sorted(range(len(slices)), key=scores.__getitem__)[:count])
        merged = scenarios.merge_slices(slices, raws, keep)
        merged["interference"] = sum(scores[i] for i in keep) / len(keep)
        return merged

    def wants(self, name: str) -> bool:
        return not self.args.only or name in self.args.only.split(",")

    async def both(self, name: str, servers: tuple[Server, ...], make: Any) -> None:
        """Run ``make(server)`` on each server (baseline first) into results[name]."""
        self.results[name] = {}
        for server in servers:
            self.results[name][server.name] = await self.measure(name, server, make(server))

    async def rounds(self, name: str, servers: tuple[Server, ...], count: int, make: Any) -> None:
        """``count`` alternating rounds (baseline, gateway, baseline, ...); medians kept."""
        samples: dict[str, list[dict[str, Any]]] = {server.name: [] for server in servers}
        for index in range(count):
            for server in servers:
                label = f"{name}#{index + 1}" if count > 1 else name
                samples[server.name].append(await self.measure(label, server, make(server)))
        self.results[name] = {key: self.pick(values) for key, values in samples.items()}

    async def fanout(self, servers: tuple[Server, ...]) -> None:
        s = self.sizes
        rigs = {}
        for server in servers:
            self.log(f"fanout: connecting {s.fan_stores}x{s.fan_subscribers} to {server.name} ...")
            rig = scenarios.FanoutRig(
                server,
                self.auth,
                stores=s.fan_stores,
                subscribers=s.fan_subscribers,
                batch=s.fan_batch,
            )
            await rig.open(concurrency=s.concurrency)
            rigs[server.name] = rig
        try:
            paced: dict[str, list[dict[str, Any]]] = {name: [] for name in rigs}
            raws: dict[str, list[tuple[list[int], list[int]]]] = {name: [] for name in rigs}
            saturated: dict[str, list[dict[str, Any]]] = {name: [] for name in rigs}
            # Short alternating slices; each server keeps its least disturbed ones.
            for index in range(s.fan_slices):
                for server in servers:
                    rig = rigs[server.name]
                    paced[server.name].append(
                        await self.measure(
                            f"fanout_paced#{index + 1}",
                            server,
                            rig.paced(s.fan_rate, s.fan_slice_s),
                        )
                    )
                    raws[server.name].append(rig.last_raw)
            for index in range(s.fan_saturated_rounds):
                for server in servers:
                    saturated[server.name].append(
                        await self.measure(
                            f"fanout_saturated#{index + 1}",
                            server,
                            rigs[server.name].saturated(s.fan_saturated_s, s.fan_window),
                        )
                    )
        finally:
            lost = {name: rig.close() for name, rig in rigs.items()}
        self.results["fanout"] = {
            name: {
                **rig.describe(),
                "paced": self.keep_cleanest(paced[name], raws[name]),
                "saturated": self.pick(saturated[name]),
                "connections_lost": lost[name],
            }
            for name, rig in rigs.items()
        }
        if "gateway" in paced and "baseline" in paced:
            # A second view of the p99 ratio: slice by slice (adjacent in time, so under
            # similar background load), the median of gateway p99 / baseline p99.
            pairs = [
                g["latency"]["p99_ms"] / b["latency"]["p99_ms"]
                for g, b in zip(paced["gateway"], paced["baseline"], strict=True)
                if b["latency"]["p99_ms"]
            ]
            if pairs:
                self.results["fanout"]["gateway"]["paced"]["p99_ratio_paired_median"] = (
                    statistics.median(pairs)
                )
        for server in servers:
            await server.quiet()

    async def run(self) -> dict[str, Any]:
        os.sched_setaffinity(0, self.gen_cpus)
        nofile = raise_nofile()
        s = self.sizes
        auth = self.auth
        started = time.monotonic()
        self.log(f"{self.how}; open-file limit {nofile}; work dir {self.workdir}")
        res = self.results
        shared = ("handshake", "fanout", "durable_push", "catchup")
        if any(self.wants(name) for name in shared):
            gw = await self.gateway()
            base = await self.baseline(history=s.catchup_events if self.wants("catchup") else 0)
            floor = await self.floor() if self.args.floor else None
            pair = (base, gw)
            # The floor (a Sans-I/O server) joins the comparisons where it can do the job.
            trio = (base, gw, floor) if floor is not None else pair
            try:
                if self.wants("handshake"):
                    await self.rounds(
                        "handshake",
                        trio,
                        s.rounds,
                        lambda server: scenarios.handshake(
                            server,
                            auth,
                            duration=s.hs_duration,
                            max_connections=s.hs_max,
                            concurrency=s.hs_concurrency,
                            stores=s.hs_stores,
                        ),
                    )
                if self.wants("fanout"):
                    await self.fanout(trio)
                if self.wants("durable_push"):
                    await self.both(
                        "durable_push",
                        pair,
                        lambda server: scenarios.durable_push(
                            server, auth, pushers=s.dur_pushers, batch=s.dur_batch, duration=s.dur_s
                        ),
                    )
                    if s.dur_single_batch:
                        await self.both(
                            "durable_push_single",
                            pair,
                            lambda server: scenarios.durable_push(
                                server,
                                auth,
                                pushers=s.dur_pushers,
                                batch=s.dur_single_batch,
                                duration=s.dur_s,
                            ),
                        )
                if self.wants("catchup"):
                    store = f"catchup-{int(time.time())}"
                    self.log(f"catchup: pushing {s.catchup_events} events into the gateway ...")
                    populate_s = await scenarios.populate(gw, auth, store, s.catchup_events)
                    await self.both(
                        "catchup",
                        pair,
                        lambda server: scenarios.catchup(
                            server, auth, store, events=s.catchup_events, runs=s.catchup_runs
                        ),
                    )
                    res["catchup"]["gateway"]["populate_s"] = populate_s
            finally:
                await gw.stop()
                await base.stop()
                if floor is not None:
                    await floor.stop()

        if self.wants("fanout2"):
            res["fanout2"] = await self.fanout2()

        if self.wants("idle"):
            # Fresh servers: earlier scenarios leave freed memory behind that new
            # connections would reuse, which would flatter the per-connection figure.
            res["idle"] = {}
            makers = [self.baseline, self.gateway] + ([self.floor] if self.args.floor else [])
            for make in makers:
                server = await make()
                try:
                    res["idle"][server.name] = await self.measure(
                        "idle",
                        server,
                        scenarios.idle(
                            server,
                            auth,
                            connections=s.idle_connections,
                            stores=s.idle_stores,
                            concurrency=s.concurrency,
                            warmup=s.idle_warmup,
                            settle=s.settle_s,
                        ),
                    )
                finally:
                    await server.stop()

        if self.wants("compression") and not self.args.no_compression:
            res["compression"] = await self.compression_study()
        self.timings["total"] = time.monotonic() - started
        return self.report()

    async def fanout2(self) -> dict[str, Any]:
        """Two gateway nodes on one fresh PostgreSQL schema (both on the server CPU):
        subscribers split across them, pushes through node 1. Informational, no target;
        skipped with a note when PostgreSQL is not reachable."""
        import asyncpg

        s = self.sizes
        dsn = os.environ.get(
            "GATEWAY_BENCH_POSTGRES_DSN",
            os.environ.get(
                "GATEWAY_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
            ),
        )
        try:
            conn = await asyncpg.connect(dsn, timeout=5)
        except Exception as exc:  # no server: skip, the rest of the run stands
            note = f"skipped: PostgreSQL at {dsn} is not reachable ({type(exc).__name__}: {exc})"
            self.log(f"fanout2: {note}")
            return {"skipped": note}
        await conn.close()
        schema = f"bench_{secrets.token_hex(6)}"
        env = {
            "GATEWAY_STORE_BACKEND": "postgres",
            "GATEWAY_STORE_DSN": dsn,
            "GATEWAY_STORE_POSTGRES_SCHEMA": schema,
        }
        nodes: list[Server] = []
        rig: scenarios.CrossNodeRig | None = None
        started = time.monotonic()
        try:
            for index in range(2):
                node = await self.gateway(env)
                node.name = f"gateway-node{index + 1}"
                nodes.append(node)
            self.log(
                f"fanout2: connecting {s.mn_stores}x{s.mn_subscribers} across 2 nodes "
                f"(schema {schema}) ..."
            )
            rig = scenarios.CrossNodeRig(
                nodes, self.auth, stores=s.mn_stores, subscribers=s.mn_subscribers
            )
            await rig.open(concurrency=s.concurrency)
            self.log(f"fanout2: paced {s.mn_rate * s.mn_stores:.0f} pushes/s for {s.mn_s} s ...")
            paced = await rig.paced(s.mn_rate, s.mn_s)
            lost = rig.close()
            rig = None
            return {
                "gateway": {
                    "nodes": len(nodes),
                    "pushing_node": 1,
                    "postgres_schema": schema,
                    "note": "informational (no target): both nodes pinned to the server CPU; "
                    "PostgreSQL runs unpinned, its CPU is not in server_cpu_us_per_event",
                    "stores": s.mn_stores,
                    "subscribers_per_store": s.mn_subscribers,
                    "live_subscribers": s.mn_stores * s.mn_subscribers,
                    "batch": 1,
                    "paced": paced,
                    "connections_lost": lost,
                }
            }
        except Exception as exc:  # a failure here must not cost the other measurements
            self.log(f"fanout2: FAILED: {type(exc).__name__}: {exc}")
            return {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            if rig is not None:
                rig.close()
            for node in nodes:
                await node.stop()
            self.timings["fanout2"] = time.monotonic() - started
            try:
                conn = await asyncpg.connect(dsn, timeout=5)
                try:
                    await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                finally:
                    await conn.close()
            except Exception as exc:
                self.log(f"fanout2: could not drop schema {schema}: {exc}")

    async def compression_study(self) -> dict[str, Any]:
        """The bare stack with and without permessage-deflate: memory, CPU, bytes."""
        s = self.sizes
        study: dict[str, Any] = {}
        for deflate in (False, True):
            ext = scenarios.deflate_extensions() if deflate else None
            server = await self.baseline(compression=deflate)
            try:
                mem = await self.measure(
                    "compression_idle",
                    server,
                    scenarios.idle(
                        server,
                        self.auth,
                        connections=s.comp_connections,
                        stores=s.idle_stores,
                        concurrency=s.concurrency,
                        warmup=s.idle_warmup // 4 or 1,
                        settle=s.settle_s,
                        extensions=ext,
                    ),
                )
                rig = scenarios.FanoutRig(
                    server,
                    self.auth,
                    stores=s.comp_stores,
                    subscribers=s.comp_subscribers,
                    batch=10,
                )
                await rig.open(concurrency=s.concurrency, extensions=ext)
                try:
                    sat = await self.measure(
                        "compression_fanout",
                        server,
                        rig.paced(s.comp_rate, s.comp_paced_s),
                    )
                finally:
                    rig.close()
            finally:
                await server.stop()
            study["deflate" if deflate else "none"] = {
                "connections": s.comp_connections,
                "rss_per_connection_kib": mem["rss_per_connection_kib"],
                "fanout_batch": 10,
                "server_cpu_us_per_event": sat["server_cpu_us_per_event"],
                "generator_cpu_us_per_event": sat["generator_cpu_us_per_event"],
                "wire_bytes_per_event": sat["wire_bytes_per_event"],
                "latency": sat["latency"],
                "payload_bytes_per_frame": sat["bytes_per_frame"],
                "delivered_events_per_s": sat["delivered_events_per_s"],
            }
        return study

    # -- reporting ------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        res = self.results
        ratios: dict[str, dict[str, float | None]] = {}
        for scenario, by_server in res.items():
            if scenario == "compression" or not isinstance(by_server, dict):
                continue
            if "gateway" in by_server and "baseline" in by_server:
                ratios[scenario] = _ratios(by_server["gateway"], by_server["baseline"])
        targets = []
        for name, scenario, path, op, limit, meaning in TARGETS:
            gw_value = _dig(res.get(scenario, {}).get("gateway"), path)
            base_value = _dig(res.get(scenario, {}).get("baseline"), path)
            if op.startswith("ratio"):
                value = gw_value / base_value if gw_value is not None and base_value else None
                met = (
                    None
                    if value is None
                    else (value <= limit if op == "ratio<=" else value >= limit)
                )
            else:
                value = gw_value
                met = None if value is None else value >= limit
            if self.args.smoke:
                met = None  # toy sizes: the numbers say nothing about the targets
            targets.append(
                {
                    "name": name,
                    "meaning": meaning,
                    "metric": f"{scenario}.{'.'.join(path)}",
                    "gateway": gw_value,
                    "baseline": base_value,
                    "value": value,
                    "kind": "gateway/baseline" if op.startswith("ratio") else "absolute",
                    "limit": limit,
                    "comparison": "<=" if op.endswith("<=") else ">=",
                    "met": met,
                }
            )
        return {
            "mode": "smoke" if self.args.smoke else "full",
            "machine": _machine(self.how, self.server_cpus, self.gen_cpus, self.workdir),
            "gateway_source": self.source,
            "sizes": asdict(self.sizes),
            "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "timings_s": self.timings,
            "results": res,
            "ratios": ratios,
            "targets": targets,
        }

    def cleanup(self) -> None:
        if not self.args.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


_RATIO_KEYS = (
    "handshakes_per_s",
    "server_cpu_us_per_handshake",
    "rss_per_connection_kib",
    "acked_events_per_s",
    "server_cpu_us_per_event",
    "events_per_s",
    "delivered_events_per_s",
    "p50_ms",
    "p99_ms",
    "max_ms",
)


def _ratios(gw: Any, base: Any, prefix: str = "") -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    if not isinstance(gw, dict) or not isinstance(base, dict):
        return out
    for key, value in gw.items():
        other = base.get(key)
        if isinstance(value, dict):
            out.update(_ratios(value, other, f"{prefix}{key}."))
        elif (
            key in _RATIO_KEYS and isinstance(value, int | float) and isinstance(other, int | float)
        ):
            out[f"{prefix}{key}"] = value / other if other else None
    return out


# -- the table ---------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def table(report: dict[str, Any]) -> str:
    res = report["results"]
    rows: list[tuple[str, str, Any, Any, str]] = []

    def row(label: str, scenario: str, path: tuple[str, ...], unit: str, digits: int = 1) -> None:
        if scenario not in res:
            return
        by = res.get(scenario, {})
        gw, base = _dig(by.get("gateway"), path), _dig(by.get("baseline"), path)
        rows.append((label, unit, gw, base, _fmt(gw / base, 2) if gw and base else "-"))

    row("handshakes/s (JWT + first chunk), wall clock", "handshake", ("handshakes_per_s",), "1/s")
    row(
        "  handshakes per server CPU-second",
        "handshake",
        ("handshakes_per_server_cpu_s",),
        "1/s",
    )
    row("  server CPU per handshake", "handshake", ("server_cpu_us_per_handshake",), "us")
    row("  generator CPU per handshake", "handshake", ("generator_cpu_us_per_handshake",), "us")
    row("  connect latency p50", "handshake", ("connect_latency", "p50_ms"), "ms", 2)
    row("  connect latency p99", "handshake", ("connect_latency", "p99_ms"), "ms", 2)
    fan = res.get("fanout", {}).get("gateway", {})
    paced = fan.get("paced", {})
    label = (
        f"fan-out {fan.get('stores')}x{fan.get('subscribers_per_store')}, B={fan.get('batch')}, "
        f"paced {_fmt(paced.get('offered_events_per_s'))} ev/s"
    )
    if fan:
        rows.append((label, "", None, None, ""))
    row("  server CPU per delivered event", "fanout", ("paced", "server_cpu_us_per_event"), "us")
    row("  generator CPU per event", "fanout", ("paced", "generator_cpu_us_per_event"), "us")
    row("  delivered events/s", "fanout", ("paced", "delivered_events_per_s"), "1/s")
    row("  push->delivery latency p50", "fanout", ("paced", "latency", "p50_ms"), "ms", 2)
    row("  push->delivery latency p99", "fanout", ("paced", "latency", "p99_ms"), "ms", 2)
    row("  push->delivery latency max", "fanout", ("paced", "latency", "max_ms"), "ms", 2)
    paired = _dig(res.get("fanout", {}).get("gateway"), ("paced", "p99_ratio_paired_median"))
    if paired is not None:
        rows.append(
            ("  p99 ratio, median over time-adjacent slice pairs", "", None, None, _fmt(paired, 2))
        )
    row("  bytes per delivered frame", "fanout", ("paced", "bytes_per_frame"), "B", 0)
    sat = fan.get("saturated", {})
    if sat:
        rows.append((f"fan-out saturated (window {sat.get('window')})", "", None, None, ""))
    row("  delivered events/s", "fanout", ("saturated", "delivered_events_per_s"), "1/s")
    row(
        "  server CPU per delivered event", "fanout", ("saturated", "server_cpu_us_per_event"), "us"
    )
    row("  generator CPU per event", "fanout", ("saturated", "generator_cpu_us_per_event"), "us")
    row("  server CPU utilisation", "fanout", ("saturated", "server_cpu_util"), "cpu", 2)
    row("  generator CPU utilisation", "fanout", ("saturated", "generator_cpu_util"), "cpu", 2)
    row("  latency p99", "fanout", ("saturated", "latency", "p99_ms"), "ms", 2)
    dur = res.get("durable_push", {}).get("gateway", {})
    row(
        f"durable push {dur.get('pushers')} stores, B={dur.get('batch')}: acked events/s",
        "durable_push",
        ("acked_events_per_s",),
        "1/s",
    )
    row("  ack latency p99", "durable_push", ("ack_latency", "p99_ms"), "ms", 2)
    row("  server CPU per event", "durable_push", ("server_cpu_us_per_event",), "us")
    if "durable_push_single" in res:
        row(
            "durable push, B=1: acked events/s",
            "durable_push_single",
            ("acked_events_per_s",),
            "1/s",
        )
        row("  server CPU per event", "durable_push_single", ("server_cpu_us_per_event",), "us")
    idle = res.get("idle", {}).get("gateway", {})
    row(
        f"idle {idle.get('connections')} live pulls: RSS per connection",
        "idle",
        ("rss_per_connection_kib",),
        "KiB",
        2,
    )
    row("  RSS after", "idle", ("rss_after_mib",), "MiB")
    cu = res.get("catchup", {}).get("gateway", {})
    row(f"catch-up of {cu.get('events')} events", "catchup", ("events_per_s",), "ev/s")
    row("  server CPU per event", "catchup", ("server_cpu_us_per_event",), "us", 2)
    f2 = res.get("fanout2", {})
    if "gateway" in f2:
        g = f2["gateway"]
        p = g["paced"]
        rows.append(
            (
                f"2-node fan-out {g['stores']}x{g['subscribers_per_store']} (PostgreSQL), "
                f"B=1, {_fmt(p['offered_pushes_per_s'])} pushes/s via node 1",
                "",
                None,
                None,
                "",
            )
        )
        row("  achieved pushes/s (node 1)", "fanout2", ("paced", "achieved_pushes_per_s"), "1/s")
        row("  delivered events/s", "fanout2", ("paced", "delivered_events_per_s"), "1/s")
        for key, where in (
            ("latency_same_node", "same node"),
            ("latency_cross_node", "cross-node"),
        ):
            for q in ("p50", "p99", "max"):
                row(f"  push->delivery {q}, {where}", "fanout2", ("paced", key, f"{q}_ms"), "ms", 2)
        row("  push ack latency p99", "fanout2", ("paced", "push_ack_latency", "p99_ms"), "ms", 2)
        row("  order errors (must be 0)", "fanout2", ("paced", "order_errors"), "n")
        row(
            f"  events delivered (expected {p['events_expected']}, all: {p['all_delivered']})",
            "fanout2",
            ("paced", "events_delivered"),
            "n",
        )
        row(
            "  server CPU per delivered event (both nodes)",
            "fanout2",
            ("paced", "server_cpu_us_per_event"),
            "us",
        )
        row(
            "  PostgreSQL CPU per push (unpinned)",
            "fanout2",
            ("paced", "postgres_cpu_us_per_push"),
            "us",
        )

    header = ("measurement", "unit", "gateway", "baseline", "gw/base")
    cells = [header] + [
        (r[0], r[1], _fmt(r[2]) if r[1] else "", _fmt(r[3]) if r[1] else "", r[4]) for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(5)]
    lines = []
    for i, c in enumerate(cells):
        lines.append(
            "  ".join(c[j].ljust(widths[j]) if j < 2 else c[j].rjust(widths[j]) for j in range(5))
        )
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    if "skipped" in f2 or "error" in f2:
        lines.append("")
        lines.append(f"two-node fan-out: {f2.get('skipped') or 'FAILED: ' + f2.get('error', '')}")
    elif f2:
        lines.append("")
        lines.append(
            "two-node fan-out: informational, no target; subscribers split evenly over both "
            "nodes, both nodes on the server CPU, PostgreSQL unpinned (its CPU not counted above)"
        )
    lines.append("")
    lines.append("targets:")
    for t in report["targets"]:
        verdict = {True: "MET", False: "MISSED", None: "n/a"}[t["met"]]
        value = _fmt(t["value"], 2)
        kind = "x baseline" if t["kind"] == "gateway/baseline" else ""
        lines.append(
            f"  [{verdict:>6}] {t['name']:<13} {value}{kind} (need {t['comparison']} "
            f"{_fmt(t['limit'], 2)})  {t['meaning']}"
        )
    floor_lines = []
    for label, scenario, path, unit in (
        ("server CPU per handshake", "handshake", ("server_cpu_us_per_handshake",), "us"),
        ("fan-out server CPU per event", "fanout", ("paced", "server_cpu_us_per_event"), "us"),
        ("fan-out p99", "fanout", ("paced", "latency", "p99_ms"), "ms"),
        ("RSS per idle connection", "idle", ("rss_per_connection_kib",), "KiB"),
    ):
        value = _dig(res.get(scenario, {}).get("floor"), path)
        base = _dig(res.get(scenario, {}).get("baseline"), path)
        if value is not None:
            ratio = f" ({value / base:.2f}x baseline)" if base else ""
            floor_lines.append(f"  {label}: {_fmt(value, 2)} {unit}{ratio}")
    if floor_lines:
        lines.append("")
        lines.append(
            "floor (bench.floor: the baseline's job on Sans-I/O ServerProtocol, no asyncio API):"
        )
        lines.extend(floor_lines)
    comp = res.get("compression")
    if comp:
        lines.append("")
        lines.append("compression study (baseline server, permessage-deflate vs none):")
        for key, data in comp.items():
            lines.append(
                f"  {key:<8} RSS/conn {_fmt(data['rss_per_connection_kib'], 1)} KiB, "
                f"server CPU/event {_fmt(data['server_cpu_us_per_event'], 1)} us, "
                f"wire bytes/event {_fmt(data['wire_bytes_per_event'], 0)}"
            )
    noise = []
    for scenario in ("handshake", "fanout"):
        for name in ("baseline", "gateway"):
            data = res.get(scenario, {}).get(name, {})
            for part in (data, data.get("paced", {}), data.get("saturated", {})):
                label = scenario + (f".{part.get('phase')}" if part.get("phase") else "")
                if "interference" in part and "rounds" in part:
                    noise.append(
                        f"{label}/{name} round {part.get('round_chosen')}: "
                        f"{part['interference']:.2f}"
                    )
                elif "interference" in part and "slices_kept" in part:
                    noise.append(
                        f"{label}/{name} slices {part['slices_kept']} of {part['slices']}: "
                        f"{part['interference']:.2f}"
                    )
    if noise:
        lines.append("")
        lines.append(
            "rounds kept (least foreign CPU + steal on the benchmark CPUs, in CPUs): "
            + "; ".join(noise)
        )
    m = report["machine"]
    lines.append("")
    lines.append(
        f"machine: {m['cpus_online']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, "
        f"Linux {m['kernel']}, Python {m['python']}, websockets {m['websockets']}, "
        f"uvloop {m['uvloop']}; data dir on {m['data_dir_fs']}"
    )
    lines.append(f"pinning: {m['pinning']} (separate processes, os.sched_setaffinity)")
    src = report.get("gateway_source", {})
    dirty = f", uncommitted: {', '.join(src['changed'])}" if src.get("changed") else ""
    lines.append(f"gateway code: {src.get('root')} at {src.get('commit')}{dirty}")
    lines.append(f"mode: {report['mode']}; total {report['timings_s'].get('total', 0):.0f} s")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="toy sizes, a few seconds")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="results JSON path")
    parser.add_argument("--workdir", help="where server data and logs go (default bench/.work)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--gateway-root",
        metavar="DIR",
        help="run the gateway package found in DIR (A/B-test a change without installing it)",
    )
    parser.add_argument("--profile", metavar="DIR", help="py-spy the gateway into DIR")
    parser.add_argument(
        "--profile-baseline", action="store_true", help="with --profile: the baseline too"
    )
    parser.add_argument(
        "--no-floor",
        dest="floor",
        action="store_false",
        help="skip bench.floor (the Sans-I/O reference) in handshake, fan-out and idle",
    )
    parser.add_argument("--no-compression", action="store_true", help="skip the deflate study")
    parser.add_argument(
        "--only",
        help="comma-separated subset: handshake,fanout,durable_push,catchup,idle,compression,"
        "fanout2",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a size, e.g. --set idle_connections=2000",
    )
    return parser.parse_args(argv)


def sizes_from(args: argparse.Namespace) -> Sizes:
    sizes = SMOKE if args.smoke else Sizes()
    values = asdict(sizes)
    for item in args.set:
        key, _, text = item.partition("=")
        if key not in values:
            raise SystemExit(f"--set: unknown size {key!r}; one of {', '.join(values)}")
        values[key] = (
            type(values[key])(float(text)) if isinstance(values[key], int) else float(text)
        )
    return Sizes(**values)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Bench(args, sizes_from(args))
    try:
        report = uvloop.run(bench.run())
    finally:
        bench.cleanup()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    print(table(report))
    print(f"\nresults written to {out}")
    return 0
