"""One client of the reconnect storm (:mod:`bench.rigs.storm`): a live pull that reconnects
the way LiveStore 0.4.0 does, and checks every event it gets.

The schedule is sync-cf's ``retryTransientErrors``: ``Schedule.exponential('1 seconds')``
united with ``Schedule.fixed('30 seconds')`` and ``jittered`` (each delay times a random
factor in [0.8, 1.2]): the first attempt ~1 s after the socket closed, then 2 s, 4 s, ...,
at most 30 s. A refused upgrade is retried like any failed open (LiveStore cannot tell them
apart); ``Retry-After`` on a 503 is honoured as the least delay (LiveStore in a browser
cannot read it; the Python client and this one can). Each reconnect pulls from the cursor
the client holds, as LiveStore does.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench.client import Conn, ConnectError, Refused
from bench.frames import ACK_PULL, CHUNK_START, EXIT_START, NONE, PING, PULL_ID, request

SEQ_MARK = b'"seqNum":'
BACKEND_MARK = b'"backendId":"'
DEFECT_START = b'{"_tag":"Defect"'
# The client's own limits (LiveStore's connect gives up on an open after 10 s).
OPEN_TIMEOUT = 10.0
PULL_TIMEOUT = 10.0


def backoff(attempt: int) -> float:
    """Delay before attempt ``attempt`` (0: the first after the close), jittered."""
    return min(30.0, 2.0**attempt) * random.uniform(0.8, 1.2)


def seqs_in(data: bytes) -> list[int]:
    """Every event ``seqNum`` of a Chunk, in order (``parentSeqNum`` does not match)."""
    out = []
    at = data.find(SEQ_MARK)
    while at >= 0:
        i = at + len(SEQ_MARK)
        j = i
        while 48 <= data[j] <= 57:
            j += 1
        out.append(int(data[i:j]))
        at = data.find(SEQ_MARK, j)
    return out


@dataclass
class Tally:
    """What every client of one storm adds to."""

    clients: int
    ready_at: float = 0.0  # when the restarted server listens (monotonic)
    live: int = 0
    all_live: asyncio.Event = field(default_factory=asyncio.Event)
    handshakes: int = 0
    shed: int = 0
    refused_tcp: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    attempts_max: int = 0
    last_live_at: float = 0.0
    gaps: int = 0
    duplicates: int = 0
    deadline: float = 0.0
    # Once the pushers stopped: each store's last event, and the clients still short of it.
    heads: dict[str, int] | None = None
    behind: int = 0
    caught_up: asyncio.Event = field(default_factory=asyncio.Event)

    def expect(self, heads: dict[str, int], fleet: list[StormClient]) -> None:
        """Every client of ``fleet`` must reach its store's head in ``heads``."""
        self.heads = heads
        self.behind = sum(c.cursor < heads[c.store_id] for c in fleet)
        if self.behind == 0:
            self.caught_up.set()

    def advanced(self, before: int, after: int, store_id: str) -> None:
        heads = self.heads
        if heads is not None and before < heads[store_id] <= after:
            self.behind -= 1
            if self.behind == 0:
                self.caught_up.set()

    def became_live(self, now: float) -> None:
        self.live += 1
        self.last_live_at = max(self.last_live_at, now)
        if self.live >= self.clients:
            self.all_live.set()


class StormConn(Conn):
    __slots__ = ("owner",)

    def __init__(self, owner: StormClient, host: str, port: int, resource: str) -> None:
        super().__init__(host, port, resource, owner.on_text)
        self.owner = owner

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.opened.done() and not self.opened.cancelled():
            self.opened.exception()  # retrieved: nobody may be waiting any more
        self.owner.lost(self)


