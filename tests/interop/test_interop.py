"""End-to-end interop: the real, unmodified LiveStore 0.4.0 npm client against the gateway.

Each test starts the gateway as a subprocess (``python -m gateway serve --port 0``, a
:class:`tests.helpers.daemon.Daemon`), waits for the one ``listening on ws://HOST:PORT`` line it
prints on stderr, and drives one or more long-running Node client processes (``client.mjs``: a
full LiveStore store with ``@livestore/adapter-node`` and the ``makeWsSync`` / ``makeHttpSync``
backends of ``@livestore/sync-cf``) through JSON lines on their stdin/stdout. Nothing here sleeps to
synchronise: every wait is on an output line, with a timeout.

Needs ``node`` (20+) and ``npm ci`` in tests/interop. Without them the tests are skipped, except
under CI=true, where they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import secrets
import shlex
import shutil
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest

from tests.helpers.ci import skip_or_fail
from tests.helpers.daemon import GATEWAY, Daemon, drain_lines, stop_process
from tests.helpers.timeouts import TIMEOUT_UNIT

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

INTEROP_DIR = Path(__file__).resolve().parent
CLIENT_SCRIPT = INTEROP_DIR / "client.mjs"

# Every wait scales with this, so a slow CI box can stretch them (GATEWAY_TEST_TIMEOUT_UNIT).
UNIT = TIMEOUT_UNIT

# The server under test. INTEROP_GATEWAY_CMD (a shell-quoted command prefix) swaps in another build
# or implementation; it gets the same `serve --host ... --port ... --data-dir ...` arguments.
GATEWAY_CMD = tuple(shlex.split(os.environ.get("INTEROP_GATEWAY_CMD", ""))) or GATEWAY

# Lines of a child's stderr kept for failure messages.
LOG_TAIL = 300


def _prerequisites_problem() -> str | None:
    node = shutil.which("node")
    if node is None:
        return "node is not on PATH"
    if not (INTEROP_DIR / "node_modules" / "@livestore" / "sync-cf").is_dir():
        return "tests/interop/node_modules is missing (run `npm ci` in tests/interop)"
    return None


@pytest.fixture(autouse=True)
def _interop_prerequisites() -> None:
    problem = _prerequisites_problem()
    if problem is not None:
        skip_or_fail(problem, ci_prefix="interop prerequisites missing under CI: ")


# ---------------------------------------------------------------------------------------------
# The gateway subprocess

# The runner's own GATEWAY_* settings reach the server under test, except these (auth settings a
# developer's shell might carry); the other variables the gateway reads never do
# (tests.helpers.daemon).
AUTH_SETTINGS = ("GATEWAY_AUTH_",)


class GatewayProcess:
    """``gateway serve`` on 127.0.0.1 with a data dir; restartable on the same port.

    ``env`` adds environment variables (e.g. ``REQUIRE_AUTH``); the auth variables inherited from
    the test's own environment are dropped, as are the ``GATEWAY_*`` ones under
    ``drop_prefixes``. Every output line of every process (each a
    :class:`~tests.helpers.daemon.Daemon`) is kept in ``history``, between start and exit
    markers, for :meth:`wait_log`, :meth:`log_lines` and failure messages.
    """

    def __init__(
        self,
        data_dir: Path,
        env: dict[str, str] | None = None,
        *,
        drop_prefixes: tuple[str, ...] = AUTH_SETTINGS,
    ) -> None:
        self.data_dir = data_dir
        self.env = env or {}
        self.drop_prefixes = drop_prefixes
        self.daemon: Daemon | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self.history: list[str] = []
        self.generation = 0

    def log_lines(self, pattern: str) -> list[str]:
        regex = re.compile(pattern)
        return [line for line in self.history if regex.search(line)]

    async def wait_log(self, pattern: str, *, count: int = 1, within: float = 20.0) -> list[str]:
        """Wait until at least ``count`` logged lines match ``pattern``; return them all."""
        assert self.daemon is not None, "the gateway is not running"
        return await self.daemon.wait_lines(pattern, count=count, within=within * UNIT)

    def ws_url(self, path: str = "/") -> str:
        return f"ws://{self.host}:{self.port}{path}"

    def http_url(self, path: str = "/") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.history[-n:])

    async def start(self, port: int = 0, within: float = 20.0) -> None:
        assert self.daemon is None, "already running"
        self.generation += 1
        self.history.append(f"--- gateway start #{self.generation} (port {port}) ---")
        self.daemon = await Daemon.start(
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(self.data_dir),
            env=self.env,
            drop_prefixes=self.drop_prefixes,
            command=GATEWAY_CMD,
            lines=self.history,
            within=within * UNIT,
        )
        self.host, self.port = self.daemon.host, self.daemon.port
        assert self.port > 0, f"gateway reported port {self.port}"
        if port:
            assert self.port == port, f"asked for port {port}, gateway listens on {self.port}"

    async def stop(self, grace: float = 10.0) -> int:
        """SIGTERM (then SIGKILL after ``grace`` s); returns the exit code."""
        if self.daemon is None:
            return 0
        code = await self.daemon.stop(grace * UNIT)
        self.history.append(f"--- gateway #{self.generation} exited with {code} ---")
        self.daemon = None
        return code

    async def kill(self) -> int:
        """SIGKILL: a crash, with no close frames and no shutdown; returns the exit status."""
        assert self.daemon is not None, "the gateway is not running"
        await self.daemon.kill()
        code = self.daemon.proc.returncode
        assert code is not None
        self.history.append(f"--- gateway #{self.generation} killed ({code}) ---")
        self.daemon = None
        return code

    async def restart(self) -> None:
        """Stop, then start a new process on the SAME port and data dir."""
        port = self.port
        code = await self.stop()
        assert code == 0, f"gateway exited with {code} on SIGTERM:\n{self.log_tail()}"
        await self.start(port=port)


# ---------------------------------------------------------------------------------------------
# A Node LiveStore client subprocess


async def spawn_node(
    cwd: Path, args: list[str], sync_payload: dict[str, Any] | None
) -> asyncio.subprocess.Process:
    """``node *args`` in ``cwd``, driven through its stdin/stdout as JSON lines."""
    # The store's syncPayload (credentials) goes through the environment, not argv.
    env = {k: v for k, v in os.environ.items() if k != "INTEROP_SYNC_PAYLOAD"}
    if sync_payload is not None:
        env["INTEROP_SYNC_PAYLOAD"] = json.dumps(sync_payload)
    return await asyncio.create_subprocess_exec(
        "node",
        *args,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # Dumps of 1,000 rows plus their events are one long JSON line.
        limit=64 * 1024 * 1024,
    )


class ClientError(AssertionError):
    pass


class NodeClient:
    """One ``node client.mjs`` process: a full LiveStore store synced with the gateway."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.stderr: deque[str] = deque(maxlen=LOG_TAIL)
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.ready_info: dict[str, Any] = {}
        self._ids = itertools.count(1)
        self._fatal: str | None = None
        assert proc.stdout is not None
        assert proc.stderr is not None
        self._drains = [
            asyncio.create_task(self._read_stdout(proc.stdout)),
            asyncio.create_task(drain_lines(proc.stderr, self.stderr.append)),
        ]

    @classmethod
    async def start(
        cls,
        name: str,
        *,
        url: str,
        store_id: str,
        transport: str = "ws",
        blocking_initial_sync: bool = False,
        extra_args: tuple[str, ...] = (),
        ready_within: float = 30.0,
        sync_payload: dict[str, Any] | None = None,
    ) -> NodeClient:
        args = [
            str(CLIENT_SCRIPT),
            "--url",
            url,
            "--store-id",
            store_id,
            "--client-id",
            name,
            "--transport",
            transport,
            "--boot-timeout",
            str(int(20 * UNIT)),
            "--max-lifetime",
            str(int(110 * UNIT)),
            *(("--blocking-initial-sync",) if blocking_initial_sync else ()),
            # INTEROP_LOG_FRAMES=1 logs every WebSocket frame / HTTP body to the client's stderr,
            # whose tail is part of every failure message.
            *(("--log-frames",) if os.environ.get("INTEROP_LOG_FRAMES") else ()),
            *extra_args,
        ]
        proc = await spawn_node(INTEROP_DIR, args, sync_payload)
        client = cls(name, proc)
        try:
            client.ready_info = await client._expect(
                lambda ev: ev.get("event") == "ready", ready_within, "ready"
            )
        except BaseException:
            await client.kill()
            raise
        return client

    async def _read_stdout(self, stream: asyncio.StreamReader) -> None:
        while True:
            raw = await stream.readline()
            if not raw:
                break
            line = raw.decode("utf-8", "replace").strip()
            try:
                event = json.loads(line)
            except ValueError:
                self.stderr.append(f"[stdout] {line}")
                continue
            if not isinstance(event, dict):
                self.stderr.append(f"[stdout] {line}")
                continue
            if event.get("event") == "fatal":
                self._fatal = str(event.get("error"))
            await self.events.put(event)
        await self.events.put({"event": "eof"})

    def describe(self, n: int = 60) -> str:
        tail = "\n".join(list(self.stderr)[-n:])
        return f"client {self.name} (exit code {self.proc.returncode}); stderr tail:\n{tail}"

    async def _expect(
        self, match: Callable[[dict[str, Any]], bool], within: float, what: str
    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within * UNIT
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise ClientError(f"{self.name}: no {what} within {within} s\n{self.describe()}")
            try:
                event = await asyncio.wait_for(self.events.get(), remaining)
            except TimeoutError:
                continue
            if event.get("event") == "fatal":
                raise ClientError(f"{self.name}: fatal: {event.get('error')}\n{self.describe()}")
            if event.get("event") == "eof":
                await self.events.put(event)  # keep reporting EOF to later waits
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.proc.wait(), 5)
                raise ClientError(
                    f"{self.name}: exited while waiting for {what}"
                    f"{': ' + self._fatal if self._fatal else ''}\n{self.describe()}"
                )
            if match(event):
                return event

    async def cmd(self, cmd: str, *, reply_within: float = 30.0, **params: Any) -> dict[str, Any]:
        """Send one command and return its ``ok`` reply; an ``error`` reply raises."""
        if self.proc.returncode is not None or self.proc.stdin is None:
            raise ClientError(f"{self.name}: process is gone\n{self.describe()}")
        request_id = next(self._ids)
        line = json.dumps({"id": request_id, "cmd": cmd, **params}) + "\n"
        self.proc.stdin.write(line.encode())
        await self.proc.stdin.drain()
        # Give the client's own timeout (if any) the first chance to answer.
        own = float(params.get("timeout", 0))
        reply = await self._expect(
            lambda ev: ev.get("id") == request_id, max(reply_within, own + 10), f"reply to {cmd}"
        )
        if reply.get("event") != "ok":
            raise ClientError(
                f"{self.name}: {cmd} failed: {reply.get('error')}\n"
                f"state: {json.dumps({k: v for k, v in reply.items() if k != 'error'})}\n"
                f"{self.describe()}"
            )
        return reply

    # Convenience wrappers -------------------------------------------------------------------

    async def commit(
        self, prefix: str, count: int, *, start: int = 1, together: bool = False
    ) -> None:
        reply = await self.cmd("commit", prefix=prefix, count=count, start=start, together=together)
        assert reply["committed"] == count

    async def wait_rows(self, rows: int, within: float = 30.0) -> dict[str, Any]:
        return await self.cmd("wait", rows=rows, timeout=within * UNIT)

    async def wait_connected(self, within: float = 30.0) -> dict[str, Any]:
        return await self.cmd("waitconnected", timeout=within * UNIT)

    async def dump(self) -> dict[str, Any]:
        return await self.cmd("dump", reply_within=60)

    async def shutdown(self, grace: float = 15.0) -> None:
        if self.proc.returncode is None and self.proc.stdin is not None:
            with contextlib.suppress(ClientError, ConnectionError):
                await self.cmd("shutdown", reply_within=grace)
        await self.kill(grace=grace)

    async def kill(self, grace: float = 5.0) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        await stop_process(self.proc, grace)
        for task in self._drains:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5)
        with contextlib.suppress(Exception):
            if self.proc.stdin is not None:
                await self.proc.stdin.wait_closed()


