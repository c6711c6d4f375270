"""sd_notify on a real AF_UNIX datagram socket: the Notifier alone, then the daemon under it.

The listener plays systemd's part: it binds a SOCK_DGRAM socket (an abstract ``@name`` or a
short path under /tmp, since AF_UNIX paths are limited to 108 bytes), passes its address in
``NOTIFY_SOCKET`` and reads each datagram with the sender's credentials (SO_PASSCRED), as
systemd does to enforce ``NotifyAccess=main``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import socket
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from gateway.systemd import Notifier
from tests.helpers.daemon import LISTENING, Daemon, spawn, write_toml
from tests.helpers.http_client import http_request
from tests.helpers.notify import NotifyListener, is_watchdog
from tests.helpers.timeouts import TIMEOUT_UNIT

AF_UNIX_PATH_MAX = 108


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture(name="short_dir")
def _short_dir() -> Iterator[Path]:
    """A directory under /tmp with a short name: AF_UNIX paths must fit in 108 bytes."""
    path = tempfile.mkdtemp(prefix="gw", dir="/tmp")
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(name="path_listener")
async def _path_listener(short_dir: Path) -> AsyncIterator[NotifyListener]:
    address = str(short_dir / "notify")
    assert len(address.encode()) < AF_UNIX_PATH_MAX
    listener = NotifyListener(address)
    yield listener
    listener.close()


@pytest.fixture(name="abstract_listener")
async def _abstract_listener() -> AsyncIterator[NotifyListener]:
    listener = NotifyListener(f"@gateway-test-{uuid.uuid4().hex}")
    yield listener
    listener.close()


# ---------------------------------------------------------------------------------------------
# The Notifier on its own


class TestNotifier:
    async def test_abstract_socket_ready_carries_status_and_mainpid(
        self, abstract_listener: NotifyListener
    ) -> None:
        notifier = Notifier({"NOTIFY_SOCKET": abstract_listener.address})
        try:
            assert notifier.enabled
            notifier.ready("ready: 0 ws peers")
            message = await abstract_listener.next()
        finally:
            notifier.close()
        assert message.fields == {
            "READY": "1",
            "STATUS": "ready: 0 ws peers",
            "MAINPID": str(os.getpid()),
        }
        assert message.pid == os.getpid()

    async def test_filesystem_socket_every_message(self, path_listener: NotifyListener) -> None:
        """STATUS, RELOADING (+ MONOTONIC_USEC on the caller's CLOCK_MONOTONIC), STOPPING."""
        notifier = Notifier({"NOTIFY_SOCKET": path_listener.address})
        try:
            assert notifier.notify("STATUS=plain") is True
            assert (await path_listener.next()).fields == {"STATUS": "plain"}

            notifier.status("3 peers")
            assert (await path_listener.next()).fields == {"STATUS": "3 peers"}

            before = monotonic_usec()
            notifier.reloading()
            after = monotonic_usec()
            reloading = await path_listener.next()
            assert reloading["RELOADING"] == "1"
            assert reloading.get("STATUS") == "reloading"
            assert before <= int(reloading["MONOTONIC_USEC"]) <= after

            notifier.stopping()
            stopping = await path_listener.next()
            assert stopping["STOPPING"] == "1"
        finally:
            notifier.close()

    async def test_unset_notify_socket_is_a_no_op(self) -> None:
        """Not under systemd: nothing is sent, no socket is even created, nothing raises."""
        before = open_fds()
        for env in ({}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "relative/path"}):
            notifier = Notifier({**env, "WATCHDOG_USEC": "1000000"})
            assert not notifier.enabled
            assert notifier.notify("READY=1") is False
            notifier.ready("x")
            notifier.status("x")
            notifier.reloading()
            notifier.stopping()
            # The watchdog task has nothing to do and returns at once.
            await asyncio.wait_for(notifier.watchdog(), 2 * TIMEOUT_UNIT)
            notifier.close()
        assert open_fds() == before

    async def test_unreachable_socket_is_reported_not_raised(self, short_dir: Path) -> None:
        notifier = Notifier({"NOTIFY_SOCKET": str(short_dir / "nobody-listens")})
        try:
            assert notifier.enabled
            assert notifier.notify("READY=1") is False
        finally:
            notifier.close()

    @pytest.mark.parametrize(
        ("env", "interval"),
        [
            ({"WATCHDOG_USEC": "1000000"}, 0.5),
            ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "<self>"}, 15.0),
            ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}, None),  # meant for another pid
            ({"WATCHDOG_USEC": "0"}, None),
            ({"WATCHDOG_USEC": "soon"}, None),
            ({"WATCHDOG_USEC": "-5"}, None),
            ({}, None),
        ],
    )
    def test_watchdog_interval_is_half_of_watchdog_usec(
        self, env: dict[str, str], interval: float | None
    ) -> None:
        env = {k: str(os.getpid()) if v == "<self>" else v for k, v in env.items()}
        notifier = Notifier({"NOTIFY_SOCKET": "@unused", **env})
        assert notifier.watchdog_interval == interval

    async def test_watchdog_pings_more_often_than_the_timeout(
        self, abstract_listener: NotifyListener
    ) -> None:
        usec = 200_000
        notifier = Notifier(
            {"NOTIFY_SOCKET": abstract_listener.address, "WATCHDOG_USEC": str(usec)}
        )
        task = asyncio.create_task(notifier.watchdog())
        try:
            pings = [await abstract_listener.next(5 * TIMEOUT_UNIT) for _ in range(4)]
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            notifier.close()
        assert all(is_watchdog(p) for p in pings), [p.raw for p in pings]
        gaps = [b.at - a.at for a, b in itertools.pairwise(pings)]
        # systemd kills the service if a gap reaches WATCHDOG_USEC.
        assert max(gaps) < usec / 1e6 * TIMEOUT_UNIT, gaps

    async def test_watchdog_disabled_without_socket_returns(self) -> None:
        notifier = Notifier({"WATCHDOG_USEC": "1000000"})
        await asyncio.wait_for(notifier.watchdog(), 2 * TIMEOUT_UNIT)


