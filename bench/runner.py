"""The orchestration of a run: start the servers, run each measurement on each of them in
alternating rounds, keep the cleanest samples, and hand the results to ``bench.report``.

Process layout (2-CPU machine): this process is the load generator and is pinned to the
second CPU; the gateway and the baseline server run as separate processes pinned to the first
CPU (``bench.procs``). Measurements alternate baseline, then gateway, scenario by scenario, so
both see the same machine state.
"""

from __future__ import annotations

import argparse
import gc
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from bench import report
from bench.cleanest import S, cleanest, keep_cleanest
from bench.machine import machine, source_state
from bench.procs import Server, baseline_server, gateway_server, plan_cpus, raise_nofile
from bench.profiling import Profiler
from bench.results import Picked
from bench.rigs.c100k import c100k
from bench.rigs.catchup import catchup, populate
from bench.rigs.client import client_rig
from bench.rigs.common import Auth
from bench.rigs.durable import DurableResult, durable_push
from bench.rigs.fanout import FanoutPhase, FanoutRig, PacedSlices
from bench.rigs.handshake import HandshakeResult, handshake
from bench.rigs.handshake_tls import handshake_tls
from bench.rigs.idle import IdleResult, idle
from bench.rigs.multinode import two_nodes
from bench.rigs.pg_throughput import pg_throughput
from bench.rigs.push_rules import push_rules
from bench.rigs.storm import storm
from bench.sizes import Sizes
from bench.studies.compression import compression_study
from bench.studies.floor import floor_server
from bench.tls import Certs, client_context

ROOT = Path(__file__).resolve().parents[1]

R = TypeVar("R")