# ---------------------------------------------------------------------------------------------
# Fixtures


@contextlib.asynccontextmanager
async def _running_gateway(
    data_dir: Path, env: dict[str, str] | None = None
) -> AsyncIterator[GatewayProcess]:
    gw = GatewayProcess(data_dir, env)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()
        # pytest shows captured stdout only for failing tests: the server's side of the story.
        print(f"gateway log tail:\n{gw.log_tail(200)}")


@pytest.fixture(name="gateway_proc")
async def _gateway_proc(tmp_path: Path) -> AsyncIterator[GatewayProcess]:
    async with _running_gateway(tmp_path / "gateway-data") as gw:
        yield gw


ClientFactory = Callable[..., Awaitable[NodeClient]]


@contextlib.asynccontextmanager
async def _client_pool(gateway: GatewayProcess) -> AsyncIterator[ClientFactory]:
    """Factory for Node clients of ``gateway``; all of them are shut down afterwards."""
    started: list[NodeClient] = []

    async def factory(name: str, *, store_id: str, **kwargs: Any) -> NodeClient:
        transport = kwargs.get("transport", "ws")
        url = gateway.ws_url() if transport == "ws" else gateway.http_url()
        client = await NodeClient.start(name, url=url, store_id=store_id, **kwargs)
        started.append(client)
        return client

    try:
        yield factory
    finally:
        await asyncio.gather(*(c.shutdown() for c in started), return_exceptions=True)