# ---------------------------------------------------------------------------------------------
# The daemon under a fake systemd


class NotifiedDaemon:
    """``python -m gateway serve`` with NOTIFY_SOCKET, its stderr going to a file.

    stderr goes to a file so that when a notification arrives, everything the daemon wrote
    before sending it can be read back at once: that is how the order is checked.
    """

    def __init__(self, proc: asyncio.subprocess.Process, stderr_path: Path) -> None:
        self.proc = proc
        self.stderr_path = stderr_path

    @classmethod
    async def start(
        cls, listener: NotifyListener, tmp: Path, *args: str, watchdog_usec: int = 1_000_000
    ) -> NotifiedDaemon:
        stderr_path = tmp / "stderr.log"
        env = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": str(watchdog_usec)}
        with stderr_path.open("wb") as err:
            proc = await spawn(
                "serve", *args, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=err
            )
        return cls(proc, stderr_path)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def port_now(self) -> int:
        """The port from the ``listening on`` line, which must already have been written."""
        for line in self.stderr.splitlines():
            match = LISTENING.search(line.strip())
            if match:
                return int(match.group(2))
        raise AssertionError(f"no 'listening on' line yet; stderr:\n{self.stderr}")

    async def wait(self, within: float = 10 * TIMEOUT_UNIT) -> int:
        try:
            return await asyncio.wait_for(self.proc.wait(), within)
        except TimeoutError:
            raise AssertionError(f"still running; stderr:\n{self.stderr}") from None

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


@pytest.fixture(name="notified")
async def _notified() -> AsyncIterator[list[NotifiedDaemon]]:
    started: list[NotifiedDaemon] = []
    yield started
    for daemon in started:
        await daemon.kill()


async def assert_serving(port: int) -> None:
    """The daemon answers: /readyz is 200 and a WebSocket gets a Pong."""
    ready = await http_request("GET", f"http://127.0.0.1:{port}/readyz", within=5 * TIMEOUT_UNIT)
    assert ready.status == 200, ready
    url = f"ws://127.0.0.1:{port}/?storeId=notify-check&transport=ws"
    async with connect(url, open_timeout=5 * TIMEOUT_UNIT, proxy=None) as ws:
        await ws.send('{"_tag":"Ping"}')
        assert await asyncio.wait_for(ws.recv(), 5 * TIMEOUT_UNIT) == '{"_tag":"Pong"}'