class Bench:
    def __init__(self, args: argparse.Namespace, sizes: Sizes) -> None:
        self.args = args
        self.sizes = sizes
        self.server_cpus, self.gen_cpus, self.how = plan_cpus()
        self.secret = secrets.token_urlsafe(48)
        self.bypass = secrets.token_urlsafe(48)
        self.auth = Auth(self.secret, pool=32 if args.smoke else 256)
        base = Path(args.workdir) if args.workdir else ROOT / "bench" / ".work"
        base.mkdir(parents=True, exist_ok=True)
        self.workdir = Path(tempfile.mkdtemp(prefix="run-", dir=base))
        self.profiler = Profiler(Path(args.profile)) if args.profile else None
        self.gateway_root = Path(args.gateway_root).resolve() if args.gateway_root else None
        self.source = source_state(self.gateway_root or ROOT)
        # scenario -> server (or variant) -> result; "fanout2" holds one result
        self.results: dict[str, object] = {}
        self.timings: dict[str, float] = {}
        self._servers = 0

    def log(self, text: str) -> None:
        if not self.args.quiet:
            print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    # -- servers ------------------------------------------------------------------------------

    async def _start(self, server: Server, certs: Certs | None = None) -> Server:
        server.quiet_interval = 0.05 if self.args.smoke else 0.2
        if certs is not None:
            server.client_tls = client_context(certs.ca_file)
        await server.start()
        return server

    async def gateway(
        self,
        env: dict[str, str] | None = None,
        *,
        certs: Certs | None = None,
        args: tuple[str, ...] = (),
    ) -> Server:
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
        server.argv.extend(args)
        if certs is not None:
            server.env["GATEWAY_SERVER_TLS_CERT_FILE"] = str(certs.cert_file)
            server.env["GATEWAY_SERVER_TLS_KEY_FILE"] = str(certs.key_file)
        root = self.gateway_root
        if root is not None:
            # Another source tree (e.g. a work-in-progress fix): `python -m gateway` from
            # its directory imports its package, ahead of the installed one.
            server.cwd = root
            server.env["PYTHONPATH"] = str(root)
        else:
            server.env["PYTHONPATH"] = str(ROOT)
        return await self._start(server, certs)

    async def baseline(
        self, *, history: int = 0, compression: bool = False, certs: Certs | None = None
    ) -> Server:
        self._servers += 1
        n = self._servers
        server = baseline_server(
            self.workdir / f"baseline-{n}.log",
            self.server_cpus,
            history=history,
            compression=compression,
            tls=(certs.cert_file, certs.key_file) if certs is not None else None,
        )
        server.env["PYTHONPATH"] = str(ROOT)
        return await self._start(server, certs)

    async def floor(self) -> Server:
        self._servers += 1
        server = floor_server(self.workdir / f"floor-{self._servers}.log", self.server_cpus)
        server.env["PYTHONPATH"] = str(ROOT)
        return await self._start(server)

    # -- measuring ----------------------------------------------------------------------------

    async def measure(self, name: str, server: Server, coro: Awaitable[R]) -> R:
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
            result = await coro
        finally:
            if profiling:
                assert self.profiler is not None
                summary = self.profiler.stop()
                if summary is not None:
                    self.log(f"  profile: {summary}")
        self.timings[f"{name}/{server.name}"] = time.monotonic() - started
        gc.collect()
        return result

    def pick(self, samples: list[S]) -> Picked[S]:
        return cleanest(samples, self.server_cpus, self.gen_cpus)

    def keep_cleanest(
        self, slices: list[FanoutPhase], raws: list[tuple[list[int], list[int]]]
    ) -> PacedSlices:
        return keep_cleanest(slices, raws, self.sizes.fan_keep, self.server_cpus, self.gen_cpus)

    def wants(self, name: str) -> bool:
        return not self.args.only or name in self.args.only.split(",")

    async def both(
        self, name: str, servers: tuple[Server, ...], make: Callable[[Server], Awaitable[R]]
    ) -> dict[str, R]:
        """Run ``make(server)`` on each server (baseline first)."""
        return {server.name: await self.measure(name, server, make(server)) for server in servers}

    async def rounds(
        self,
        name: str,
        servers: tuple[Server, ...],
        count: int,
        make: Callable[[Server], Awaitable[S]],
    ) -> dict[str, Picked[S]]:
        """``count`` alternating rounds (baseline, gateway, baseline, ...); the cleanest kept."""
        samples: dict[str, list[S]] = {server.name: [] for server in servers}
        for index in range(count):
            for server in servers:
                label = f"{name}#{index + 1}" if count > 1 else name
                samples[server.name].append(await self.measure(label, server, make(server)))
        return {key: self.pick(values) for key, values in samples.items()}

    # -- the run ------------------------------------------------------------------------------

    async def fanout(self, servers: tuple[Server, ...]) -> None:
        s = self.sizes
        rigs = {}
        for server in servers:
            self.log(f"fanout: connecting {s.fan_stores}x{s.fan_subscribers} to {server.name} ...")
            rig = FanoutRig(
                server,
                self.auth,
                stores=s.fan_stores,
                subscribers=s.fan_subscribers,
                batch=s.fan_batch,
            )
            await rig.open(concurrency=s.concurrency)
            rigs[server.name] = rig
        try:
            paced: dict[str, list[FanoutPhase]] = {name: [] for name in rigs}
            raws: dict[str, list[tuple[list[int], list[int]]]] = {name: [] for name in rigs}
            saturated: dict[str, list[FanoutPhase]] = {name: [] for name in rigs}
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
        results = {
            name: rig.result(
                self.keep_cleanest(paced[name], raws[name]), self.pick(saturated[name]), lost[name]
            )
            for name, rig in rigs.items()
        }
        if "gateway" in paced and "baseline" in paced:
            # A second view of the p99 ratio: slice by slice (adjacent in time, so under
            # similar background load), the median of gateway p99 / baseline p99.
            pairs = [
                g.latency.p99_ms / b.latency.p99_ms
                for g, b in zip(paced["gateway"], paced["baseline"], strict=True)
                if b.latency.p99_ms
            ]
            if pairs:
                gw = results["gateway"]
                paired = replace(gw.paced, p99_ratio_paired_median=statistics.median(pairs))
                results["gateway"] = replace(gw, paced=paired)
        self.results["fanout"] = results
        for server in servers:
            await server.quiet()

    async def shared(self) -> None:
        """The measurements that the gateway, the baseline (and the floor) run in turn on
        one server each: handshake, fan-out, durable push, catch-up."""
        s = self.sizes
        auth = self.auth
        res = self.results
        gw = await self.gateway()
        base = await self.baseline(history=s.catchup_events if self.wants("catchup") else 0)
        floor = await self.floor() if self.args.floor else None
        pair = (base, gw)
        # The floor (a Sans-I/O server) joins the comparisons where it can do the job.
        trio = (base, gw, floor) if floor is not None else pair

        def durable(batch: int) -> Callable[[Server], Awaitable[DurableResult]]:
            return lambda server: durable_push(
                server, auth, pushers=s.dur_pushers, batch=batch, duration=s.dur_s
            )

        def shake(server: Server) -> Awaitable[HandshakeResult]:
            return handshake(
                server,
                auth,
                duration=s.hs_duration,
                max_connections=s.hs_max,
                concurrency=s.hs_concurrency,
                stores=s.hs_stores,
            )

        try:
            if self.wants("handshake"):
                res["handshake"] = await self.rounds("handshake", trio, s.rounds, shake)
            if self.wants("handshake_tls"):
                # Right after the plain one, on a second pair of servers serving wss://.
                res["handshake_tls"] = await handshake_tls(self, shake)
            if self.wants("fanout"):
                await self.fanout(trio)
            if self.wants("durable_push"):
                res["durable_push"] = await self.both("durable_push", pair, durable(s.dur_batch))
                if s.dur_single_batch:
                    res["durable_push_single"] = await self.both(
                        "durable_push_single", pair, durable(s.dur_single_batch)
                    )
            if self.wants("catchup"):
                store = f"catchup-{int(time.time())}"
                self.log(f"catchup: pushing {s.catchup_events} events into the gateway ...")
                populate_s = await populate(gw, auth, store, s.catchup_events)
                caught = await self.both(
                    "catchup",
                    pair,
                    lambda server: catchup(
                        server, auth, store, events=s.catchup_events, runs=s.catchup_runs
                    ),
                )
                caught["gateway"] = replace(caught["gateway"], populate_s=populate_s)
                res["catchup"] = caught
        finally:
            await gw.stop()
            await base.stop()
            if floor is not None:
                await floor.stop()

    async def idle(self) -> dict[str, IdleResult]:
        # Fresh servers: earlier scenarios leave freed memory behind that new
        # connections would reuse, which would flatter the per-connection figure.
        s = self.sizes
        results = {}
        makers: list[Callable[[], Awaitable[Server]]] = [self.baseline, self.gateway]
        if self.args.floor:
            makers.append(self.floor)
        for make in makers:
            server = await make()
            try:
                results[server.name] = await self.measure(
                    "idle",
                    server,
                    idle(
                        server,
                        self.auth,
                        connections=s.idle_connections,
                        stores=s.idle_stores,
                        concurrency=s.concurrency,
                        warmup=s.idle_warmup,
                        settle=s.settle_s,
                    ),
                )
            finally:
                await server.stop()
        return results

    async def run(self) -> dict[str, Any]:
        os.sched_setaffinity(0, self.gen_cpus)
        nofile = raise_nofile()
        s = self.sizes
        started = time.monotonic()
        self.log(f"{self.how}; open-file limit {nofile}; work dir {self.workdir}")
        res = self.results
        on_shared = ("handshake", "handshake_tls", "fanout", "durable_push", "catchup")
        if any(self.wants(name) for name in on_shared):
            await self.shared()
        if self.wants("push_rules"):
            res["push_rules"] = await push_rules(self)
        if self.wants("fanout2"):
            res["fanout2"] = await two_nodes(
                self.gateway,
                self.auth,
                self.log,
                self.timings,
                stores=s.mn_stores,
                subscribers=s.mn_subscribers,
                rate=s.mn_rate,
                duration=s.mn_s,
                concurrency=s.concurrency,
            )
        if self.wants("pg_throughput"):
            res["pg_throughput"] = await pg_throughput(
                self.gateway,
                self.auth,
                self.log,
                self.timings,
                stores=s.pg_stores,
                hot_clients=s.pg_hot,
                duration=s.pg_s,
                concurrency=s.concurrency,
            )
        if self.wants("idle"):
            res["idle"] = await self.idle()
        if self.wants("c100k"):
            res["c100k"] = await c100k(self)
        if self.wants("storm"):
            if s.storm_clients > nofile - 300:
                self.sizes = replace(s, storm_clients=nofile - 300)
                self.log(f"storm: {self.sizes.storm_clients} clients (open-file limit {nofile})")
            res["storm"] = await storm(self)
        if any(self.wants(name) for name in ("client", "client_follow", "client_commit")):
            res.update(await client_rig(self))
        if self.wants("compression") and not self.args.no_compression:
            res["compression"] = await compression_study(self)
        self.timings["total"] = time.monotonic() - started
        return report.build(
            smoke=self.args.smoke,
            machine=machine(self.how, self.server_cpus, self.gen_cpus, self.workdir),
            source=self.source,
            sizes=self.sizes,
            timings=self.timings,
            results=res,
        )

    def cleanup(self) -> None:
        if not self.args.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