@pytest.fixture(name="clients")
async def _clients(gateway_proc: GatewayProcess) -> AsyncIterator[ClientFactory]:
    """Factory for Node clients; all of them are shut down after the test."""
    async with _client_pool(gateway_proc) as factory:
        yield factory


@pytest.fixture(name="store_id")
def _store_id() -> str:
    return f"interop-{uuid.uuid4().hex[:12]}"


# ---------------------------------------------------------------------------------------------
# Assertions


def event_ids(dump: dict[str, Any]) -> list[str]:
    """Todo ids in the order of the client's confirmed eventlog: the order the server decided."""
    return [ev["args"]["id"] for ev in dump["events"]]


def row_ids(dump: dict[str, Any]) -> list[str]:
    """Todo ids of the materialised rows, in SQLite rowid order (see client.mjs ``readRows``)."""
    return [row["id"] for row in dump["rows"]]


def assert_consistent(dump: dict[str, Any], who: str) -> None:
    """The confirmed eventlog is a gapless chain from 1, and the rows are exactly its events.

    Row ORDER is not compared with the eventlog: after a rebase LiveStore rolls rows back and
    re-inserts them, so their rowid order reflects materialisation history, not seqNum order.
    """
    events = dump["events"]
    seqs = [ev["seqNum"] for ev in events]
    assert seqs == list(range(1, len(events) + 1)), f"{who}: eventlog seqNums are {seqs}"
    parents = [ev["parentSeqNum"] for ev in events]
    assert parents == list(range(len(events))), f"{who}: eventlog parentSeqNums are {parents}"
    assert all(ev["name"] == "v1.TodoCreated" for ev in events), f"{who}: {events}"
    assert len(set(event_ids(dump))) == len(events), f"{who}: an event was applied twice"
    assert len(set(row_ids(dump))) == len(dump["rows"]), f"{who}: duplicate rows"
    rows = {row["id"]: row["text"] for row in dump["rows"]}
    from_events = {ev["args"]["id"]: ev["args"]["text"] for ev in events}
    assert rows == from_events, f"{who}: rows {rows} != events {from_events}"
    assert dump["sync"]["pending"] == 0, f"{who}: {dump['sync']}"
    assert dump["sync"]["upstreamHead"] == len(events), f"{who}: {dump['sync']}"


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Both clients are consistent and hold the same eventlog (same order, same seqNums)."""
    assert_consistent(a, "A")
    assert_consistent(b, "B")
    assert a["events"] == b["events"]
    assert sorted(a["rows"], key=lambda r: r["id"]) == sorted(b["rows"], key=lambda r: r["id"])


def ids(prefix: str, start: int, stop: int) -> list[str]:
    return [f"{prefix}-{i}" for i in range(start, stop + 1)]


def assert_subsequence_in_order(all_ids: list[str], mine: list[str]) -> None:
    positions = [all_ids.index(x) for x in mine]
    assert positions == sorted(positions), f"{mine} are out of order in {all_ids}"


async def push_three_each_from_empty(a: NodeClient, b: NodeClient) -> None:
    """A and B (connected, on an empty store) commit A-1..A-3 and B-1..B-3 and push them at once:
    each client's first Push frame is held on the wire so both leave with parentSeqNum 0."""
    await asyncio.gather(a.cmd("hold", on=True), b.cmd("hold", on=True))
    await asyncio.gather(a.commit("A", 3, together=True), b.commit("B", 3, together=True))
    await asyncio.gather(
        a.cmd("waitheld", count=1, timeout=15), b.cmd("waitheld", count=1, timeout=15)
    )
    released = await asyncio.gather(a.cmd("release"), b.cmd("release"))
    assert all(r["released"] >= 1 for r in released), released


