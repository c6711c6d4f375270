"""The load generator of one server in the C100k rig (:mod:`bench.rigs.c100k`), in a process
of its own: a process holds at most ~19,850 client sockets under a 20,000 file limit, so the
two servers loaded at once need two generators.

The orchestrator sends commands over a pipe and gets one answer each: ``warm`` (open the
warm-up connections), ``open`` (the idle connections over many stores, then the hot store's
subscribers and pusher), ``slice`` (paced pushes to the hot store for a while), ``finish``
(count the connections the server closed, abort them all). Between commands the event loop
keeps running, so the connections are read (and drops noticed) all along.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import uvloop

from bench.client import Conn, ConnectError, source_addresses
from bench.procs import Server, raise_nofile
from bench.results import Usage
from bench.rigs.common import Auth, Meter, abort_all, open_live, store_ids
from bench.rigs.fanout import FanoutPhase, FanoutRig
from bench.sizes import Sizes


@dataclass(frozen=True, slots=True, kw_only=True)
class Spec:
    """What a worker needs: its server, the size, the JWT secret of the run."""

    name: str
    port: int
    pid: int
    cpus: set[int]
    quiet_interval: float
    secret: str
    pool: int
    sizes: Sizes
    connections: int  # every client connection: warm-up, idle, hot subscribers, pusher


@dataclass(frozen=True, slots=True, kw_only=True)
class Opened:
    """The answer to ``open``."""

    idle_opened: int
    open_failures: int
    measured: int  # connections opened by ``open`` (after the warm-up)
    idle_usage: Usage  # the idle connections' handshakes
    sources_used: int  # distinct local addresses of the open connections (getsockname)
    usage: Usage  # every connection of ``open``, the hot store's warm-up pushes included


class _Attached(Server):
    """A server started by another process (the orchestrator): read, never started."""

    attached_pid: int = 0

    @property
    def pid(self) -> int:
        return self.attached_pid


def _local_address(conn: Conn) -> str | None:
    transport = conn.transport
    name = transport.get_extra_info("sockname") if transport is not None else None
    return str(name[0]) if name else None


async def open_counting(
    count: int, concurrency: int, opener: Callable[[int], Awaitable[Conn]]
) -> tuple[list[Conn], int]:
    """Like :func:`bench.rigs.common.open_many`, but a refused or failed connection is
    counted (against the target's "all open"), not raised."""
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


class Holder:
    """The connections of one server."""

    def __init__(self, spec: Spec) -> None:
        s = self.sizes = spec.sizes
        server = _Attached(spec.name, [], {}, spec.cpus, Path(os.devnull), port=spec.port)
        server.attached_pid = spec.pid
        server.quiet_interval = spec.quiet_interval
        self.server = server
        self.auth = Auth(spec.secret, pool=spec.pool)
        self.idle_count = spec.connections - s.c100k_warmup - s.c100k_hot - 1
        assert self.idle_count > 0, f"c100k: {spec.connections} connections leave none idle"
        self.ids = store_ids(f"c100k-{spec.name}", s.c100k_stores)
        self.sources = source_addresses(s.c100k_sources)
        self.rig = FanoutRig(server, self.auth, stores=1, subscribers=s.c100k_hot, batch=1)
        self.warm: list[Conn] = []
        self.conns: list[Conn] = []
        self.failures = 0

    def _opener(self, offset: int) -> Callable[[int], Awaitable[Conn]]:
        ids, sources, server, auth = self.ids, self.sources, self.server, self.auth

        async def open_one(i: int) -> Conn:
            n = offset + i
            store = ids[n % len(ids)]
            conn, _, _ = await open_live(
                server, store, auth.wire(store, n), source=sources[n % len(sources)]
            )
            return conn

        return open_one

    async def warm_up(self) -> int:
        s = self.sizes
        self.warm, failed = await open_counting(s.c100k_warmup, s.concurrency, self._opener(0))
        self.failures += failed
        return len(self.warm)

    async def open(self) -> Opened:
        s = self.sizes
        meter = Meter(self.server)
        opener = self._opener(s.c100k_warmup)
        self.conns, failed = await open_counting(self.idle_count, s.concurrency, opener)
        self.failures += failed
        idle_usage = meter.read()
        await self.rig.open(concurrency=s.concurrency, sources=self.sources)
        every = self.warm + self.conns + self.rig.sub_conns  # the pusher: any address
        return Opened(
            sources_used=len({_local_address(c) for c in every} - {None}),
            idle_opened=len(self.conns),
            open_failures=self.failures,
            measured=len(self.conns) + len(self.rig.conns),
            idle_usage=idle_usage,
            usage=meter.read(),
        )

    async def slice(self, rate: float, seconds: float) -> tuple[FanoutPhase, Any]:
        phase = await self.rig.paced(rate, seconds)
        return phase, self.rig.last_raw

    def finish(self) -> int:
        """Connections the server closed while held; every connection is aborted."""
        dropped = sum(c.closed for c in self.warm) + sum(c.closed for c in self.conns)
        dropped += self.rig.close()
        abort_all(self.conns)
        abort_all(self.warm)
        return dropped


async def _serve(pipe: Connection, spec: Spec) -> None:
    loop = asyncio.get_running_loop()
    holder = Holder(spec)
    try:
        while True:
            command, *args = await loop.run_in_executor(None, pipe.recv)
            try:
                if command == "warm":
                    answer: object = await holder.warm_up()
                elif command == "open":
                    answer = await holder.open()
                elif command == "slice":
                    answer = await holder.slice(*args)
                elif command == "finish":
                    pipe.send(("ok", holder.finish()))
                    return
                else:
                    raise ValueError(f"unknown command {command!r}")
            except Exception as exc:  # handed to the orchestrator
                pipe.send(("error", f"{type(exc).__name__}: {exc}"))
                return
            pipe.send(("ok", answer))
    finally:
        holder.finish()


def main(pipe: Connection, spec: Spec) -> None:
    """The worker process (``multiprocessing`` spawn target)."""
    raise_nofile()
    uvloop.run(_serve(pipe, spec))