class StormClient:
    """A live pull on ``store_id`` from ``source`` (a 127.0.0.0/8 address)."""

    __slots__ = (
        "_first",
        "_gone",
        "backend",
        "conn",
        "cursor",
        "last_event_at",
        "payload",
        "resource",
        "source",
        "store_id",
        "tally",
    )

    def __init__(
        self, tally: Tally, store_id: str, resource: str, payload: Any, source: str
    ) -> None:
        self.tally = tally
        self.store_id = store_id
        self.resource = resource
        self.payload = payload
        self.source = source
        self.cursor = 0
        self.backend: str | None = None
        self.conn: StormConn | None = None
        self.last_event_at = 0.0
        loop = asyncio.get_running_loop()
        self._first: asyncio.Future[None] = loop.create_future()
        self._gone: asyncio.Future[None] = loop.create_future()

    # -- frames -------------------------------------------------------------------------

    def on_text(self, data: bytes, now: int) -> None:
        if data.startswith(CHUNK_START):
            at = data.find(BACKEND_MARK)
            if at >= 0 and self.backend is None:
                start = at + len(BACKEND_MARK)
                self.backend = data[start : data.index(b'"', start)].decode()
            seqs = seqs_in(data)
            before = self.cursor
            for seq in seqs:
                if seq == self.cursor + 1:
                    self.cursor = seq
                elif seq <= self.cursor:
                    self.tally.duplicates += 1
                else:
                    self.tally.gaps += seq - self.cursor - 1
                    self.cursor = seq
            if seqs:
                self.last_event_at = now / 1e9
                self.tally.advanced(before, self.cursor, self.store_id)
            if self.conn is not None:
                self.conn.send(ACK_PULL)
            if not self._first.done():
                self._first.set_result(None)
        elif (data.startswith((EXIT_START, DEFECT_START))) and not self._first.done():
            self._first.set_exception(ConnectError(data[:300].decode(errors="replace")))

    def lost(self, conn: StormConn) -> None:
        if conn is not self.conn:
            return
        if not self._first.done():
            self._first.set_exception(ConnectError("closed before the pull was answered"))
            self._first.exception()  # retrieved: the upgrade may have failed before the pull
        if not self._gone.done():
            self._gone.set_result(None)

    def pull_frame(self) -> bytes:
        body: dict[str, Any] = {"storeId": self.store_id, "payload": self.payload, "live": True}
        if self.cursor and self.backend is not None:
            value = {"backendId": self.backend, "eventSequenceNumber": self.cursor}
            body["cursor"] = {"_tag": "Some", "value": value}
        else:
            body["cursor"] = NONE
        return request(PULL_ID, "SyncWsRpc.Pull", body)

    # -- connecting ---------------------------------------------------------------------

    async def open(self, port: int) -> None:
        """Connect, upgrade and pull; raises on any failure (the caller classifies it)."""
        loop = asyncio.get_running_loop()
        self._first = loop.create_future()
        self._gone = loop.create_future()
        conn = StormConn(self, "127.0.0.1", port, self.resource)
        self.conn = conn
        try:
            async with asyncio.timeout(OPEN_TIMEOUT):
                await loop.create_connection(
                    lambda: conn, "127.0.0.1", port, local_addr=(self.source, 0)
                )
                await conn.opened
        except TimeoutError:
            # No TCP connection yet (SYNs dropped: the accept queue overflowed), or no answer
            # to the upgrade request.
            stage = "connect" if conn.transport is None else "upgrade"
            conn.abort()
            raise TimeoutError(stage) from None
        conn.send(PING)
        conn.send(self.pull_frame())
        try:
            async with asyncio.timeout(PULL_TIMEOUT):
                await self._first
        except TimeoutError:
            conn.abort()
            raise TimeoutError("pull") from None
        except ConnectError:
            conn.abort()
            raise

    async def storm(self, port: int) -> None:
        """Wait for the close, then reconnect until live again (or the storm's deadline)."""
        await self._gone
        tally = self.tally
        attempt = 0
        retry_after = 0.0
        while True:
            delay = max(backoff(attempt), retry_after * random.uniform(0.8, 1.2))
            if time.monotonic() + delay > tally.deadline:
                tally.failures["gave_up"] += 1
                return
            await asyncio.sleep(delay)
            attempt += 1
            tally.attempts_max = max(tally.attempts_max, attempt)
            retry_after = 0.0
            after_ready = tally.ready_at and time.monotonic() > tally.ready_at
            try:
                await self.open(port)
            except Refused as exc:
                if exc.status == 503:
                    tally.shed += 1
                    retry_after = float(exc.header(b"retry-after") or 1)
                else:
                    tally.failures[f"refused_{exc.status}"] += 1
                continue
            except ConnectionRefusedError:
                # Nothing listens: the restart is under way (after it: a failure).
                if after_ready:
                    tally.failures["connection_refused"] += 1
                else:
                    tally.refused_tcp += 1
                continue
            except TimeoutError as exc:
                tally.failures[f"timeout_{exc.args[0] if exc.args else 'open'}"] += 1
                continue
            except (ConnectError, OSError) as exc:
                kind = "closed_before_pull" if "before the pull" in str(exc) else "reset"
                tally.failures[kind] += 1
                continue
            tally.handshakes += 1
            tally.became_live(time.monotonic())
            return
