"""sd_notify: the systemd end of ``NOTIFY_SOCKET``, for the readiness and watchdog tests."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from tests.helpers.timeouts import TIMEOUT_UNIT


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
