"""What every rig shares: tokens, CPU meters, and opening live pulls.

Server CPU is the process's utime + stime (all threads) over the measured window; generator
CPU is this process's own rusage over the same window, so a saturated load generator shows up.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import jwt

from bench import frames
from bench.client import Conn, ConnectError, connect, monotonic_ns
from bench.frames import ACK_PULL, CHUNK_START, EXIT_START, PING
from bench.procs import Server, cpu_busy, cpu_times, self_cpu_seconds
from bench.results import Usage

HOST = "127.0.0.1"


@dataclass
class Auth:
    """JWTs for the gateway's ``validate_payload`` (HS256, ``sub`` and ``exp``)."""

    secret: str
    pool: int = 256
    # Claims every token carries beside sub, iat and exp (the push-rules rig's role, ...).
    claims: dict[str, object] = field(default_factory=dict)
    tokens: list[str] = field(default_factory=list)
    _payloads: list[dict[str, str]] = field(default_factory=list)
    _wire: dict[tuple[str, int], tuple[str, bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        now = int(time.time())
        self.tokens = [
            jwt.encode(
                {"sub": f"bench-user-{i}", "iat": now, "exp": now + 3 * 3600} | self.claims,
                self.secret,
                algorithm="HS256",
            )
            for i in range(self.pool)
        ]

        self._payloads = [
            {"instanceId": f"bench-{i}", "authToken": token} for i, token in enumerate(self.tokens)
        ]

    def payload(self, i: int) -> dict[str, str]:
        """The sync payload of client ``i`` (``pool`` distinct instances and subjects)."""
        return self._payloads[i % self.pool]

    def wire(self, store_id: str, i: int) -> tuple[str, bytes]:
        """(URL resource, live Pull frame) of client ``i`` on ``store_id``, cached: the
        double percent-encoding of a JWT costs more than the rest of a handshake."""
        key = (store_id, i % self.pool)
        found = self._wire.get(key)
        if found is None:
            payload = self.payload(i)
            found = self._wire[key] = (
                frames.resource(store_id, payload),
                frames.pull_frame(store_id, payload),
            )
        return found


class Measured(Protocol):
    """What a :class:`Meter` reads: a server process, or several measured as one."""

    def cpu(self) -> float: ...


class Meter:
    """Server and generator CPU over a window."""

    def __init__(self, server: Measured) -> None:
        self.server = server
        self.t0 = time.monotonic()
        self.server0 = server.cpu()
        self.gen0 = self_cpu_seconds()
        self.cpus0 = cpu_times()

    def read(self) -> Usage:
        elapsed = time.monotonic() - self.t0
        server = self.server.cpu() - self.server0
        gen = self_cpu_seconds() - self.gen0
        return Usage(
            elapsed_s=elapsed,
            server_cpu_s=server,
            generator_cpu_s=gen,
            server_cpu_util=server / elapsed if elapsed else 0.0,
            generator_cpu_util=gen / elapsed if elapsed else 0.0,
            machine_cpus=cpu_busy(self.cpus0, cpu_times()),
        )


async def open_live(
    server: Server,
    store_id: str,
    wire: tuple[str, bytes],
    *,
    extensions: list[Any] | None = None,
    source: str | None = None,
) -> tuple[Conn, int, int]:
    """Connect (from the local address ``source``, if given), send Ping and a live Pull,
    wait for the first Chunk; (conn, t_start, t_chunk)."""
    loop = asyncio.get_running_loop()
    first: asyncio.Future[int] = loop.create_future()

    def on_text(data: bytes, now: int) -> None:
        if first.done():
            return
        if data.startswith(CHUNK_START):
            first.set_result(now)
        elif data.startswith(EXIT_START) or data.startswith(b'{"_tag":"Defect"'):
            first.set_exception(ConnectError(data[:300].decode(errors="replace")))

    resource, pull = wire
    started = monotonic_ns()
    conn = await connect(
        HOST,
        server.port,
        resource,
        on_text,
        extensions=extensions,
        ssl=server.client_tls,
        source=source,
    )
    conn.send(PING)
    conn.send(pull)
    try:
        async with asyncio.timeout(30):
            got = await first
    except BaseException:
        conn.abort()
        raise
    conn.send(ACK_PULL)
    return conn, started, got


async def open_many(
    count: int, concurrency: int, opener: Callable[[int], Awaitable[Conn]]
) -> list[Conn]:
    """``count`` connections, at most ``concurrency`` handshakes in flight."""
    conns: list[Conn] = []
    counter = itertools.count()

    async def worker() -> None:
        while True:
            i = next(counter)
            if i >= count:
                return
            conns.append(await opener(i))

    await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))
    return conns


def abort_all(conns: list[Conn]) -> None:
    for conn in conns:
        conn.abort()
    conns.clear()


def store_ids(prefix: str, count: int) -> list[str]:
    tag = f"{int(time.time() * 1000) % 10**9:09d}"
    return [f"{prefix}-{tag}-{k}" for k in range(count)]


async def conn_of(opening: Awaitable[tuple[Conn, int, int]]) -> Conn:
    conn, _, _ = await opening
    return conn
