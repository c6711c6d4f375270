"""A real ``python -m gateway`` process for the operations tests, and helpers around it.

:class:`Daemon` starts the server with a clean environment (nothing from the developer's shell
leaks into the configuration), keeps reading its stderr in the background, and lets a test
wait, with a bounded timeout, for a log line that matches a pattern. Nothing here sleeps: every
wait is on a line, a frame, a datagram or a process exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jwt

from tests.conftest import TIMEOUT_UNIT

REPO = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on ws://(\S+):(\d+)$")

# Variables the daemon reads; a test sets the ones it means to and no others.
_DAEMON_ENV = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "REQUIRE_AUTH",
    "JWT_SECRET",
    "JWT_PREVIOUS_SECRET",
    "SERVER_BYPASS_TOKEN",
    "AUTH_GRACE_PERIOD",
    "CREDENTIALS_DIRECTORY",
    "STATE_DIRECTORY",
)


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """``os.environ`` without anything the gateway would read, plus ``extra``."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in _DAEMON_ENV and not name.startswith("GATEWAY_")
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def free_port() -> int:
    """A TCP port that was free a moment ago (for the precedence tests, which need three)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_toml(path: Path, sections: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write a TOML configuration file (``{"server": {"port": 0}, ...}``)."""
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in values.items())
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def make_jwt(secret: str, sub: str, *, ttl: float = 3600, **claims: Any) -> str:
    """An HS256 token with ``sub`` and ``exp``."""
    body: dict[str, Any] = {"sub": sub, "exp": int(time.time() + ttl), **claims}
    return jwt.encode(body, secret, algorithm="HS256")


def ws_url(port: int, store_id: str, payload: Any = None) -> str:
    """The sync URL the 0.4.0 client builds: the payload JSON percent-encoded twice."""
    params = [("storeId", store_id)]
    if payload is not None:
        params.append(("payload", quote(json.dumps(payload), safe="")))
    params.append(("transport", "ws"))
    return f"ws://127.0.0.1:{port}/?{urlencode(params)}"


class Daemon:
    """A running ``python -m gateway serve ...`` whose stderr is read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.eof = False
        self._grew = asyncio.Event()
        self._reader = asyncio.create_task(self._read())
        self.port = 0

    @classmethod
    async def start(
        cls,
        *args: str,
        env: Mapping[str, str] | None = None,
        within: float = 15 * TIMEOUT_UNIT,
    ) -> Daemon:
        """Start ``gateway serve ARGS`` and wait for its ``listening on`` line."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "serve",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=clean_env(env),
            cwd=REPO,
        )
        daemon = cls(proc)
        try:
            _, line = await daemon.wait_line(LISTENING, within=within)
        except BaseException:
            await daemon.kill()
            raise
        match = LISTENING.search(line)
        assert match is not None
        daemon.port = int(match.group(2))
        return daemon

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while True:
            raw = await self.proc.stderr.readline()
            if not raw:
                break
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))
            self._grew.set()
        self.eof = True
        self._grew.set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def mark(self) -> int:
        """The index of the next line: ``wait_line(..., start=mark)`` only sees later lines."""
        return len(self.lines)

    async def wait_line(
        self, pattern: str | re.Pattern[str], *, start: int = 0, within: float = 10 * TIMEOUT_UNIT
    ) -> tuple[int, str]:
        """The first stderr line at or after ``start`` that matches ``pattern``."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + within
        index = start
        while True:
            while index < len(self.lines):
                if regex.search(self.lines[index]):
                    return index, self.lines[index]
                index += 1
            if self.eof:
                raise AssertionError(
                    f"gateway closed stderr (exited?) without a line matching "
                    f"{regex.pattern!r}; stderr:\n{self.text}"
                )
            remaining = deadline - time.monotonic()
            self._grew.clear()
            try:
                if remaining <= 0:
                    raise TimeoutError
                await asyncio.wait_for(self._grew.wait(), remaining)
            except TimeoutError:
                raise AssertionError(
                    f"no line matching {regex.pattern!r} within {within:.1f}s; stderr:\n{self.text}"
                ) from None

    def lines_since(self, start: int) -> list[str]:
        return self.lines[start:]

    def send_signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    async def reload(self, *, within: float = 10 * TIMEOUT_UNIT) -> str:
        """SIGHUP; wait for the outcome: ``configuration reloaded`` or ``reload refused``."""
        start = self.mark()
        self.send_signal(signal.SIGHUP)
        _, line = await self.wait_line(
            r"configuration reloaded|reload refused", start=start, within=within
        )
        return line

    async def wait(self, within: float = 10 * TIMEOUT_UNIT) -> int:
        """The exit status; fails if the process is still running after ``within``."""
        try:
            async with asyncio.timeout(within):
                rc = await self.proc.wait()
                await self._reader
        except TimeoutError:
            raise AssertionError(
                f"gateway still running {within:.1f}s later; stderr:\n{self.text}"
            ) from None
        return rc

    async def terminate(self, within: float = 10 * TIMEOUT_UNIT) -> int:
        self.send_signal(signal.SIGTERM)
        return await self.wait(within)

    async def kill(self) -> None:
        """Cleanup: SIGKILL if still running (tests assert the graceful path themselves)."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        await self.proc.wait()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._reader, 5 * TIMEOUT_UNIT)