def assert_one_won_one_rebased(dump_a: dict[str, Any], dump_b: dict[str, Any]) -> None:
    """After push_three_each_from_empty: one client's three events came first, unopposed; the
    other got ServerAheadError and pushed its own again, rebased after them."""
    order = event_ids(dump_a)
    assert order in (ids("A", 1, 3) + ids("B", 1, 3), ids("B", 1, 3) + ids("A", 1, 3)), order
    winner, loser = (dump_a, dump_b) if order[0] == "A-1" else (dump_b, dump_a)
    assert winner["counters"]["serverAheadErrors"] == 0, winner["counters"]
    assert loser["counters"]["serverAheadErrors"] >= 1, (
        f"the losing client never saw ServerAheadError: {loser['counters']}"
    )
    # The loser pushed its events twice: once rejected, once rebased onto the winner's.
    assert loser["counters"]["pushesSent"] >= 2, loser["counters"]


# ---------------------------------------------------------------------------------------------
# Scenarios


async def test_two_stores_converge(clients: ClientFactory, store_id: str) -> None:
    """§14 case 41: A commits 2; B boots (blocking) and sees them; B commits 2; A gets them live."""
    a = await clients("client-A", store_id=store_id)
    await a.commit("A", 2)
    await a.wait_rows(2, within=15)

    b = await clients("client-B", store_id=store_id, blocking_initial_sync=True)
    assert b.ready_info["rowCount"] == 2, f"B booted without A's events: {b.ready_info}"
    boot = await b.dump()
    assert event_ids(boot) == ["A-1", "A-2"]
    assert sorted(row_ids(boot)) == ["A-1", "A-2"]

    await b.commit("B", 2)
    await b.wait_rows(4, within=15)
    live = await a.wait_rows(4, within=10)
    # The spec expects live delivery within about 1 s; allow slack for a loaded box.
    assert live["waitedMs"] < 5000 * UNIT, f"A waited {live['waitedMs']} ms for B's events"

    dump_a, dump_b = await a.dump(), await b.dump()
    assert_same(dump_a, dump_b)
    assert event_ids(dump_a) == ["A-1", "A-2", "B-1", "B-2"]
    assert [ev["clientId"] for ev in dump_a["events"]] == ["client-A"] * 2 + ["client-B"] * 2
    assert dump_a["counters"]["serverAheadErrors"] == 0
    assert dump_b["counters"]["serverAheadErrors"] == 0


