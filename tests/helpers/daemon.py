"""A real ``python -m gateway`` process for the tests, and helpers around it.

:class:`Daemon` is the one way the suite runs ``gateway serve`` as a process (the operations,
CLI, durability and multi-node tests, and the interop tests' restartable server). It starts the
server with a clean environment (nothing from the developer's shell leaks into the
configuration), keeps reading its output in the background, and lets a test wait, with a bounded
timeout, for a log line that matches a pattern. Nothing here sleeps: every wait is on a line or
a process exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

from tests.helpers.timeouts import TIMEOUT_UNIT
from tests.helpers.urls import sync_url

REPO = Path(__file__).resolve().parent.parent.parent
GATEWAY = (sys.executable, "-m", "gateway")
LISTENING = re.compile(r"listening on wss?://(?P<host>\S+):(?P<port>\d+)$")
ADMIN_LISTENING = re.compile(r"admin API listening on (?P<url>https?://\S+)")

# Variables the daemon reads besides GATEWAY_*; a test sets the ones it means to and no others.
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

T = TypeVar("T")


def clean_env(
    extra: Mapping[str, str] | None = None, *, drop_prefixes: tuple[str, ...] = ("GATEWAY_",)
) -> dict[str, str]:
    """``os.environ`` without anything the gateway would read, plus ``extra``.

    ``drop_prefixes`` names the ``GATEWAY_*`` settings to leave out (all of them by default;
    the interop tests keep the runner's own settings except auth and store ones).
    """
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in _DAEMON_ENV and not name.startswith(drop_prefixes)
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


def ws_url(port: int, store_id: str, payload: Any = None) -> str:
    """The sync URL of a daemon on 127.0.0.1:``port`` (see :func:`tests.helpers.urls.sync_url`)."""
    return sync_url(f"127.0.0.1:{port}", store_id, payload=payload)


async def spawn(
    *args: str,
    env: Mapping[str, str] | None = None,
    drop_prefixes: tuple[str, ...] = ("GATEWAY_",),
    command: Sequence[str] = GATEWAY,
    stdin: int | IO[Any] = asyncio.subprocess.DEVNULL,
    stdout: int | IO[Any] = asyncio.subprocess.PIPE,
    stderr: int | IO[Any] = asyncio.subprocess.PIPE,
) -> asyncio.subprocess.Process:
    """Start ``COMMAND ARGS`` (``python -m gateway ARGS``) in the repository, without stdin
    unless given, with ``env`` added to :func:`clean_env` (given ``drop_prefixes``)."""
    return await asyncio.create_subprocess_exec(
        *command,
        *args,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        env=clean_env(env, drop_prefixes=drop_prefixes),
        cwd=REPO,
    )


async def drain_lines(stream: asyncio.StreamReader, sink: Callable[[str], None]) -> None:
    """Hand every line of ``stream`` (decoded, without its newline) to ``sink`` until EOF."""
    while raw := await stream.readline():
        sink(raw.decode(errors="replace").rstrip("\n"))


async def stop_process(proc: asyncio.subprocess.Process, grace: float) -> int:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL. Returns the exit status."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    return await proc.wait()


class Daemon:
    """A running ``gateway serve ...`` whose output (stderr, and stdout) is read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process, lines: list[str] | None = None) -> None:
        self.proc = proc
        self.lines: list[str] = [] if lines is None else lines
        self.eof = False
        self._grew = asyncio.Event()
        self._reader = asyncio.create_task(self._read())
        self.host = "127.0.0.1"
        self.port = 0

    @classmethod
    async def start(
        cls,
        *args: str,
        env: Mapping[str, str] | None = None,
        drop_prefixes: tuple[str, ...] = ("GATEWAY_",),
        command: Sequence[str] = GATEWAY,
        lines: list[str] | None = None,
        within: float = 20 * TIMEOUT_UNIT,
    ) -> Daemon:
        """Start ``COMMAND serve ARGS`` and wait for its ``listening on`` line.

        ``env`` is added to :func:`clean_env` (with ``drop_prefixes``). ``lines`` continues the
        log of an earlier process (a server restarted in the same test keeps one history).
        """
        proc = await spawn("serve", *args, env=env, drop_prefixes=drop_prefixes, command=command)
        daemon = cls(proc, lines)
        try:
            _, line = await daemon.wait_line(LISTENING, start=daemon.mark(), within=within)
        except BaseException:
            await daemon.kill()
            raise
        match = LISTENING.search(line)
        assert match is not None
        daemon.host, daemon.port = match["host"], int(match["port"])
        return daemon

    async def _read(self) -> None:
        streams = [s for s in (self.proc.stdout, self.proc.stderr) if s is not None]
        try:
            await asyncio.gather(*(drain_lines(stream, self._append) for stream in streams))
        finally:
            self.eof = True
            self._grew.set()

    def _append(self, line: str) -> None:
        self.lines.append(line)
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

    def lines_since(self, start: int) -> list[str]:
        return self.lines[start:]

    async def _until(self, found: Callable[[], T | None], what: str, within: float) -> T:
        """Wait until ``found()`` is not None, as the output grows; fail after ``within`` s or
        once the output has ended."""
        deadline = time.monotonic() + within
        while True:
            result = found()
            if result is not None:
                return result
            if self.eof:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.proc.wait(), 5 * TIMEOUT_UNIT)
                raise AssertionError(
                    f"gateway closed its output (exit status {self.proc.returncode}) "
                    f"without {what}; output:\n{self.text}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {what} within {within:.1f}s; output:\n{self.text}")
            # No await since found(): no line can slip through unseen.
            self._grew.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._grew.wait(), remaining)

    async def wait_line(
        self, pattern: str | re.Pattern[str], *, start: int = 0, within: float = 10 * TIMEOUT_UNIT
    ) -> tuple[int, str]:
        """The first output line at or after ``start`` that matches ``pattern``."""
        regex = re.compile(pattern)
        index = start

        def found() -> tuple[int, str] | None:
            nonlocal index
            while index < len(self.lines):
                if regex.search(self.lines[index]):
                    return index, self.lines[index]
                index += 1
            return None

        return await self._until(found, f"line matching {regex.pattern!r}", within)

    async def wait_lines(
        self, pattern: str, *, count: int = 1, within: float = 10 * TIMEOUT_UNIT
    ) -> list[str]:
        """Wait until at least ``count`` lines (of all of ``lines``) match; return them all."""
        regex = re.compile(pattern)

        def found() -> list[str] | None:
            hits = [line for line in self.lines if regex.search(line)]
            return hits if len(hits) >= count else None

        return await self._until(found, f"{count} line(s) matching {pattern!r}", within)

    @classmethod
    async def with_admin(cls, data_dir: Path, admin_token: str) -> Daemon:
        """``gateway serve`` on free ports with the admin API on (``admin_url()`` finds it)."""
        env = {"GATEWAY_ADMIN_TOKEN": admin_token, "GATEWAY_ADMIN_LISTEN": "127.0.0.1:0"}
        return await cls.start("--port", "0", "--data-dir", str(data_dir), env=env)

    async def admin_url(self, *, within: float = 10 * TIMEOUT_UNIT) -> str:
        """The admin API's base URL, from the line the server logs when it listens."""
        _, line = await self.wait_line(ADMIN_LISTENING, within=within)
        match = ADMIN_LISTENING.search(line)
        assert match is not None
        return match["url"]

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
        """The exit status; fails (killing it) if the process is still running after ``within``."""
        try:
            async with asyncio.timeout(within):
                rc = await self.proc.wait()
                await self._reader
        except TimeoutError:
            await self.kill()
            raise AssertionError(
                f"gateway still running {within:.1f}s later; output:\n{self.text}"
            ) from None
        return rc

    async def terminate(self, within: float = 10 * TIMEOUT_UNIT) -> int:
        """SIGTERM; the exit status, which must come within ``within`` (see :meth:`wait`)."""
        self.send_signal(signal.SIGTERM)
        return await self.wait(within)

    async def stop(self, grace: float = 10 * TIMEOUT_UNIT) -> int:
        """Cleanup that keeps the exit status: SIGTERM, SIGKILL after ``grace`` s; never fails."""
        rc = await stop_process(self.proc, grace)
        await self._done_reading()
        return rc

    async def kill(self) -> None:
        """Cleanup: SIGKILL if still running (tests assert the graceful path themselves)."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        await self.proc.wait()
        await self._done_reading()

    async def _done_reading(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._reader, 5 * TIMEOUT_UNIT)


async def run_cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    within: float = 15 * TIMEOUT_UNIT,
    stdin: bytes | None = None,
) -> tuple[int, str, str]:
    """Run ``python -m gateway ARGS`` to completion, ``stdin`` as its input if given:
    (exit status, stdout, stderr)."""
    pipe = asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE
    proc = await spawn(*args, env=env, stdin=pipe)
    try:
        async with asyncio.timeout(within):
            out, err = await proc.communicate(stdin)
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


class Tail:
    """A long-running ``gateway tail ...`` whose stdout is read one JSON line at a time."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, *args: str, env: Mapping[str, str]) -> Tail:
        return cls(await spawn("tail", *args, env=env))

    async def event(self, within: float = 10 * TIMEOUT_UNIT) -> dict[str, Any]:
        """The next line, decoded; fails if none comes within ``within`` or the output ends."""
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), within)
        except TimeoutError:
            raise AssertionError("gateway tail printed nothing") from None
        assert line, f"gateway tail ended: {await self._stderr()}"
        return json.loads(line)  # type: ignore[no-any-return]

    async def _stderr(self) -> str:
        assert self.proc.stderr is not None
        return (await self.proc.stderr.read()).decode()

    async def interrupt(self) -> int:
        """SIGINT, as Ctrl-C does; the exit status."""
        self.proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(10 * TIMEOUT_UNIT):
            return await self.proc.wait()

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()