class TestDaemonNotifications:
    async def test_ready_watchdog_reload_stopping(
        self,
        path_listener: NotifyListener,
        tmp_path: Path,
        notified: list[NotifiedDaemon],
    ) -> None:
        """The whole life of the service as systemd sees it, in order."""
        daemon = await NotifiedDaemon.start(
            path_listener, tmp_path, "--port", "0", "--data-dir", str(tmp_path / "data")
        )
        notified.append(daemon)

        # 1. READY=1 is the first message, from the main pid, once the socket listens.
        ready = await path_listener.next(15 * TIMEOUT_UNIT)
        assert ready["READY"] == "1", ready.raw
        assert ready.get("MAINPID") == str(daemon.proc.pid)
        assert ready.pid == daemon.proc.pid, "NotifyAccess=main: the main process must send"
        assert ready.get("STATUS").startswith("ready"), ready.raw
        # "listening on" was printed before READY=1 was sent, and the port takes connections.
        port = daemon.port_now()
        with socket.create_connection(("127.0.0.1", port), timeout=5 * TIMEOUT_UNIT):
            pass
        await assert_serving(port)

        # 2. The watchdog is pinged from the event loop, more often than WATCHDOG_USEC.
        pings = [
            await path_listener.wait_for(is_watchdog, 5 * TIMEOUT_UNIT, what="WATCHDOG=1")
            for _ in range(2)
        ]
        assert pings[1].at - pings[0].at < 1.0 * TIMEOUT_UNIT
        assert all(p.pid == daemon.proc.pid for p in pings)

        # 3. SIGHUP: RELOADING=1 with the current CLOCK_MONOTONIC, then READY=1 again.
        before = monotonic_usec()
        daemon.proc.send_signal(signal.SIGHUP)
        reloading = await path_listener.wait_for(
            lambda m: "RELOADING" in m.fields, skip=is_watchdog, what="RELOADING=1"
        )
        after = monotonic_usec()
        assert reloading["RELOADING"] == "1"
        assert before <= int(reloading["MONOTONIC_USEC"]) <= after
        reready = await path_listener.wait_for(
            lambda m: "READY" in m.fields, skip=is_watchdog, what="READY=1 after the reload"
        )
        assert reready["READY"] == "1"
        assert reready.get("STATUS").startswith("ready"), reready.raw
        await assert_serving(port)

        # 4. SIGTERM: STOPPING=1, then a clean exit.
        daemon.proc.send_signal(signal.SIGTERM)
        stopping = await path_listener.wait_for(
            lambda m: "STOPPING" in m.fields, skip=is_watchdog, what="STOPPING=1"
        )
        assert stopping["STOPPING"] == "1"
        assert await daemon.wait() == 0
        assert "Traceback" not in daemon.stderr
        # Nothing may claim readiness after STOPPING=1.
        tail = path_listener.received[path_listener.received.index(stopping) + 1 :]
        assert not [m for m in tail if "READY" in m.fields], [m.raw for m in tail]

    async def test_abstract_notify_socket(
        self,
        abstract_listener: NotifyListener,
        tmp_path: Path,
        notified: list[NotifiedDaemon],
    ) -> None:
        """systemd may hand out an abstract ``@...`` address: the daemon uses it too."""
        daemon = await NotifiedDaemon.start(
            abstract_listener, tmp_path, "--port", "0", "--data-dir", str(tmp_path / "data")
        )
        notified.append(daemon)
        ready = await abstract_listener.next(15 * TIMEOUT_UNIT)
        assert ready["READY"] == "1", ready.raw
        assert ready.get("MAINPID") == str(daemon.proc.pid)
        await abstract_listener.wait_for(is_watchdog, 5 * TIMEOUT_UNIT, what="WATCHDOG=1")
        daemon.proc.send_signal(signal.SIGTERM)
        await abstract_listener.wait_for(
            lambda m: "STOPPING" in m.fields, skip=is_watchdog, what="STOPPING=1"
        )
        assert await daemon.wait() == 0

    async def test_invalid_config_on_reload_is_refused_and_service_stays_ready(
        self,
        path_listener: NotifyListener,
        tmp_path: Path,
        notified: list[NotifiedDaemon],
    ) -> None:
        config = write_toml(
            tmp_path / "gateway.toml",
            {"server": {"host": "127.0.0.1", "port": 0}, "store": {"data_dir": str(tmp_path)}},
        )
        good = config.read_text()
        daemon = await NotifiedDaemon.start(path_listener, tmp_path, "--config", str(config))
        notified.append(daemon)
        await path_listener.wait_for(lambda m: "READY" in m.fields, 15 * TIMEOUT_UNIT)
        port = daemon.port_now()
        # A watchdog ping comes from the running event loop: past startup (see the next test).
        await path_listener.wait_for(is_watchdog, 5 * TIMEOUT_UNIT, what="WATCHDOG=1")

        # The operator breaks the file, then reloads.
        config.write_text(good + '\n[limits]\ncatchup_window = "eight"\n')
        daemon.proc.send_signal(signal.SIGHUP)
        await path_listener.wait_for(
            lambda m: "RELOADING" in m.fields, skip=is_watchdog, what="RELOADING=1"
        )
        failed = await path_listener.wait_for(
            lambda m: "READY" in m.fields, skip=is_watchdog, what="READY=1 after a failed reload"
        )
        assert failed["READY"] == "1"
        status = failed.get("STATUS")
        assert status.startswith("reload failed"), failed.raw
        assert "limits.catchup_window" in status
        # Logged at error priority, naming the key; the daemon keeps serving.
        errors = [line for line in daemon.stderr.splitlines() if line.startswith("<3>")]
        assert any("limits.catchup_window" in line for line in errors), daemon.stderr
        assert daemon.proc.returncode is None
        await assert_serving(port)

        # Fixed again: the next reload succeeds.
        config.write_text(good)
        daemon.proc.send_signal(signal.SIGHUP)
        await path_listener.wait_for(lambda m: "RELOADING" in m.fields, skip=is_watchdog)
        ok = await path_listener.wait_for(lambda m: "READY" in m.fields, skip=is_watchdog)
        assert ok.get("STATUS").startswith("ready"), ok.raw

        daemon.proc.send_signal(signal.SIGTERM)
        assert await daemon.wait() == 0

    @pytest.mark.parametrize(
        ("sig", "expected"),
        [(signal.SIGHUP, "RELOADING"), (signal.SIGTERM, "STOPPING")],
        ids=["SIGHUP", "SIGTERM"],
    )
    async def test_signal_as_ready_is_sent_is_handled(
        self,
        short_dir: Path,
        daemons: list[Daemon],
        sig: signal.Signals,
        expected: str,
    ) -> None:
        """Once READY=1 is out, systemd may run ExecReload or stop the unit at once
        (``systemctl start gateway && systemctl reload gateway``), so the signal handlers
        must be installed before READY=1 is sent, or the default action kills the process.

        To hit that moment every time, the notify socket's queue is filled first: the
        daemon's ``sendto(READY=1)`` then blocks until the test reads. The signal is sent
        once "listening on" is printed (just before READY=1 is sent), then the queue is
        drained."""
        listener = NotifyListener(str(short_dir / "notify"), reading=False)
        try:
            assert listener.fill() > 0
            daemon = await Daemon.start(
                "--port",
                "0",
                "--data-dir",
                str(short_dir / "data"),
                env={"NOTIFY_SOCKET": listener.address},
            )
            daemons.append(daemon)
            daemon.send_signal(sig)
            listener.start_reading()
            # Either the daemon gets through READY=1 to RELOADING=1/STOPPING=1, or it dies.
            got = asyncio.create_task(
                listener.wait_for(
                    lambda m: expected in m.fields,
                    10 * TIMEOUT_UNIT,
                    skip=lambda m: is_watchdog(m) or "READY" in m.fields,
                    what=f"{expected}=1",
                )
            )
            died = asyncio.create_task(daemon.proc.wait())
            await asyncio.wait((got, died), return_when=asyncio.FIRST_COMPLETED)
            if not got.done():
                got.cancel()
                pytest.fail(
                    f"{sig.name} at READY=1 killed the daemon (exit status "
                    f"{daemon.proc.returncode}; notifications {listener.received}): the "
                    "signal handlers are installed only after READY=1 is sent"
                )
            died.cancel()
            await got
            assert listener.received[0]["READY"] == "1", listener.received
            if sig is signal.SIGHUP:
                reready = await listener.wait_for(lambda m: "READY" in m.fields, skip=is_watchdog)
                assert reready.get("STATUS").startswith("ready"), reready.raw
                daemon.send_signal(signal.SIGTERM)
            assert await daemon.wait() == 0
        finally:
            listener.close()