async def test_concurrent_commits_rebase(clients: ClientFactory, store_id: str) -> None:
    """§14 case 42: A and B push from the empty state at once; the loser rebases and re-pushes."""
    a = await clients("client-A", store_id=store_id)
    b = await clients("client-B", store_id=store_id)
    await asyncio.gather(a.wait_connected(15), b.wait_connected(15))

    await push_three_each_from_empty(a, b)

    await asyncio.gather(a.wait_rows(6, within=30), b.wait_rows(6, within=30))
    dump_a, dump_b = await a.dump(), await b.dump()
    assert_same(dump_a, dump_b)

    assert_one_won_one_rebased(dump_a, dump_b)


async def test_late_joiner_catches_up_1000_events(clients: ClientFactory, store_id: str) -> None:
    """A pushes 1,000 events; a client that boots afterwards ends with all of them, in order."""
    total = 1000
    a = await clients("client-A", store_id=store_id)
    await a.commit("A", total)
    await a.wait_rows(total, within=45)

    late = await clients("client-late", store_id=store_id, blocking_initial_sync=True)
    await late.wait_rows(total, within=30)
    dump_a, dump_late = await a.dump(), await late.dump()
    assert_same(dump_a, dump_late)
    assert event_ids(dump_late) == ids("A", 1, total)
    assert row_ids(dump_late) == ids("A", 1, total)  # no rebase happened: rowid order holds
    assert dump_late["events"][-1]["seqNum"] == total


async def test_gateway_restart_mid_session(
    gateway_proc: GatewayProcess, clients: ClientFactory, store_id: str
) -> None:
    """§14 case 44: the gateway restarts (same port, same data); both running clients resume."""
    a = await clients("client-A", store_id=store_id)
    b = await clients("client-B", store_id=store_id)
    await a.commit("A", 2)
    await asyncio.gather(a.wait_rows(2, within=15), b.wait_rows(2, within=15))

    old_port = gateway_proc.port
    code = await gateway_proc.stop()
    assert code == 0, f"gateway exited with {code} on SIGTERM:\n{gateway_proc.log_tail()}"

    # Committed while the server is down: they stay pending in each client.
    await a.commit("A", 2, start=3)
    await b.commit("B", 2)
    status_a, status_b = await asyncio.gather(
        a.cmd("waitpending", count=2, timeout=10), b.cmd("waitpending", count=2, timeout=10)
    )
    assert status_a["sync"]["pending"] == 2, status_a
    assert status_b["sync"]["pending"] == 2, status_b
    assert status_a["rowCount"] == 4, status_a
    assert status_b["rowCount"] == 4, status_b

    await gateway_proc.start(port=old_port)
    assert gateway_proc.port == old_port
    await asyncio.gather(a.wait_connected(40), b.wait_connected(40))

    # Committed after the restart, on both sides.
    await a.commit("A", 1, start=5)
    await b.commit("B", 1, start=3)

    total = 2 + 2 + 2 + 1 + 1
    await asyncio.gather(a.wait_rows(total, within=40), b.wait_rows(total, within=40))
    dump_a, dump_b = await a.dump(), await b.dump()
    assert_same(dump_a, dump_b)

    order = event_ids(dump_a)
    assert sorted(order) == sorted(ids("A", 1, 5) + ids("B", 1, 3)), order
    assert order[:2] == ["A-1", "A-2"], "events from before the restart moved"
    assert_subsequence_in_order(order, ids("A", 1, 5))
    assert_subsequence_in_order(order, ids("B", 1, 3))
    # Both clients really reconnected (a second socket each), and kept their identity.
    assert dump_a["counters"]["wsOpened"] >= 2, dump_a["counters"]
    assert dump_b["counters"]["wsOpened"] >= 2, dump_b["counters"]
    assert dump_a["counters"]["backendIdMismatchErrors"] == 0
    assert dump_b["counters"]["backendIdMismatchErrors"] == 0


