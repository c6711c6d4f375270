"""sd_notify without libsystemd: one datagram per message to ``$NOTIFY_SOCKET``.

A no-op when ``NOTIFY_SOCKET`` is unset (not under systemd, or ``Type=`` is not notify).
The watchdog task pings from the event loop, so a stalled loop stops the pings and systemd
restarts the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Mapping

logger = logging.getLogger(__name__)


class Notifier:
    """Sends ``READY=1``, ``STATUS=...``, ``STOPPING=1``, ``RELOADING=1``, ``WATCHDOG=1``."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if address.startswith("@"):
            # A leading '@' names a socket in the abstract namespace.
            self.address = "\0" + address[1:]
        elif address.startswith("/"):
            self.address = address
        self._socket: socket.socket | None = None
        watchdog = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_interval: float | None = None
        if watchdog.isdigit() and int(watchdog) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(watchdog) / 1_000_000 / 2

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send one message made of ``KEY=VALUE`` lines; False when it could not be sent."""
        if self.address is None:
            return False
        message = "\n".join(fields).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
            self._socket.sendto(message, self.address)
        except OSError as exc:
            logger.warning("sd_notify failed: %s", exc)
            return False
        return True

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=stopping")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    async def watchdog(self) -> None:
        """Ping the watchdog every half interval until cancelled."""
        if self.watchdog_interval is None or not self.enabled:
            return
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_interval)

    def close(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.close()
            self._socket = None