async def run_cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    within: float = 15 * TIMEOUT_UNIT,
) -> tuple[int, str, str]:
    """Run ``python -m gateway ARGS`` to completion: (exit status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(env),
        cwd=REPO,
    )
    try:
        async with asyncio.timeout(within):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"gateway {' '.join(args)} did not finish in {within:.1f}s") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def none_contain(texts: Iterable[str], secrets: Iterable[str]) -> list[str]:
    """The secrets that appear in any of ``texts`` (should be empty)."""
    joined = "\n".join(texts)
    return [secret for secret in secrets if secret in joined]


# ---------------------------------------------------------------------------------------------
# sd_notify: the systemd end of NOTIFY_SOCKET


@dataclass(frozen=True)
class Message:
    """One sd_notify datagram: its KEY=VALUE fields, the sender's pid, and when it arrived."""

    fields: dict[str, str]
    raw: bytes
    pid: int | None
    at: float

    def __getitem__(self, key: str) -> str:
        return self.fields[key]

    def get(self, key: str, default: str = "") -> str:
        return self.fields.get(key, default)


FILLER = b"X-TEST-FILLER=1"


class NotifyListener:
    """The systemd end of ``NOTIFY_SOCKET``."""

    def __init__(self, address: str, *, reading: bool = True) -> None:
        """``address`` is ``@name`` (abstract namespace) or an absolute path. With
        ``reading=False`` nothing is read until :meth:`start_reading`."""
        self.address = address
        self._bind_to = "\0" + address[1:] if address.startswith("@") else address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self._bind_to)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.setblocking(False)
        self.queue: asyncio.Queue[Message] = asyncio.Queue()
        self.received: list[Message] = []
        self.malformed: list[bytes] = []
        self._loop = asyncio.get_running_loop()
        self._reading = False
        if reading:
            self.start_reading()

    def start_reading(self) -> None:
        self._loop.add_reader(self.sock.fileno(), self._readable)
        self._reading = True

    def fill(self) -> int:
        """Queue dummy datagrams until the socket's queue is full (``max_dgram_qlen``), so
        that the next sender blocks in ``sendto`` until :meth:`start_reading` drains it."""
        assert not self._reading
        count = 0
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as filler:
            filler.setblocking(False)
            while True:
                try:
                    filler.sendto(FILLER, self._bind_to)
                except BlockingIOError:
                    return count
                count += 1

    def _readable(self) -> None:
        while True:
            try:
                data, ancdata, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(12))
            except BlockingIOError:
                return
            pid = None
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid, _, _ = struct.unpack("3i", payload[:12])
            if data == FILLER:
                continue
            fields: dict[str, str] = {}
            for line in data.decode(errors="replace").split("\n"):
                key, sep, value = line.partition("=")
                if not sep or not key:
                    self.malformed.append(data)
                fields[key] = value
            message = Message(fields, data, pid, time.monotonic())
            self.received.append(message)
            self.queue.put_nowait(message)

    async def next(self, within: float = 10 * TIMEOUT_UNIT) -> Message:
        try:
            message = await asyncio.wait_for(self.queue.get(), within)
            assert not self.malformed, f"sd_notify lines are KEY=VALUE: {self.malformed}"
            return message
        except TimeoutError:
            raise AssertionError(
                f"no sd_notify message within {within:.1f}s; so far: "
                f"{[m.raw for m in self.received]}"
            ) from None

    async def wait_for(
        self,
        pred: Callable[[Message], bool],
        within: float = 10 * TIMEOUT_UNIT,
        *,
        skip: Callable[[Message], bool] = lambda m: False,
        what: str = "a matching message",
    ) -> Message:
        """The next message satisfying ``pred``; messages satisfying ``skip`` are passed
        over, any other is an error (the sequence of messages is what is under test)."""
        deadline = time.monotonic() + within
        while True:
            message = await self.next(max(deadline - time.monotonic(), 0.001))
            if pred(message):
                return message
            assert skip(message), f"expected {what}, got {message.raw!r}"

    def close(self) -> None:
        if self._reading:
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()


def is_watchdog(message: Message) -> bool:
    return message.fields == {"WATCHDOG": "1"}