async def test_http_transport_client(clients: ClientFactory, store_id: str) -> None:
    """§10 / case 38: a makeHttpSync client sees WS pushes, and its pushes reach the WS client."""
    ws = await clients("client-ws", store_id=store_id)
    await ws.commit("W", 2)
    await ws.wait_rows(2, within=15)

    http = await clients(
        "client-http",
        store_id=store_id,
        transport="http",
        blocking_initial_sync=True,
        extra_args=("--poll-interval", "500"),
    )
    assert http.ready_info["rowCount"] == 2, (
        f"HTTP client booted without W-1/W-2: {http.ready_info}"
    )

    await http.commit("H", 2)
    await http.wait_rows(4, within=20)
    await ws.wait_rows(4, within=15)

    # A later WS push reaches the HTTP client through its polling pulls.
    await ws.commit("W", 1, start=3)
    await http.wait_rows(5, within=20)
    await ws.wait_rows(5, within=15)

    dump_ws, dump_http = await ws.dump(), await http.dump()
    assert_same(dump_ws, dump_http)
    assert event_ids(dump_http) == ["W-1", "W-2", "H-1", "H-2", "W-3"]
    assert [ev["clientId"] for ev in dump_http["events"]] == [
        "client-ws",
        "client-ws",
        "client-http",
        "client-http",
        "client-ws",
    ]
    counters = dump_http["counters"]
    assert counters["wsOpened"] == 0, counters
    assert counters["httpPushes"] >= 1, counters
    assert counters["httpPulls"] >= 2, counters


# ---------------------------------------------------------------------------------------------
# Authentication (issue 3): the same real client, with credentials in its syncPayload

JWT_SECRET = f"interop-jwt-secret-{secrets.token_hex(16)}"
BYPASS_TOKEN = f"interop-bypass-{secrets.token_hex(16)}"
DEV_TOKEN = "insecure-token-change-me"  # the token LiveStore's samples ship, on the default list


def auth_env(*, require_auth: bool = True) -> dict[str, str]:
    return {
        "REQUIRE_AUTH": "true" if require_auth else "false",
        "JWT_SECRET": JWT_SECRET,
        "SERVER_BYPASS_TOKEN": BYPASS_TOKEN,
        "AUTH_GRACE_PERIOD": "1h",
        # Refused clients retry every few seconds from 127.0.0.1, the address every client here
        # shares; the default lockout (5 failures in 15 min per IP) would soon answer 429 to the
        # valid clients as well.
        "GATEWAY_AUTH_LOCKOUT_FAILURES": "1000",
        "GATEWAY_LOG_LEVEL": "info",
    }


def mint(subject: str, *, expires_in: float = 3600) -> str:
    """An HS256 JWT signed with the gateway's secret; ``expires_in < 0`` is already expired."""
    exp = int(time.time() + expires_in)
    claims = {"sub": subject, "iat": exp - 7200, "exp": exp}
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


def jwt_payload(instance_id: str, subject: str, *, expires_in: float = 3600) -> dict[str, str]:
    return {"instanceId": instance_id, "authToken": mint(subject, expires_in=expires_in)}


def open_line(store_id: str, subject: str, instance_id: str, reason: str) -> str:
    """The gateway's INFO line for an admitted WebSocket session."""
    return (
        rf"open transport=ws store={re.escape(store_id)} subject={re.escape(subject)} "
        rf"instance={re.escape(instance_id)} reason={reason} "
    )


def refused_line(code: str, store_id: str, instance_id: str) -> str:
    """The gateway's security WARNING for a refused handshake."""
    return (
        rf"gateway\.security: refused code={code} .*store={re.escape(store_id)} "
        rf"instance={re.escape(instance_id)} .*transport=ws"
    )


async def expired_and_dev_clients(
    clients: ClientFactory, store_id: str
) -> tuple[NodeClient, NodeClient]:
    """The clients test_auth_refused_clients_never_sync expects refused and its control,
    test_auth_dev_mode_control, expects admitted: one with a JWT that expired 2 h ago (beyond
    the 1 h grace window; signed correctly, so only ``exp`` is wrong), one with the dev token."""
    expired = await clients(
        "client-expired",
        store_id=store_id,
        sync_payload=jwt_payload("app-expired", "mallory", expires_in=-2 * 3600),
    )
    dev = await clients(
        "client-dev",
        store_id=store_id,
        sync_payload={"instanceId": "app-dev", "authToken": DEV_TOKEN},
    )
    return expired, dev


