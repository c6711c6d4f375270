"""How long gateway.client waits before it reconnects: jittered exponential backoff, and
the server's ``Retry-After`` when it sheds load (``503 OVERLOADED``)."""

from __future__ import annotations

import random


class Backoff:
    """Jittered exponential backoff: ``base``, doubling, capped at ``cap`` seconds.

    Each delay is drawn uniformly from the upper half of the current step, so that clients
    restarted together do not reconnect together.
    """

    def __init__(self, base: float = 1.0, cap: float = 30.0) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0
        # The server's Retry-After of the last failure: the least next delay.
        self.least = 0.0

    def next_delay(self) -> float:
        """The delay before the next attempt (0 when the last attempt succeeded)."""
        if self.failures == 0:
            return 0.0
        step = min(self.cap, self.base * 2 ** (self.failures - 1))
        delay = float(step) * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret
        if self.least:
            # Spread too: clients the server shed together must not return together.
            delay = max(delay, self.least * random.uniform(1.0, 1.5))  # noqa: S311
        return delay

    def failed(self, retry_after: float = 0.0) -> None:
        """An attempt failed; ``retry_after``: the server asked to wait that long (s)."""
        self.failures += 1
        self.least = min(retry_after, self.cap)

    def succeeded(self) -> None:
        self.failures = 0
        self.least = 0.0


class Unavailable(OSError):
    """The server answered the handshake 5xx (``503 OVERLOADED`` while it sheds load,
    ``SHUTTING_DOWN``): worth retrying, not before ``retry_after`` seconds."""

    def __init__(self, status: int, code: str, retry_after: float) -> None:
        super().__init__(f"handshake answered HTTP {status} {code}".rstrip())
        self.status = status
        self.code = code
        self.retry_after = retry_after


def retry_after_seconds(value: str | None) -> float:
    """A ``Retry-After`` header's delay in seconds (0 when absent; an HTTP date is read as
    no advice: clocks differ)."""
    if not value:
        return 0.0
    try:
        return max(0.0, float(int(value.strip())))
    except ValueError:
        return 0.0
