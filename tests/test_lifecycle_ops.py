"""Lifecycle of the real daemon: SIGTERM under push load, SIGHUP with clients connected.

Every test runs ``python -m gateway serve`` as a process. Secrets come from files named by
``*_file`` keys in the configuration file, because a reload re-reads the file and the secret
files while the environment is fixed when the process starts. Synchronisation is on protocol
frames (acks, Pongs, close frames) and on the daemon's own log lines, never on sleeps.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.helpers.clients import RpcClient
from tests.helpers.daemon import Daemon, free_port, write_toml, ws_url
from tests.helpers.http_client import http_request
from tests.helpers.keys import make_jwt
from tests.helpers.notify import NotifyListener
from tests.helpers.timeouts import TIMEOUT_UNIT
from tests.helpers.wire import assert_push_ok, events_of, is_chunk, make_events, seqs_of

DEV_TOKEN = "insecure-token-change-me"


def secret(tag: str) -> str:
    """A fresh secret of production length (>= 32 bytes), recognisable in a failure."""
    return f"{tag}-{uuid.uuid4().hex}{uuid.uuid4().hex}"


class Session:
    """A WebSocket client holding a live pull on its own store."""

    def __init__(self, client: RpcClient, pull_rid: str, head: int) -> None:
        self.client = client
        self.pull_rid = pull_rid
        self.head = head

    @classmethod
    async def open(cls, port: int, store_id: str, payload: Any = None) -> Session:
        client = await RpcClient.open(ws_url(port, store_id, payload), store_id)
        rid, items = await client.live_pull()
        seqs = seqs_of(items)
        return cls(client, rid, seqs[-1] if seqs else 0)

    async def push_and_see(self, n: int = 1) -> None:
        """Push ``n`` events; the ack and the live pull prove the session still syncs."""
        first = self.head + 1
        await self.client.push_ok(make_events(first, n))
        events = await self.client.live_events(self.pull_rid, first + n - 1)
        assert [e["seqNum"] for e in events] == list(range(first, first + n))
        self.head = first + n - 1

    async def alive(self) -> None:
        """Still open: a Ping is answered, and a push is acked and delivered live."""
        await self.client.barrier()
        await self.push_and_see()
        assert self.client.ws.close_code is None

    async def closed_with(self, within: float = 10 * TIMEOUT_UNIT) -> int | None:
        try:
            await asyncio.wait_for(self.client.ws.wait_closed(), within)
        except TimeoutError:
            raise AssertionError(f"session still open after {within:.1f}s") from None
        return self.client.ws.close_code

    async def close(self) -> None:
        await self.client.close()


async def refused_status(port: int, store_id: str, payload: Any = None) -> int:
    """The HTTP status of a refused WebSocket upgrade (fails if it is accepted)."""
    try:
        client = await RpcClient.open(ws_url(port, store_id, payload), store_id)
    except InvalidStatus as exc:
        return exc.response.status_code
    await client.close()
    raise AssertionError(f"the connection to {store_id} with {payload!r} was accepted")


# ---------------------------------------------------------------------------------------------
# SIGTERM under load

STORES = 4
MAX_PUSHES = 5000
SIGTERM_AFTER = 60  # acked pushes in total


class Pusher:
    """One client pushing single-event batches back to back, holding a live pull."""

    def __init__(self, port: int, store_id: str) -> None:
        self.port = port
        self.store_id = store_id
        self.acked: list[int] = []
        self.live: list[int] = []
        self.close_code: int | None = None

    async def run(self, progress: asyncio.Queue[None]) -> None:
        client = await RpcClient.open(ws_url(self.port, self.store_id), self.store_id)
        rid, items = await client.live_pull()
        assert seqs_of(items) == []
        try:
            for seq in range(1, MAX_PUSHES + 1):
                frame = await client.push(make_events(seq, 1))
                assert_push_ok(frame)
                self.acked.append(seq)
                progress.put_nowait(None)
            raise AssertionError(f"{self.store_id}: never closed after {MAX_PUSHES} pushes")
        except ConnectionClosed:
            pass
        # Live frames read while waiting for acks, up to the close.
        while True:
            try:
                frame = await client.recv_for(rid, within=5 * TIMEOUT_UNIT)
            except ConnectionClosed:
                break
            assert is_chunk(frame, rid), frame
            self.live.extend(e["seqNum"] for e in events_of(frame["values"]))
        self.close_code = client.ws.close_code


async def test_sigterm_under_push_load_loses_no_acked_event(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """SIGTERM while every client pushes: each is closed with 1001, the process exits 0 in
    bounded time, and after a restart every acked event is in the log, gapless."""
    data = str(tmp_path / "data")
    daemon = await Daemon.start("--port", "0", "--data-dir", data)
    daemons.append(daemon)
    pushers = [Pusher(daemon.port, f"term-{i}-{uuid.uuid4().hex[:6]}") for i in range(STORES)]
    progress: asyncio.Queue[None] = asyncio.Queue()
    tasks = [asyncio.create_task(p.run(progress)) for p in pushers]
    try:
        async with asyncio.timeout(30 * TIMEOUT_UNIT):
            for _ in range(SIGTERM_AFTER):
                await progress.get()
        assert all(p.acked for p in pushers), "every client pushes when the signal comes"
        start = daemon.mark()
        signalled = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        rc = await daemon.wait(within=15 * TIMEOUT_UNIT)
        took = time.monotonic() - signalled
        async with asyncio.timeout(10 * TIMEOUT_UNIT):
            await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
    assert rc == 0, daemon.text
    assert took < 10 * TIMEOUT_UNIT
    shutdown_log = "\n".join(daemon.lines_since(start))
    assert "Traceback" not in shutdown_log, shutdown_log
    assert "still in flight" not in shutdown_log, shutdown_log
    for pusher in pushers:
        assert pusher.close_code == 1001, (pusher.store_id, pusher.close_code)
        # An ack is sent after the event is published to the live pull of the same
        # connection, and frames on one connection keep their order.
        assert pusher.live[: len(pusher.acked)] == pusher.acked, pusher.store_id

    restarted = await Daemon.start("--port", "0", "--data-dir", data)
    daemons.append(restarted)
    for pusher in pushers:
        client = await RpcClient.open(ws_url(restarted.port, pusher.store_id), pusher.store_id)
        stored = seqs_of(await client.pull())
        await client.close()
        assert stored[: len(pusher.acked)] == pusher.acked, pusher.store_id
        # At most the push in flight when the connection closed landed without its ack.
        assert len(stored) - len(pusher.acked) <= 1, (pusher.store_id, pusher.acked, stored)
        assert stored == list(range(1, len(stored) + 1))
    assert await restarted.terminate() == 0


# ---------------------------------------------------------------------------------------------
# SIGHUP with clients connected


class Setup:
    """A configuration file and the secret files it names, rewritten between reloads."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.path = tmp / "gateway.toml"
        self.server: dict[str, Any] = {"host": "127.0.0.1", "port": 0}
        self.store = {"data_dir": str(tmp / "data")}
        self.auth: dict[str, Any] = {}
        self.log: dict[str, Any] = {"level": "info"}

    @classmethod
    def open_with_jwt(cls, tmp: Path, jwt_secret: str) -> Setup:
        """Anonymous clients admitted (require_auth false), JWTs signed with ``jwt_secret``."""
        setup = cls(tmp)
        setup.auth = {
            "require_auth": False,
            "jwt_secret_file": setup.secret_file("jwt_secret", jwt_secret),
        }
        return setup

    def secret_file(self, name: str, value: str) -> str:
        path = self.tmp / name
        path.write_text(value + "\n")
        path.chmod(0o600)
        return str(path)

    def write(self) -> Path:
        return write_toml(
            self.path,
            {"server": self.server, "store": self.store, "auth": self.auth, "log": self.log},
        )

    async def start(self, daemons: list[Daemon]) -> Daemon:
        self.write()
        daemon = await Daemon.start("--config", str(self.path))
        daemons.append(daemon)
        return daemon