@pytest.fixture(name="auth_gateway")
async def _auth_gateway(tmp_path: Path) -> AsyncIterator[GatewayProcess]:
    """A gateway in production mode: REQUIRE_AUTH=true, HS256 secret, bypass token, 1 h grace."""
    async with _running_gateway(tmp_path / "gateway-data", auth_env()) as gw:
        yield gw


@pytest.fixture(name="auth_clients")
async def _auth_clients(auth_gateway: GatewayProcess) -> AsyncIterator[ClientFactory]:
    async with _client_pool(auth_gateway) as factory:
        yield factory


async def test_auth_jwt_clients_converge(
    auth_gateway: GatewayProcess, auth_clients: ClientFactory, store_id: str
) -> None:
    """Issue 3: under REQUIRE_AUTH=true, two clients with valid JWTs sync (case 41, shorter)."""
    a = await auth_clients(
        "client-A", store_id=store_id, sync_payload=jwt_payload("app-a", "alice")
    )
    await a.commit("A", 2)
    await a.wait_rows(2, within=15)

    b = await auth_clients(
        "client-B",
        store_id=store_id,
        blocking_initial_sync=True,
        sync_payload=jwt_payload("app-b", "bob"),
    )
    assert b.ready_info["rowCount"] == 2, f"B booted without A's events: {b.ready_info}"
    await b.commit("B", 1)
    await b.wait_rows(3, within=15)
    live = await a.wait_rows(3, within=10)
    assert live["waitedMs"] < 5000 * UNIT, f"A waited {live['waitedMs']} ms for B's event"

    dump_a, dump_b = await a.dump(), await b.dump()
    assert_same(dump_a, dump_b)
    assert event_ids(dump_a) == ["A-1", "A-2", "B-1"]
    assert [ev["clientId"] for ev in dump_a["events"]] == ["client-A", "client-A", "client-B"]
    # Admitted as their JWT subjects, at the first attempt.
    await auth_gateway.wait_log(open_line(store_id, "alice", "app-a", "jwt"))
    await auth_gateway.wait_log(open_line(store_id, "bob", "app-b", "jwt"))
    assert auth_gateway.log_lines("refused") == []
    for dump in (dump_a, dump_b):
        assert dump["counters"]["wsRefused"] == 0, dump["counters"]


async def test_auth_refused_clients_never_sync(
    auth_gateway: GatewayProcess, auth_clients: ClientFactory, store_id: str
) -> None:
    """Issue 3: with an expired-beyond-grace JWT or the dev token, under REQUIRE_AUTH=true, a real
    client never gets a socket: it receives none of the valid client's events and sends none."""
    gw = auth_gateway
    valid = await auth_clients(
        "client-valid", store_id=store_id, sync_payload=jwt_payload("app-valid", "alice")
    )
    await valid.commit("V", 3)
    await valid.wait_rows(3, within=15)

    expired, dev = await expired_and_dev_clients(auth_clients, store_id)
    # (client, its instanceId, its todo prefix, the gateway's code, the HTTP status)
    refused = (
        (expired, "app-expired", "E", "TOKEN_EXPIRED", 401),
        (dev, "app-dev", "D", "DEV_TOKEN_REJECTED", 403),
    )
    # Both commit locally; the events stay pending (nothing to push them over).
    await asyncio.gather(expired.commit("E", 2), dev.commit("D", 2))
    await asyncio.gather(
        expired.cmd("waitpending", count=2, timeout=10), dev.cmd("waitpending", count=2, timeout=10)
    )
    # One more valid event while they run: a live pull would have delivered it.
    await valid.commit("V", 1, start=4)
    await valid.wait_rows(4, within=15)
    before = await asyncio.gather(expired.cmd("status"), dev.cmd("status"))

    # Evidence of several reconnects, all refused, on both sides: the gateway's security log, and
    # each client's own count of upgrades answered with an HTTP status instead of 101 — at least
    # one of them after V-4 was confirmed.
    for (client, instance_id, _, code, _), seen in zip(refused, before, strict=True):
        await gw.wait_log(refused_line(code, store_id, instance_id), count=3)
        target = max(3, seen["counters"]["wsRefused"] + 1)
        await client.cmd("waitrefused", count=target, timeout=15)

    for client, _, prefix, code, status in refused:
        dump = await client.dump()
        who = f"{client.name} ({code})"
        assert sorted(row_ids(dump)) == ids(prefix, 1, 2), f"{who} has foreign rows: {dump['rows']}"
        assert dump["events"] == [], f"{who} has confirmed events: {dump['events']}"
        assert dump["sync"]["upstreamHead"] == 0, f"{who}: {dump['sync']}"
        assert dump["sync"]["pending"] == 2, f"{who}: {dump['sync']}"
        assert dump["network"]["isConnected"] is False, f"{who}: {dump['network']}"
        counters = dump["counters"]
        assert counters["wsOpened"] == 0, f"{who} got a socket: {counters}"
        for key in ("framesOut", "framesIn", "pushesSent", "pullsSent"):
            assert counters[key] == 0, f"{who}: {key} = {counters[key]}: {counters}"
        assert counters["wsRefused"] >= 3, f"{who}: {counters}"
        assert set(dump["refusedStatuses"]) == {status}, f"{who}: {dump['refusedStatuses']}"

    # The gateway admitted neither of them, ever.
    assert gw.log_lines(r"open transport=\w+ .*instance=app-(expired|dev) ") == []
    assert gw.log_lines(r"instance=app-(expired|dev) .*reason=") == []

    # The server's eventlog, pulled from scratch by a fresh valid client: only the valid events.
    verifier = await auth_clients(
        "client-verify",
        store_id=store_id,
        blocking_initial_sync=True,
        sync_payload=jwt_payload("app-verify", "carol"),
    )
    assert verifier.ready_info["rowCount"] == 4, verifier.ready_info
    dump_valid, dump_verify = await valid.dump(), await verifier.dump()
    assert_same(dump_valid, dump_verify)
    assert event_ids(dump_verify) == ids("V", 1, 4)
    assert {ev["clientId"] for ev in dump_verify["events"]} == {"client-valid"}
    assert sorted(row_ids(dump_valid)) == ids("V", 1, 4)


async def test_auth_bypass_service_pushes_to_jwt_client(
    auth_gateway: GatewayProcess, auth_clients: ClientFactory, store_id: str
) -> None:
    """Issue 3: an internal service with {instanceId, serverBypass} pushes; a JWT client gets the
    events live (and the service gets the app's)."""
    app = await auth_clients(
        "client-app", store_id=store_id, sync_payload=jwt_payload("app-1", "alice")
    )
    await app.wait_connected(15)
    svc = await auth_clients(
        "client-svc",
        store_id=store_id,
        sync_payload={"instanceId": "svc-1", "serverBypass": BYPASS_TOKEN},
    )
    await svc.commit("S", 3)
    await svc.wait_rows(3, within=15)
    live = await app.wait_rows(3, within=10)
    assert live["waitedMs"] < 5000 * UNIT, f"the app waited {live['waitedMs']} ms"

    await app.commit("A", 1)
    await app.wait_rows(4, within=15)
    await svc.wait_rows(4, within=10)

    dump_app, dump_svc = await app.dump(), await svc.dump()
    assert_same(dump_app, dump_svc)
    assert event_ids(dump_app) == ["S-1", "S-2", "S-3", "A-1"]
    assert [ev["clientId"] for ev in dump_app["events"]] == ["client-svc"] * 3 + ["client-app"]
    await auth_gateway.wait_log(open_line(store_id, "server", "svc-1", "bypass"))
    await auth_gateway.wait_log(open_line(store_id, "alice", "app-1", "jwt"))
    assert auth_gateway.log_lines("refused") == []


async def test_auth_dev_mode_control(tmp_path: Path, store_id: str) -> None:
    """Control for test_auth_refused_clients_never_sync: the same expired and dev-token clients
    against the same gateway settings but REQUIRE_AUTH=false DO sync (as anonymous and dev), so
    the refusal test's observations come from the policy, not from a broken client setup."""
    async with (
        _running_gateway(tmp_path / "gateway-data", auth_env(require_auth=False)) as gw,
        _client_pool(gw) as clients,
    ):
        valid = await clients(
            "client-valid", store_id=store_id, sync_payload=jwt_payload("app-valid", "alice")
        )
        await valid.commit("V", 2)
        await valid.wait_rows(2, within=15)
        expired, dev = await expired_and_dev_clients(clients, store_id)
        await expired.commit("E", 1)
        await expired.wait_rows(3, within=15)
        await dev.commit("D", 1)
        await dev.wait_rows(4, within=15)
        await asyncio.gather(valid.wait_rows(4, within=10), expired.wait_rows(4, within=10))
        dumps = await asyncio.gather(valid.dump(), expired.dump(), dev.dump())
        assert_same(dumps[0], dumps[1])
        assert_same(dumps[0], dumps[2])
        assert sorted(event_ids(dumps[0])) == ["D-1", "E-1", "V-1", "V-2"]
        await gw.wait_log(open_line(store_id, "anonymous", "app-expired", "expired_as_anonymous"))
        await gw.wait_log(open_line(store_id, "dev", "app-dev", "dev_token"))
        assert gw.log_lines("refused") == []