def user(token: str, instance: str = "app-1") -> dict[str, str]:
    return {"instanceId": instance, "authToken": token}


async def test_sighup_require_auth_closes_anonymous_keeps_jwt(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """REQUIRE_AUTH false -> true: anonymous and dev-token sessions are closed with 4003, the
    JWT session stays connected and keeps syncing; new anonymous attempts are refused."""
    jwt_secret = secret("jwt")
    setup = Setup.open_with_jwt(tmp_path, jwt_secret)
    daemon = await setup.start(daemons)
    port = daemon.port
    alice = make_jwt(jwt_secret, "alice")
    anonymous = await Session.open(port, "anon-store")
    dev = await Session.open(port, "dev-store", user(DEV_TOKEN, "dev-1"))
    member = await Session.open(port, "alice-store", user(alice))
    for session in (anonymous, dev, member):
        await session.push_and_see()

    setup.auth["require_auth"] = True
    setup.write()
    mark = daemon.mark()
    assert "configuration reloaded" in await daemon.reload()

    assert await anonymous.closed_with() == 4003
    assert await dev.closed_with() == 4003
    await member.alive()
    await member.push_and_see(3)
    log = "\n".join(daemon.lines_since(mark))
    assert re.search(r"closing store=anon-store .*after reload", log), log
    assert re.search(r"closing store=dev-store .*after reload: DEV_TOKEN_REJECTED", log), log
    assert not re.search(r"closing store=alice-store", log), log

    # The new policy also holds for new connections.
    assert await refused_status(port, "anon-store", {"instanceId": "x-1"}) == 401
    assert await refused_status(port, "dev-store", user(DEV_TOKEN, "dev-2")) == 403
    again = await Session.open(port, "alice-store", user(make_jwt(jwt_secret, "alice"), "app-2"))
    assert again.head == member.head
    await member.close()
    await again.close()
    assert await daemon.terminate() == 0


async def test_sighup_jwt_secret_rotation(tmp_path: Path, daemons: list[Daemon]) -> None:
    """New secret + old one as jwt_previous_secret: existing sessions stay, tokens signed by
    either are accepted. Dropping the previous secret closes the sessions only it signed."""
    old, new = secret("old"), secret("new")
    setup = Setup(tmp_path)
    setup.auth = {"require_auth": True, "jwt_secret_file": setup.secret_file("current", old)}
    daemon = await setup.start(daemons)
    port = daemon.port
    before = await Session.open(port, "rot-a", user(make_jwt(old, "alice"), "a-1"))
    await before.push_and_see()

    # Rotate: the new secret signs, the old one still verifies.
    setup.auth["jwt_secret_file"] = setup.secret_file("current", new)
    setup.auth["jwt_previous_secret_file"] = setup.secret_file("previous", old)
    setup.write()
    assert "configuration reloaded" in await daemon.reload()
    await before.alive()
    signed_old = await Session.open(port, "rot-b", user(make_jwt(old, "bob"), "b-1"))
    signed_new = await Session.open(port, "rot-c", user(make_jwt(new, "carol"), "c-1"))
    await signed_old.push_and_see()
    await signed_new.push_and_see()
    stranger = make_jwt(secret("other"), "mallory")
    assert await refused_status(port, "rot-d", user(stranger, "m-1")) == 401

    # End of the rotation window: the previous secret is removed.
    del setup.auth["jwt_previous_secret_file"]
    setup.write()
    mark = daemon.mark()
    assert "configuration reloaded" in await daemon.reload()
    assert await before.closed_with() == 4003
    assert await signed_old.closed_with() == 4003
    await signed_new.alive()
    log = "\n".join(daemon.lines_since(mark))
    assert re.search(r"closing store=rot-a subject=alice after reload: INVALID_TOKEN", log), log
    assert await refused_status(port, "rot-a", user(make_jwt(old, "alice"), "a-2")) == 401
    await signed_new.close()
    assert await daemon.terminate() == 0


async def test_sighup_bypass_token_rotation(tmp_path: Path, daemons: list[Daemon]) -> None:
    """bypass_token_file gets a new token: the old bypass session is closed with 4003, a new
    one with the new token is accepted, the old token is refused; JWT sessions stay."""
    jwt_secret, first, second = secret("jwt"), secret("bypass1"), secret("bypass2")
    setup = Setup(tmp_path)
    bypass_file = setup.secret_file("bypass_token", first)
    setup.auth = {
        "require_auth": True,
        "jwt_secret_file": setup.secret_file("jwt_secret", jwt_secret),
        "bypass_token_file": bypass_file,
    }
    daemon = await setup.start(daemons)
    port = daemon.port
    service = await Session.open(port, "svc", {"instanceId": "svc-1", "serverBypass": first})
    member = await Session.open(port, "member", user(make_jwt(jwt_secret, "alice")))
    await service.push_and_see()
    stats_url = f"http://127.0.0.1:{port}/stats"
    assert (await http_request("GET", stats_url, headers=bearer(first))).status == 200

    # Only the secret file changes; the configuration file is the same.
    setup.secret_file("bypass_token", second)
    assert "configuration reloaded" in await daemon.reload()
    assert await service.closed_with() == 4003
    await member.alive()
    renewed = await Session.open(port, "svc", {"instanceId": "svc-2", "serverBypass": second})
    assert renewed.head == service.head
    await renewed.push_and_see()
    assert await refused_status(port, "svc", {"instanceId": "svc-3", "serverBypass": first}) == 403
    assert (await http_request("GET", stats_url, headers=bearer(first))).status == 403
    assert (await http_request("GET", stats_url, headers=bearer(second))).status == 200
    await renewed.close()
    await member.close()
    assert await daemon.terminate() == 0


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_sighup_restart_only_key_is_refused_old_config_stays(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """A reload that changes server.port is refused as a whole: even the other changes in
    the same file (require_auth) do not apply, and nothing is dropped."""
    jwt_secret = secret("jwt")
    setup = Setup.open_with_jwt(tmp_path, jwt_secret)
    daemon = await setup.start(daemons)
    port = daemon.port
    anonymous = await Session.open(port, "keep")

    setup.server["port"] = free_port()
    setup.auth["require_auth"] = True
    setup.write()
    line = await daemon.reload()
    assert "reload refused" in line, line
    assert "server.port" in line, line
    assert line.startswith("<3>"), line  # logged as an error
    await anonymous.alive()
    extra = await Session.open(port, "keep")  # anonymous still admitted: old policy
    assert extra.head == anonymous.head
    await extra.close()
    assert (await http_request("GET", f"http://127.0.0.1:{port}/readyz")).status == 200

    # The same auth change without the port change is applied: the refusal was the port.
    setup.server["port"] = 0
    setup.write()
    assert "configuration reloaded" in await daemon.reload()
    assert await anonymous.closed_with() == 4003
    assert await daemon.terminate() == 0


def _bad_proxies(setup: Setup) -> str:
    setup.auth["trusted_proxies"] = ["10.0.0.0/8", "not-an-address"]
    setup.write()
    return "auth.trusted_proxies"


def _not_utf8(setup: Setup) -> str:
    setup.write()
    setup.path.write_bytes(setup.path.read_bytes() + b"\n# caf\xe9 \xff\n")
    return str(setup.path)


def _now_a_directory(setup: Setup) -> str:
    setup.path.unlink()
    setup.path.mkdir()
    return str(setup.path)


@pytest.mark.parametrize(
    "breakage",
    [_bad_proxies, _not_utf8, _now_a_directory],
    ids=["bad trusted_proxies", "not UTF-8", "path is a directory"],
)
async def test_sighup_unloadable_config_is_refused_and_daemon_keeps_serving(
    tmp_path: Path, daemons: list[Daemon], breakage: Callable[[Setup], str]
) -> None:
    """Whatever makes the new configuration unusable, a reload is refused and logged (naming
    the key or the file) and the daemon keeps serving its connections."""
    setup = Setup(tmp_path)
    daemon = await setup.start(daemons)
    session = await Session.open(daemon.port, "unloadable")

    named = breakage(setup)
    line = await daemon.reload()
    assert "reload refused" in line, line
    assert named in line, line
    await session.alive()
    await session.close()
    assert await daemon.terminate() == 0


async def test_sighup_log_level_changes_live(tmp_path: Path, daemons: list[Daemon]) -> None:
    """log.level = "warning": connection open lines (info) stop, warnings still come.

    At warning level the reload itself logs nothing, so READY=1 on the notify socket tells
    when it is done."""
    short = Path(tempfile.mkdtemp(prefix="gw", dir="/tmp"))
    listener = NotifyListener(str(short / "notify"))
    try:
        setup = Setup(tmp_path)
        setup.write()
        daemon = await Daemon.start(
            "--config", str(setup.path), env={"NOTIFY_SOCKET": listener.address}
        )
        daemons.append(daemon)
        await listener.wait_for(lambda m: "READY" in m.fields, what="READY=1")
        first = await Session.open(daemon.port, "levels")
        await daemon.wait_line(r"^<6>gateway\.server: open transport=ws store=levels ")

        setup.log["level"] = "warning"
        setup.write()
        daemon.send_signal(signal.SIGHUP)
        await listener.wait_for(lambda m: "RELOADING" in m.fields, what="RELOADING=1")
        reloaded = await listener.wait_for(lambda m: "READY" in m.fields, what="READY=1")
        assert not reloaded.get("STATUS").startswith("reload failed"), reloaded.raw
        mark = daemon.mark()
        second = await Session.open(daemon.port, "levels")
        await second.client.barrier()  # its session runs: its open line would be written now
        # A refused sync request logs a warning on gateway.security (a malformed instanceId).
        bad = {"instanceId": "not valid!"}
        assert await refused_status(daemon.port, "levels", bad) == 400
        index, _ = await daemon.wait_line(r"^<4>gateway\.security: refused", start=mark)
        info = [line for line in daemon.lines[mark:index] if line.startswith("<6>")]
        assert not info, daemon.text
        await first.close()
        await second.close()
        assert await daemon.terminate() == 0
    finally:
        listener.close()
        shutil.rmtree(short, ignore_errors=True)
